#!/usr/bin/env bash
# `npm run down`: stops everything `npm run up` started and removes what it created
# (sandbox VMs, network slots, disk layers); images and the database stay for next time.
# shellcheck source=apps.sh
source "$(dirname "${BASH_SOURCE[0]}")/apps.sh"

stack_env
for app in gateway template-builder host-monitor scheduler; do stop_app "$app"; done
# The host agent leaves VMs running across its own restarts by design; `down` removes them.
stop_app host-agent
if [ -f "$ROOT/apps/host-agent/dist/teardown.js" ]; then
  # The teardown validates the host agent's environment as the agent does, so it gets the agent's certificate paths.
  ensure_internal_certificates
  read -r -a host_agent_env <<< "$(app_env_of host-agent)"
  env "${host_agent_env[@]}" node "$ROOT/apps/host-agent/dist/teardown.js" || log "host teardown reported problems (see above)"
fi
# After every app: none of them may lose NATS while it still runs. Its JetStream store ($KILN_STATE/nats) stays.
stop_stack_nats
stop_stack_redis
rm -f "$KILN_STATE/dev.env"
# The gateway took its TLS listener with it; the local CA and certificate ($KILN_STATE/tls) stay for the next up, so
# a CA a developer has trusted keeps working.
log "stopped"
