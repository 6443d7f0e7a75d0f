import { INestApplication } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter, NestFastifyApplication } from '@nestjs/platform-fastify';
import type { FastifyServerOptions } from 'fastify';
import { Logger } from 'nestjs-pino';

export interface HttpServiceOptions {
  port: number;
  host?: string;
  /** Largest request body Fastify accepts before answering 413. */
  bodyLimitBytes?: number;
  /** Extra Fastify server options (e.g. `frameworkErrors`, which can only be set at construction). */
  fastifyOptions?: FastifyServerOptions;
  /**
   * Proxies (IPs or CIDR blocks) whose X-Forwarded-For/-Host/-Proto Fastify believes (request.ip and friends).
   * Unset or empty: none, so request.ip is always the connection's peer and no client can claim another address.
   */
  trustedProxies?: string[];
  /** Runs after the app is created and before it starts listening (microservices, hooks). */
  configure?: (app: NestFastifyApplication) => Promise<void> | void;
}

/**
 * Creates a Fastify-based Nest app with JSON logging and graceful shutdown, and
 * starts listening. Failures propagate to the caller (runOrExit) as one error
 * instead of Nest aborting the process with a stack trace.
 */
export async function startHttpService(module: unknown, options: HttpServiceOptions): Promise<NestFastifyApplication> {
  const app = await NestFactory.create<NestFastifyApplication>(
    module as never,
    new FastifyAdapter({ ...options.fastifyOptions, bodyLimit: options.bodyLimitBytes ?? 1024 * 1024, trustProxy: options.trustedProxies?.length ? options.trustedProxies : false }),
    { bufferLogs: true, abortOnError: false },
  );
  app.useLogger(app.get(Logger));
  app.enableShutdownHooks();
  await options.configure?.(app);
  // Module init first: it connects dependencies with backoff and fails with one clear line.
  await app.init();
  await app.startAllMicroservices();
  await app.listen(options.port, options.host ?? '0.0.0.0');
  return app;
}

export type { INestApplication };
