import { ErrorCode, KilnError } from '@kiln/contracts';

export type NotSupportedMethod = 'GET' | 'POST' | 'PATCH' | 'DELETE';

/** An E2B API route Kiln does not serve yet, spelled as in E2B's openapi.yml. */
export interface NotSupportedRoute {
  method: NotSupportedMethod;
  path: string;
  /** What the caller was trying to do, for the error message. */
  feature: string;
}

/**
 * E2B routes (openapi.yml, used by the SDKs) that Kiln does not implement yet. Without these, Fastify would answer
 * `404 Cannot POST …`, which the SDK reads as "sandbox not found" (SandboxNotFoundError) or, for a snapshot delete,
 * as "already gone". Each answers 501 {code, message} naming the route instead; the SDK raises that as a plain
 * SandboxError / BuildError carrying the message. The work that implements a route deletes its line here.
 */
export const NOT_SUPPORTED_ROUTES: readonly NotSupportedRoute[] = [
  // Sandboxes
  { method: 'GET', path: '/sandboxes/metrics', feature: 'metrics of several sandboxes at once' },
  // Templates: the deprecated build API (v1/v2) and editing (the v3 build API, tags, status and logs are TemplateBuildsController's)
  { method: 'GET', path: '/v2/templates', feature: 'the paged template list (GET /templates is served)' },
  { method: 'POST', path: '/v2/templates', feature: 'building templates with the v2 API (use POST /v3/templates)' },
  { method: 'POST', path: '/templates', feature: 'building templates with the v1 API (use POST /v3/templates)' },
  { method: 'POST', path: '/templates/{templateID}', feature: 'rebuilding a template' },
  { method: 'PATCH', path: '/templates/{templateID}', feature: 'updating a template' },
  { method: 'PATCH', path: '/v2/templates/{templateID}', feature: 'updating a template' },
  { method: 'POST', path: '/templates/{templateID}/builds/{buildID}', feature: 'starting a template build with the v1 API (use POST /v2/templates/{templateID}/builds/{buildID})' },
  // Volumes
  { method: 'GET', path: '/volumes', feature: 'volumes' },
  { method: 'POST', path: '/volumes', feature: 'volumes' },
  { method: 'GET', path: '/volumes/{volumeID}', feature: 'volumes' },
  { method: 'DELETE', path: '/volumes/{volumeID}', feature: 'volumes' },
  // Secrets
  { method: 'GET', path: '/secrets', feature: 'secrets' },
  { method: 'POST', path: '/secrets', feature: 'secrets' },
  { method: 'GET', path: '/secrets/{secretID}', feature: 'secrets' },
  { method: 'POST', path: '/secrets/{secretID}', feature: 'secrets' },
  { method: 'DELETE', path: '/secrets/{secretID}', feature: 'secrets' },
];

/**
 * The answer for a route Kiln does not implement yet: 501 (E2B answers 501 where a deployment lacks a capability).
 * Not 404, which the SDK reads as "sandbox not found", and not 409, which it reads as "already paused".
 */
export function notSupported(route: Pick<NotSupportedRoute, 'method' | 'path' | 'feature'>): KilnError {
  return new KilnError(ErrorCode.NotImplemented, `${route.method} ${route.path} (${route.feature}) is not supported by this deployment yet`);
}

/** E2B's `{param}` path form as the router's `:param` form, without the leading slash (Nest's style). */
export function toRouterPath(path: string): string {
  return path.replace(/^\//, '').replace(/\{([A-Za-z]+)\}/g, ':$1');
}
