-- Per-team disk quota override (null: the scheduler's TEAM_MAX_DISK_MIB), counted over sandboxes that hold a disk,
-- paused ones included: a paused sandbox costs disk, not vCPUs or RAM.
ALTER TABLE "teams" ADD COLUMN "max_disk_mib" INTEGER;
ALTER TABLE "teams" ADD CONSTRAINT "teams_disk_quota_not_negative" CHECK ("max_disk_mib" IS NULL OR "max_disk_mib" >= 0);
