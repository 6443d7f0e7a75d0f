#!/usr/bin/env bash
# `npm run down`: stops everything `npm run up` started and removes what it created
# (sandbox VMs, network slots, disk layers; a fleet's agent namespaces, links and control address); images, the
# agents' data dirs (their host credentials) and the database stay for next time.
# shellcheck source=apps.sh
source "$(dirname "${BASH_SOURCE[0]}")/apps.sh"

# Every host agent this state dir may have (known_agent_apps), whatever layout the last `up` chose.
KILN_AGENTS=$(cat "$KILN_STATE/agents" 2>/dev/null || echo 1)
[[ "$KILN_AGENTS" =~ ^[1-9][0-9]*$ ]] && [ "$KILN_AGENTS" -le "$FLEET_MAX_AGENTS" ] || KILN_AGENTS=1
export KILN_AGENTS
stack_env
for app in gateway template-builder host-monitor scheduler; do stop_app "$app"; done
# A host agent leaves VMs running across its own restarts by design; `down` removes them.
read -r -a agents <<< "$(known_agent_apps | tr '\n' ' ')"
for app in "${agents[@]}"; do stop_app "$app"; done
if [ -f "$ROOT/apps/host-agent/dist/teardown.js" ]; then
  # The teardown validates the host agent's environment as the agent does, so it gets the agent's certificate paths.
  ensure_internal_certificates
  for app in "${agents[@]}"; do teardown_agent "$app"; done
fi
# After every app: none of them may lose NATS while it still runs. Its JetStream store ($KILN_STATE/nats) stays.
stop_stack_nats
stop_stack_redis
# The fleet's namespaces go once nothing runs in them (a namespace outlives its name while a process is inside).
fleet_remove
rm -f "$KILN_STATE/dev.env"
# The gateway took its TLS listener with it; the local CA and certificate ($KILN_STATE/tls) stay for the next up, so
# a CA a developer has trusted keeps working.
log "stopped"
