import { DynamicModule, Global, Logger, Module, OnModuleInit } from '@nestjs/common';
import { describeError, retryWithBackoff } from '@kiln/config';
import { DependencyHealth } from '@kiln/telemetry';
import { applyMigrations } from './migrations';
import { PrismaService } from './prisma.service';
import { ApiKeyRepository } from './repositories/api-key.repository';
import { HostRepository } from './repositories/host.repository';
import { SandboxRepository } from './repositories/sandbox.repository';
import { TeamRepository } from './repositories/team.repository';
import { TemplateRepository } from './repositories/template.repository';
import { NamedSnapshotRepository } from './repositories/named-snapshot.repository';
import { TemplateAuthoringRepository } from './repositories/template-authoring.repository';

export interface DbOptions {
  databaseUrl: string;
  /** Apply pending migrations at start (advisory-locked, so every app may do it). */
  migrate: boolean;
}

const REPOSITORIES = [ApiKeyRepository, TeamRepository, SandboxRepository, TemplateRepository, HostRepository, NamedSnapshotRepository, TemplateAuthoringRepository];

@Global()
@Module({})
export class DbModule implements OnModuleInit {
  private static options: DbOptions;
  private readonly logger = new Logger('db');

  constructor(
    private readonly prisma: PrismaService,
    private readonly health: DependencyHealth,
  ) {}

  static forRoot(options: DbOptions): DynamicModule {
    DbModule.options = options;
    return {
      module: DbModule,
      providers: [{ provide: PrismaService, useFactory: () => new PrismaService(options.databaseUrl) }, ...REPOSITORIES],
      exports: [PrismaService, ...REPOSITORIES],
    };
  }

  async onModuleInit(): Promise<void> {
    const { databaseUrl, migrate } = DbModule.options;
    const where = new URL(databaseUrl).host;
    await retryWithBackoff(`Postgres at ${where}`, () => this.prisma.ping(), {
      onRetry: (error, n, delay) => this.logger.warn(`Postgres attempt ${n} failed (${describeError(error)}); retrying in ${delay} ms`),
    });
    if (migrate) {
      const result = await applyMigrations(databaseUrl);
      if (result.applied.length) this.logger.log(`applied migrations: ${result.applied.join(', ')}`);
    }
    this.health.register('postgres', () => this.prisma.ping());
  }
}
