// Prisma 6 with the JS engine: the Rust engine binaries cannot be downloaded here.
// Only `prisma generate` and `prisma migrate diff` (both offline) are used;
// migrations are applied by libs/db's runner, so no adapter is needed for migrate.
import { defineConfig } from 'prisma/config';
import { PrismaPg } from '@prisma/adapter-pg';

export default defineConfig({
  experimental: { adapter: true },
  engine: 'js',
  schema: 'prisma/schema.prisma',
  async adapter() {
    return new PrismaPg({ connectionString: process.env.DATABASE_URL ?? 'postgresql://127.0.0.1:5432/test' });
  },
});
