import { Logger } from '@nestjs/common';
import type { FastifyServerOptions } from 'fastify';
import { sendHttpError } from './api-exception.filter';

const logger = new Logger('http');

/**
 * Fastify answers a few malformed requests (a path with broken percent-encoding,
 * an over-long parameter) before any route or error handler runs; this hook makes
 * those answers use the API's error body too.
 */
export const frameworkErrors: NonNullable<FastifyServerOptions['frameworkErrors']> = (error, request, reply) => {
  sendHttpError(reply, error, logger, request);
};
