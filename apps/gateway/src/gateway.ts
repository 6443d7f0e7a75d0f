import type { Duplex } from 'node:stream';
import { GatewayEnv, ipListEntries } from '@kiln/config';
import { Module } from '@nestjs/common';
import { NestFastifyApplication } from '@nestjs/platform-fastify';
import { startHttpService } from '@kiln/telemetry';
import { AppModule } from './app.module';
import { refuseConnectMethod } from './http-errors/connect-method';
import { frameworkErrors } from './http-errors/framework-errors';
import { requireJsonBodies } from './http-errors/json-body-policy';
import { OpenApiDocument } from './openapi/openapi-document';
import { acceptTemplateUploadBodies } from './templates/template-upload-body';
import { TlsEdgeListener } from './tls-edge/tls-edge.listener';
import { TlsEdgeModule } from './tls-edge/tls-edge.module';
import { readTlsEdgeCredentials } from './tls-edge/tls-credentials';
import { SandboxTrafficProxy } from './traffic/sandbox-traffic.proxy';

/** Request bodies are JSON documents (the largest legitimate one carries env vars); anything bigger is refused with 413. */
export const API_BODY_LIMIT_BYTES = 1024 * 1024;

export interface RunningGateway {
  app: NestFastifyApplication;
  /** Base URL of the REST API (E2B_API_URL). */
  apiUrl: string;
  /** Base URL of the sandbox-traffic listener (E2B_SANDBOX_URL). */
  sandboxUrl: string;
  /** Port of the TLS listener for E2B_DOMAIN clients; undefined when no certificate is configured. */
  tlsPort: number | undefined;
  close(): Promise<void>;
}

/** The app plus the TLS listener, which routes to both of its HTTP handlers. */
@Module({})
class GatewayModule {}

/**
 * Starts the REST API on HTTP_PORT, the sandbox-traffic listener on SANDBOX_PROXY_PORT and, when a certificate is
 * configured, the TLS listener on TLS_PORT. Used by main.ts and by the tests, so both run the same code.
 */
export async function startGateway(env: GatewayEnv, options: { host?: string } = {}): Promise<RunningGateway> {
  // Before anything starts: a missing or wrong certificate fails the start with one line naming the setting.
  const tlsCredentials = readTlsEdgeCredentials(env);
  const app = await startHttpService(
    { module: GatewayModule, imports: [AppModule.forRoot(env), TlsEdgeModule.forRoot(tlsCredentials)] },
    {
      port: env.HTTP_PORT,
      host: options.host,
      bodyLimitBytes: API_BODY_LIMIT_BYTES,
      fastifyOptions: { frameworkErrors },
      // The client address (per-address rate limits) comes from X-Forwarded-For only behind these proxies.
      trustedProxies: ipListEntries(env.TRUSTED_PROXIES),
      configure: (created) => {
        requireJsonBodies(created.getHttpAdapter().getInstance());
        acceptTemplateUploadBodies(created.getHttpAdapter().getInstance());
        created.getHttpServer().on('connect', (_req: unknown, socket: Duplex) => refuseConnectMethod(socket));
        // The SDK also runs in browsers. Keys travel in headers, never cookies, so any origin may call.
        created.enableCors({ origin: '*', credentials: false, exposedHeaders: ['x-next-token', 'x-total-running', 'retry-after'], maxAge: 600 });
        created.get(OpenApiDocument).build(created);
      },
    },
  );
  const tlsEdge = app.get(TlsEdgeListener);
  try {
    // Only now: the API's routes are ready once it listens.
    await tlsEdge.listen(options.host);
  } catch (error) {
    await app.close();
    throw error;
  }
  const address = app.getHttpServer().address();
  const port = typeof address === 'object' && address ? address.port : env.HTTP_PORT;
  return {
    app,
    apiUrl: `http://127.0.0.1:${port}`,
    sandboxUrl: `http://127.0.0.1:${app.get(SandboxTrafficProxy).port}`,
    tlsPort: tlsEdge.port,
    close: () => app.close(),
  };
}
