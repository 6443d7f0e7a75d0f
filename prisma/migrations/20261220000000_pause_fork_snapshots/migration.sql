-- Pause on timeout (E2B autoPause, autoPauseMemory) and auto-resume by traffic (E2B autoResume.enabled).
ALTER TABLE "sandboxes" ADD COLUMN "auto_pause_memory" BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE "sandboxes" ADD COLUMN "auto_resume" BOOLEAN NOT NULL DEFAULT false;
-- A named snapshot is a template of its team with one build per snapshot; the build's artifacts live on one host
-- (its snapshots row, kind template). source_sandbox_id has no foreign key: a snapshot outlives its sandbox.
ALTER TABLE "templates" ADD COLUMN "is_snapshot" BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE "templates" ADD COLUMN "source_sandbox_id" TEXT;
CREATE INDEX "templates_team_id_is_snapshot_created_at_idx" ON "templates"("team_id", "is_snapshot", "created_at");
CREATE INDEX "snapshots_build_id_idx" ON "snapshots"("build_id");
-- At most one pause record per sandbox: a pause over a pause replaces it (the host keeps only what the latest needs).
CREATE UNIQUE INDEX "snapshots_one_pause_per_sandbox" ON "snapshots"("sandbox_id") WHERE "kind" = 'pause';
