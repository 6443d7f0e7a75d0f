-- Templates for which the host has a restored clone waiting; placement prefers those hosts.
ALTER TABLE "hosts" ADD COLUMN "ready_clone_templates" TEXT[] DEFAULT ARRAY[]::TEXT[];
