import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import pino, { LoggerOptions } from 'pino';
import type { Params } from 'nestjs-pino';

function headerValue(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** Sandbox id from the E2B traffic header or a `/sandboxes/{id}` path, so every log line can be joined on it. */
export function sandboxIdOf(req: IncomingMessage): string | undefined {
  return headerValue(req, 'e2b-sandbox-id') ?? /\/sandboxes\/([a-z0-9]+)/.exec(req.url ?? '')?.[1];
}

export function baseLoggerOptions(service: string, level: string): LoggerOptions {
  return {
    name: service,
    level,
    base: { service },
    timestamp: pino.stdTimeFunctions.isoTime,
    // Credentials in headers: API keys, the admin API's token (X-Admin-Token), sandbox tokens.
    redact: ['req.headers["x-api-key"]', 'req.headers["x-admin-token"]', 'req.headers["x-access-token"]', 'req.headers["e2b-traffic-access-token"]', 'req.headers.authorization'],
  };
}


export function nestLoggerParams(service: string, level: string): Params {
  return {
    pinoHttp: {
      ...baseLoggerOptions(service, level),
      genReqId: (req) => headerValue(req, 'x-request-id') ?? randomUUID(),
      customProps: (req) => {
        const sandboxId = sandboxIdOf(req);
        return sandboxId ? { sandboxId } : {};
      },
      autoLogging: { ignore: (req) => req.url === '/health' || req.url === '/metrics' },
    },
  };
}
