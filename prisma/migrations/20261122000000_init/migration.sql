-- CreateSchema
CREATE SCHEMA IF NOT EXISTS "public";

-- CreateEnum
CREATE TYPE "sandbox_state" AS ENUM ('pending', 'starting', 'running', 'pausing', 'paused', 'resuming', 'killed', 'error');

-- CreateEnum
CREATE TYPE "build_state" AS ENUM ('waiting', 'building', 'ready', 'error');

-- CreateEnum
CREATE TYPE "snapshot_kind" AS ENUM ('template', 'pause');

-- CreateEnum
CREATE TYPE "host_state" AS ENUM ('registering', 'ready', 'draining', 'unhealthy', 'offline');

-- CreateTable
CREATE TABLE "teams" (
    "id" UUID NOT NULL,
    "name" TEXT NOT NULL,
    "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "teams_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "api_keys" (
    "id" UUID NOT NULL,
    "team_id" UUID NOT NULL,
    "name" TEXT NOT NULL,
    "key_hash" TEXT NOT NULL,
    "key_prefix" TEXT NOT NULL,
    "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "last_used_at" TIMESTAMP(3),
    "revoked_at" TIMESTAMP(3),

    CONSTRAINT "api_keys_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "sandboxes" (
    "id" TEXT NOT NULL,
    "team_id" UUID NOT NULL,
    "template_id" TEXT NOT NULL,
    "build_id" UUID,
    "alias" TEXT,
    "host_id" TEXT,
    "state" "sandbox_state" NOT NULL,
    "state_reason" TEXT,
    "vcpus" INTEGER NOT NULL,
    "memory_mib" INTEGER NOT NULL,
    "disk_mib" INTEGER NOT NULL,
    "timeout_seconds" INTEGER NOT NULL,
    "expires_at" TIMESTAMP(3) NOT NULL,
    "auto_pause" BOOLEAN NOT NULL DEFAULT false,
    "metadata" JSONB NOT NULL DEFAULT '{}',
    "env_vars" JSONB NOT NULL DEFAULT '{}',
    "envd_access_token" TEXT,
    "request_key" TEXT,
    "version" INTEGER NOT NULL DEFAULT 0,
    "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "started_at" TIMESTAMP(3),
    "ended_at" TIMESTAMP(3),
    "updated_at" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "sandboxes_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "sandbox_events" (
    "id" BIGSERIAL NOT NULL,
    "sandbox_id" TEXT NOT NULL,
    "from_state" "sandbox_state",
    "to_state" "sandbox_state" NOT NULL,
    "reason" TEXT,
    "payload" JSONB NOT NULL DEFAULT '{}',
    "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "sandbox_events_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "templates" (
    "id" TEXT NOT NULL,
    "team_id" UUID,
    "public" BOOLEAN NOT NULL DEFAULT false,
    "vcpus" INTEGER NOT NULL DEFAULT 1,
    "memory_mib" INTEGER NOT NULL DEFAULT 512,
    "disk_mib" INTEGER NOT NULL DEFAULT 2048,
    "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "templates_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "template_aliases" (
    "alias" TEXT NOT NULL,
    "template_id" TEXT NOT NULL,
    "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "template_aliases_pkey" PRIMARY KEY ("alias")
);

-- CreateTable
CREATE TABLE "template_builds" (
    "id" UUID NOT NULL,
    "template_id" TEXT NOT NULL,
    "state" "build_state" NOT NULL,
    "envd_version" TEXT,
    "content_hash" TEXT,
    "vcpus" INTEGER NOT NULL,
    "memory_mib" INTEGER NOT NULL,
    "disk_mib" INTEGER NOT NULL,
    "start_cmd" TEXT,
    "reason" TEXT,
    "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "finished_at" TIMESTAMP(3),

    CONSTRAINT "template_builds_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "snapshots" (
    "id" UUID NOT NULL,
    "kind" "snapshot_kind" NOT NULL,
    "sandbox_id" TEXT,
    "build_id" UUID,
    "host_id" TEXT,
    "path" TEXT NOT NULL,
    "manifest" JSONB NOT NULL DEFAULT '{}',
    "size_bytes" BIGINT NOT NULL DEFAULT 0,
    "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "snapshots_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "hosts" (
    "id" TEXT NOT NULL,
    "address" TEXT NOT NULL,
    "proxy_url" TEXT NOT NULL,
    "state" "host_state" NOT NULL,
    "acceleration" TEXT NOT NULL DEFAULT 'tcg',
    "vcpu_capacity" INTEGER NOT NULL,
    "memory_mib_capacity" INTEGER NOT NULL,
    "sandbox_capacity" INTEGER NOT NULL,
    "vcpu_used" INTEGER NOT NULL DEFAULT 0,
    "memory_mib_used" INTEGER NOT NULL DEFAULT 0,
    "sandbox_count" INTEGER NOT NULL DEFAULT 0,
    "cached_templates" TEXT[] DEFAULT ARRAY[]::TEXT[],
    "version" TEXT,
    "last_heartbeat_at" TIMESTAMP(3),
    "registered_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "hosts_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "teams_name_key" ON "teams"("name");

-- CreateIndex
CREATE UNIQUE INDEX "api_keys_key_hash_key" ON "api_keys"("key_hash");

-- CreateIndex
CREATE INDEX "api_keys_team_id_idx" ON "api_keys"("team_id");

-- CreateIndex
CREATE UNIQUE INDEX "sandboxes_request_key_key" ON "sandboxes"("request_key");

-- CreateIndex
CREATE INDEX "sandboxes_team_id_state_idx" ON "sandboxes"("team_id", "state");

-- CreateIndex
CREATE INDEX "sandboxes_host_id_state_idx" ON "sandboxes"("host_id", "state");

-- CreateIndex
CREATE INDEX "sandboxes_expires_at_idx" ON "sandboxes"("expires_at");

-- CreateIndex
CREATE INDEX "sandbox_events_sandbox_id_created_at_idx" ON "sandbox_events"("sandbox_id", "created_at");

-- CreateIndex
CREATE INDEX "template_aliases_template_id_idx" ON "template_aliases"("template_id");

-- CreateIndex
CREATE INDEX "template_builds_template_id_created_at_idx" ON "template_builds"("template_id", "created_at");

-- CreateIndex
CREATE INDEX "snapshots_sandbox_id_idx" ON "snapshots"("sandbox_id");

-- CreateIndex
CREATE INDEX "hosts_state_last_heartbeat_at_idx" ON "hosts"("state", "last_heartbeat_at");

-- AddForeignKey
ALTER TABLE "api_keys" ADD CONSTRAINT "api_keys_team_id_fkey" FOREIGN KEY ("team_id") REFERENCES "teams"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "sandboxes" ADD CONSTRAINT "sandboxes_team_id_fkey" FOREIGN KEY ("team_id") REFERENCES "teams"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "sandboxes" ADD CONSTRAINT "sandboxes_host_id_fkey" FOREIGN KEY ("host_id") REFERENCES "hosts"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "sandbox_events" ADD CONSTRAINT "sandbox_events_sandbox_id_fkey" FOREIGN KEY ("sandbox_id") REFERENCES "sandboxes"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "templates" ADD CONSTRAINT "templates_team_id_fkey" FOREIGN KEY ("team_id") REFERENCES "teams"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "template_aliases" ADD CONSTRAINT "template_aliases_template_id_fkey" FOREIGN KEY ("template_id") REFERENCES "templates"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "template_builds" ADD CONSTRAINT "template_builds_template_id_fkey" FOREIGN KEY ("template_id") REFERENCES "templates"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "snapshots" ADD CONSTRAINT "snapshots_sandbox_id_fkey" FOREIGN KEY ("sandbox_id") REFERENCES "sandboxes"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "snapshots" ADD CONSTRAINT "snapshots_build_id_fkey" FOREIGN KEY ("build_id") REFERENCES "template_builds"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "snapshots" ADD CONSTRAINT "snapshots_host_id_fkey" FOREIGN KEY ("host_id") REFERENCES "hosts"("id") ON DELETE SET NULL ON UPDATE CASCADE;

