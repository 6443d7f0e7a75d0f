-- Env vars given at create may hold secrets. They go to the host with the create call and are never stored: the
-- create path does not read them back (a retried create returns the existing sandbox, reconcile only fails a row
-- past its deadline), so the column and every value kept in it so far go.
ALTER TABLE "sandboxes" DROP COLUMN "env_vars";
