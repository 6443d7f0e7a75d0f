-- Envd access tokens are derived from a deployment key (scheduler KILN_SANDBOX_TOKEN_KEY), never stored.
ALTER TABLE "sandboxes" DROP COLUMN "envd_access_token";
-- A sandbox's network as its host applied it: egress rules in E2B's shape, internet access as the caller set it
-- (null: not set), whether its user ports are public, and the Host mask for user-port requests.
ALTER TABLE "sandboxes" ADD COLUMN "egress" JSONB NOT NULL DEFAULT '{"allowOut":[],"denyOut":[]}';
ALTER TABLE "sandboxes" ADD COLUMN "allow_internet_access" BOOLEAN;
ALTER TABLE "sandboxes" ADD COLUMN "allow_public_traffic" BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE "sandboxes" ADD COLUMN "mask_request_host" TEXT;
