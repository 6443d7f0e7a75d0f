import type { FastifyInstance, FastifyRequest } from 'fastify';
import { isTemplateFileUpload } from '../templates/template-upload-body';

function hasBody(request: FastifyRequest): boolean {
  const length = request.headers['content-length'];
  return (length !== undefined && length !== '0') || request.headers['transfer-encoding'] !== undefined;
}

/**
 * E2B's API takes JSON only. Nest's Fastify adapter also parses form-encoded
 * bodies, which would let `templateID=base` through as if it were JSON; this hook
 * refuses any non-JSON body with 415 before parsing.
 */
export function requireJsonBodies(fastify: FastifyInstance): void {
  fastify.addHook('onRequest', async (request) => {
    // The one route whose body is not JSON: a template build-context archive (acceptTemplateUploadBodies).
    if (!hasBody(request) || isTemplateFileUpload(request)) return;
    const type = request.headers['content-type']?.split(';')[0]?.trim().toLowerCase();
    if (type === undefined || type === 'application/json') return;
    throw Object.assign(new Error(`unsupported content type '${type}': send application/json`), { statusCode: 415 });
  });
}
