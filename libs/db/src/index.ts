export * from './migrations';
export * from './prisma.service';
export * from './repositories/api-key.repository';
export * from './repositories/team.repository';
export * from './repositories/template.repository';
export * from './repositories/host.repository';
export * from './repositories/sandbox.repository';
export * from './db.module';
export type { Prisma } from '@prisma/client';
