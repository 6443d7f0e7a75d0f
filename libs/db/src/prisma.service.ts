import { Injectable, Logger, OnApplicationShutdown } from '@nestjs/common';
import { PrismaPg } from '@prisma/adapter-pg';
import { PrismaClient } from '@prisma/client';

/**
 * Client-side bounds on every database call. Every control-plane query is a short OLTP statement, so a call that
 * takes longer means Postgres is unreachable or stalled: it fails (as DatabaseUnavailableError at the edges) instead
 * of holding an API request until the caller gives up.
 */
export interface DatabaseTimeouts {
  connectTimeoutMs: number;
  queryTimeoutMs: number;
}

export const DEFAULT_DATABASE_TIMEOUTS: DatabaseTimeouts = { connectTimeoutMs: 3_000, queryTimeoutMs: 5_000 };

/** The Prisma client over node-postgres (the JS engine: no native query engine needed). */
@Injectable()
export class PrismaService extends PrismaClient implements OnApplicationShutdown {
  private readonly logger = new Logger('db');

  constructor(databaseUrl: string, timeouts: DatabaseTimeouts = DEFAULT_DATABASE_TIMEOUTS) {
    super({
      adapter: new PrismaPg({
        connectionString: databaseUrl,
        connectionTimeoutMillis: timeouts.connectTimeoutMs,
        // node-postgres's own read timeout: a server that accepted the connection but stopped answering.
        query_timeout: timeouts.queryTimeoutMs,
        max: 10,
      }),
    });
  }

  async ping(): Promise<void> {
    await this.$queryRaw`SELECT 1`;
  }

  async onApplicationShutdown(): Promise<void> {
    await this.$disconnect().catch((error) => this.logger.warn(`disconnect failed: ${String(error)}`));
  }
}
