-- The fleet (issue 15): the host monitor owns host liveness. `cordoned` is an operator state like `draining`; `dead`
-- is a host silent past HOST_DEAD_AFTER_SECONDS. The new values are not used in this transaction (Postgres forbids it).
ALTER TYPE "host_state" ADD VALUE IF NOT EXISTS 'cordoned';
ALTER TYPE "host_state" ADD VALUE IF NOT EXISTS 'dead';

-- admin_state: the operator's intent (ready | draining | cordoned), kept while liveness changes `state`.
-- credential_hash: sha256 hex of the host credential issued in exchange for a join token.
ALTER TABLE "hosts"
  ADD COLUMN "admin_state" TEXT NOT NULL DEFAULT 'ready',
  ADD COLUMN "state_changed_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
  ADD COLUMN "credential_hash" TEXT,
  ADD COLUMN "disk_mib_capacity" INTEGER NOT NULL DEFAULT 0,
  ADD COLUMN "disk_mib_used" INTEGER NOT NULL DEFAULT 0;

UPDATE "hosts" SET "admin_state" = 'draining' WHERE "state" = 'draining';

-- One row per join token ever used: a second registration with the same token conflicts on the nonce.
CREATE TABLE "host_join_tokens" (
    "nonce" TEXT NOT NULL,
    "host_id" TEXT NOT NULL,
    "expires_at" TIMESTAMP(3) NOT NULL,
    "used_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "host_join_tokens_pkey" PRIMARY KEY ("nonce")
);
