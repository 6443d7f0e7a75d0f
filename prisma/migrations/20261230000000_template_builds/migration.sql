-- Template builds from definitions (issue 14): the validated definition, what the build produced, tags, logs and
-- the uploaded build context archives.
ALTER TABLE "template_builds"
  ADD COLUMN "ready_cmd" TEXT,
  ADD COLUMN "reason_step" TEXT,
  ADD COLUMN "definition" JSONB,
  ADD COLUMN "runtime" JSONB,
  ADD COLUMN "artifacts" JSONB,
  ADD COLUMN "built_on_host_id" TEXT,
  ADD COLUMN "cancel_requested" BOOLEAN NOT NULL DEFAULT false,
  ADD COLUMN "updated_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
  ADD COLUMN "started_at" TIMESTAMP(3);

CREATE TABLE "template_build_logs" (
    "build_id" UUID NOT NULL,
    "seq" INTEGER NOT NULL,
    "timestamp" TIMESTAMP(3) NOT NULL,
    "level" TEXT NOT NULL,
    "message" TEXT NOT NULL,
    "step" TEXT,
    CONSTRAINT "template_build_logs_pkey" PRIMARY KEY ("build_id","seq")
);

CREATE TABLE "template_tags" (
    "template_id" TEXT NOT NULL,
    "tag" TEXT NOT NULL,
    "build_id" UUID NOT NULL,
    "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "template_tags_pkey" PRIMARY KEY ("template_id","tag")
);
CREATE INDEX "template_tags_build_id_idx" ON "template_tags"("build_id");

CREATE TABLE "template_files" (
    "team_id" UUID NOT NULL,
    "files_hash" TEXT NOT NULL,
    "sha256" TEXT NOT NULL,
    "bytes" BIGINT NOT NULL,
    "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "template_files_pkey" PRIMARY KEY ("team_id","files_hash")
);

ALTER TABLE "template_build_logs" ADD CONSTRAINT "template_build_logs_build_id_fkey" FOREIGN KEY ("build_id") REFERENCES "template_builds"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "template_tags" ADD CONSTRAINT "template_tags_template_id_fkey" FOREIGN KEY ("template_id") REFERENCES "templates"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "template_tags" ADD CONSTRAINT "template_tags_build_id_fkey" FOREIGN KEY ("build_id") REFERENCES "template_builds"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "template_files" ADD CONSTRAINT "template_files_team_id_fkey" FOREIGN KEY ("team_id") REFERENCES "teams"("id") ON DELETE CASCADE ON UPDATE CASCADE;
