-- GET /v2/sandboxes pages by (started_at, id) in either direction (E2B: newest first, id ascending among equal start
-- times; asc is the exact reverse), filtered by team: one index serves both scans.
CREATE INDEX "sandboxes_team_id_started_at_id_idx" ON "sandboxes"("team_id", "started_at" DESC, "id");
-- Every row that ever reached running has its start time; rows that somehow lack it get their creation time, so no
-- started sandbox is left out of a list that only shows started ones.
UPDATE "sandboxes" SET "started_at" = "created_at"
  WHERE "started_at" IS NULL AND "state" IN ('running', 'pausing', 'paused', 'resuming');

-- E2B's spawnCount and lastSpawnedAt of a template: moved in the transaction that makes a sandbox running.
ALTER TABLE "templates" ADD COLUMN "spawn_count" BIGINT NOT NULL DEFAULT 0;
ALTER TABLE "templates" ADD COLUMN "last_spawned_at" TIMESTAMP(3);
-- History counts: every sandbox that was ever started from the template.
UPDATE "templates" AS t SET "spawn_count" = s.spawns, "last_spawned_at" = s.last_started
  FROM (SELECT "template_id", count(*) AS spawns, max("started_at") AS last_started
          FROM "sandboxes" WHERE "started_at" IS NOT NULL GROUP BY "template_id") AS s
  WHERE t."id" = s."template_id";
