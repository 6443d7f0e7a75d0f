-- Per-team quota overrides; null means the scheduler's default (TEAM_MAX_CONCURRENT_SANDBOXES, TEAM_MAX_VCPUS,
-- TEAM_MAX_MEMORY_MIB). 0 is a valid override: the team may not create sandboxes at all.
ALTER TABLE "teams" ADD COLUMN "max_concurrent_sandboxes" INTEGER;
ALTER TABLE "teams" ADD COLUMN "max_vcpus" INTEGER;
ALTER TABLE "teams" ADD COLUMN "max_memory_mib" INTEGER;
ALTER TABLE "teams" ADD CONSTRAINT "teams_quotas_not_negative"
  CHECK (("max_concurrent_sandboxes" IS NULL OR "max_concurrent_sandboxes" >= 0)
     AND ("max_vcpus" IS NULL OR "max_vcpus" >= 0)
     AND ("max_memory_mib" IS NULL OR "max_memory_mib" >= 0));
