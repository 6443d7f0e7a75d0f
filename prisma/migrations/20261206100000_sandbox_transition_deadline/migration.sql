-- When a sandbox in a transitional state (pending, starting, pausing, resuming) must have left it. Set with the move
-- into the state and cleared with the move out, so a crash between the two leaves a row reconcile can find and fail.
ALTER TABLE "sandboxes" ADD COLUMN "deadline_at" TIMESTAMP(3);
-- Rows already in flight when this migrates get the old hard-coded create budget (180 s) from their last change.
UPDATE "sandboxes" SET "deadline_at" = "updated_at" + INTERVAL '180 seconds'
  WHERE "state" IN ('pending', 'starting', 'pausing', 'resuming');
-- No transitional row without a deadline: the sweep is the guarantee, so the database refuses to lose it.
ALTER TABLE "sandboxes" ADD CONSTRAINT "sandboxes_transition_has_deadline"
  CHECK ("state" NOT IN ('pending', 'starting', 'pausing', 'resuming') OR "deadline_at" IS NOT NULL);
CREATE INDEX "sandboxes_state_deadline_at_idx" ON "sandboxes"("state", "deadline_at");
