import { ErrorCode, KilnError } from '@kiln/contracts';

/** Seconds a caller is told to wait after Postgres could not be reached: long enough for a failover or restart. */
export const DATABASE_RETRY_AFTER_SECONDS = 5;

/**
 * Postgres could not be reached, dropped the connection, or did not answer within the client's timeouts. A
 * KilnError (`unavailable`, 503 with Retry-After) so it crosses NATS and reaches HTTP as an outage, never a 500.
 */
export class DatabaseUnavailableError extends KilnError {
  constructor(reason: string) {
    super(ErrorCode.Unavailable, `database unavailable: ${reason}`, DATABASE_RETRY_AFTER_SECONDS);
  }
}

/**
 * Prisma codes for "could not reach / lost / timed out on the server" (not for a query that was wrong). P2028 is an
 * interactive transaction that could not start or finish in its time (the pool was exhausted by a burst): overloaded,
 * retryable, a 503 rather than a 500.
 */
const UNREACHABLE_PRISMA_CODES = new Set(['P1001', 'P1002', 'P1008', 'P1017', 'P2024', 'P2028']);
/** SQLSTATE classes and codes that mean the server went away or will not take connections now. */
const UNAVAILABLE_SQLSTATE = /^(08...|57P0[1-3]|53300)$/;
/** node-postgres and socket errors raised before Postgres said anything. */
const CONNECTION_FAILURE = /ECONNREFUSED|ECONNRESET|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT|EPIPE|Connection terminated|Query read timeout|timeout exceeded when trying to connect|Can't reach database server|Client has encountered a connection error/i;

interface DriverFailure {
  code?: unknown;
  message?: unknown;
  meta?: { driverAdapterError?: { cause?: { kind?: unknown; code?: unknown; originalCode?: unknown } } };
}

/**
 * The DatabaseUnavailableError an error means, or undefined when it is not a connectivity failure (a constraint
 * violation, a bug). Callers at a module's edge (the scheduler's RPC filter, the gateway's HTTP mapping) use it.
 */
export function asDatabaseUnavailable(error: unknown): DatabaseUnavailableError | undefined {
  if (error instanceof DatabaseUnavailableError) return error;
  if (typeof error !== 'object' || error === null || error instanceof KilnError) return undefined;
  const failure = error as DriverFailure;
  const cause = failure.meta?.driverAdapterError?.cause;
  const sqlState = String(cause?.originalCode ?? cause?.code ?? failure.code ?? '');
  const message = typeof failure.message === 'string' ? failure.message : '';
  const unavailable =
    (typeof failure.code === 'string' && UNREACHABLE_PRISMA_CODES.has(failure.code)) ||
    cause?.kind === 'DatabaseNotReachable' ||
    UNAVAILABLE_SQLSTATE.test(sqlState) ||
    CONNECTION_FAILURE.test(message);
  if (!unavailable) return undefined;
  return new DatabaseUnavailableError(lastLine(message) || String(failure.code ?? 'connection failed'));
}

/** Prisma's messages start with the invocation and a code frame; the server's reason is the last line. */
function lastLine(message: string): string {
  const lines = message.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
  return (lines[lines.length - 1] ?? '').slice(0, 200);
}
