import { errorCodes, type FastifyInstance, type FastifyRequest } from 'fastify';

/** The router path of the upload URL's route (`PUT /templates/{templateID}/files/{hash}`). */
export const TEMPLATE_FILE_UPLOAD_ROUTE = '/templates/:templateID/files/:hash';

/** Whether the request is an archive upload, whose body is raw bytes (a tar or gzipped tar), never JSON. */
export function isTemplateFileUpload(request: FastifyRequest): boolean {
  return request.method === 'PUT' && request.routeOptions?.url === TEMPLATE_FILE_UPLOAD_ROUTE;
}

/**
 * Lets upload bodies through unparsed: the SDK PUTs the archive with whatever content type its fetch picks (usually
 * none), like to a presigned S3 URL. The archive's content type is forced to octet-stream (so no JSON parser ever
 * reads it), and the catch-all parser leaves the stream unread for the handler, which streams it to the artifact
 * store (up to TEMPLATE_UPLOAD_MAX_BYTES, never buffered; the API's 1 MiB body limit applies to parsed bodies only).
 * Any other route with a body of no known type is refused as before (415).
 */
export function acceptTemplateUploadBodies(fastify: FastifyInstance): void {
  fastify.addHook('onRequest', async (request) => {
    if (isTemplateFileUpload(request)) request.headers['content-type'] = 'application/octet-stream';
  });
  fastify.addContentTypeParser('*', (request, _payload, done) => {
    if (isTemplateFileUpload(request)) {
      done(null, undefined);
      return;
    }
    done(new errorCodes.FST_ERR_CTP_INVALID_MEDIA_TYPE(request.headers['content-type'] ?? ''), undefined);
  });
}
