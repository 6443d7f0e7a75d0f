#!/usr/bin/env bash
# `npm run up`: brings the whole Kiln stack up on this machine and prints how to use it.
#
#   npm run up [-- --agents N]
#
# --agents N (1..9, default 1): how many host agents. 1 is the single agent in the root network namespace on
# 127.0.0.1. N > 1 is a fleet on this one machine: agent i in network namespace kilnfl<i>, reached at 10.239.<i>.2,
# host id <KILN_HOST_ID>-a<i> (KILN_HOST_ID defaults to the short hostname), each with its own data dir, slot block
# and a 1/N share of the machine (fleet.sh, apps.sh). Running `up` again with another N replaces the agents
# (those left out are stopped and torn down, with their sandboxes). `npm run down` removes them all.
# shellcheck source=apps.sh
source "$(dirname "${BASH_SOURCE[0]}")/apps.sh"

usage() { echo "usage: npm run up [-- --agents N]   (N: 1..$FLEET_MAX_AGENTS host agents, default 1)" >&2; exit 2; }
KILN_AGENTS=1
while [ $# -gt 0 ]; do
  case $1 in
    --agents) [ $# -ge 2 ] || usage; KILN_AGENTS=$2; shift 2 ;;
    --agents=*) KILN_AGENTS=${1#--agents=}; shift ;;
    -h | --help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
[[ "$KILN_AGENTS" =~ ^[1-9][0-9]*$ ]] && [ "$KILN_AGENTS" -le "$FLEET_MAX_AGENTS" ] || { echo "--agents must be 1..$FLEET_MAX_AGENTS" >&2; usage; }
export KILN_AGENTS

ensure_root
ensure_apt_packages
ensure_loopback_names
ensure_services
ensure_npm
generate_and_build
build_guest_image
stack_env
# Before the teardowns below: they validate an agent's environment, certificate paths included.
ensure_internal_certificates

# Agents of an earlier layout that this one does not have (the root-namespace agent when a fleet starts, fleet
# agents beyond N) stop first, and their VMs, slots and namespaces go with them.
read -r -a layout_agents <<< "$(agent_apps | tr '\n' ' ')"
retired_host_ids=()
for app in $(known_agent_apps); do
  case " ${layout_agents[*]} " in *" $app "*) continue ;; esac
  index=$(fleet_index_of "$app")
  if app_running "$app" || [ -f "$RUN_DIR/$app.pid" ] || { [ -n "$index" ] && [ -e "/run/netns/$(fleet_netns "$index")" ]; }; then
    log "retiring $app: this layout has ${#layout_agents[@]} host agent(s)"
    retired_host_ids+=("$(agent_host_id "$app")")
    stop_app "$app"
    teardown_agent "$app"
    [ -z "$index" ] || fleet_remove_agent "$index"
  fi
done
if fleet_mode; then
  log "fleet of $KILN_AGENTS host agents: network namespaces $(fleet_netns 1)..$(fleet_netns "$KILN_AGENTS"), control address $(fleet_control_address)"
  fleet_ensure "$KILN_AGENTS"
else
  # No fleet agent is left: the fleet's control address and egress rule go too.
  fleet_remove
fi
echo "$KILN_AGENTS" > "$KILN_STATE/agents"

ensure_dev_certificate
ensure_database "$(database_name)"
ensure_stack_nats
ensure_stack_redis

# A gateway an earlier `up` left running may predate the TLS listener, or serve another domain or certificate. It
# keeps no state, so it is restarted rather than left serving the old configuration.
if app_running gateway && ! gateway_tls_answers; then
  log "restarting the gateway: it does not serve https://api.$KILN_DOMAIN:$TLS_PORT with the current certificate"
  stop_app gateway
fi

# Every app, with the layout's host agents in place of `host-agent`.
read -r -a stack_apps <<< "$(for app in "${APPS[@]}"; do if [ "$app" = host-agent ]; then agent_apps; else echo "$app"; fi; done | tr '\n' ' ')"
for app in "${stack_apps[@]}"; do
  log "starting $app"
  start_app "$app"
  # The host monitor answers the host agents' registrations: it must be up before they start.
  if [ "$app" = host-monitor ]; then wait_healthy host-monitor; fi
done
for app in "${stack_apps[@]}"; do wait_healthy "$app" 600; done
check_domain_mode

log "seeding the dev team, API key and templates"
node "$ROOT/tools/stack/seed-dev.cjs" > "$KILN_STATE/dev.env.tmp"
mv "$KILN_STATE/dev.env.tmp" "$KILN_STATE/dev.env"
# shellcheck disable=SC1091
source "$KILN_STATE/dev.env"
# A sandbox can be placed once its host has registered with the host monitor and the schedulers' fleet view holds it
# ready; the agent registers once it has probed KVM, which takes seconds. Usage is printed only then.
read -r -a agent_host_ids <<< "$(for app in "${stack_apps[@]}"; do is_agent_app "$app" && agent_host_id "$app"; done | tr '\n' ' ')"
wait_hosts_ready "${agent_host_ids[@]}"
# Retired agents leave the fleet (the monitor forgets them and revokes their credentials) instead of staying listed dead.
for host in "${retired_host_ids[@]}"; do
  curl -fs -o /dev/null --max-time 10 -X DELETE -H "X-Admin-Token: $KILN_ADMIN_TOKEN" "http://127.0.0.1:${HEALTH_PORT[gateway]}/nodes/$host" &&
    log "removed retired host $host from the fleet"
done

https_port=""
[ "$TLS_PORT" = 443 ] || https_port=":$TLS_PORT"
trust=""
[ -n "${KILN_DEV_CA_FILE:-}" ] && trust=" (NODE_EXTRA_CA_CERTS makes node trust the local CA, ${KILN_DEV_CA_FILE#"$PWD/"})"
state=${KILN_STATE#"$PWD/"}
cat <<MSG

Kiln is up.
  API (E2B-compatible):  $E2B_API_URL      (OpenAPI: $E2B_API_URL/openapi.json)
  Sandbox traffic:       $E2B_SANDBOX_URL
  Domain (HTTPS):        https://api.$KILN_DOMAIN$https_port and https://{port}-{sandboxId}.$KILN_DOMAIN$https_port
  API key:               $E2B_API_KEY
  Logs:                  $RUN_DIR/<app>.log
  Admin API:             $E2B_API_URL/nodes with header X-Admin-Token: \$KILN_ADMIN_TOKEN (in $state/dev.env)
  Host agents:
$(for app in $(agent_apps); do
  printf '    %-24s %-28s %s\n' "$(agent_host_id "$app")" "http://$(app_http_address "$app"):$(app_http_port "$app")" "$RUN_DIR/$app.log"
done)

Use it with the official e2b SDK:
  set -a; source $state/dev.env; set +a
  node -e "const {Sandbox}=require('e2b'); Sandbox.create('base').then(async s=>{console.log((await s.commands.run('uname -a')).stdout); await s.kill()})"

Or by domain alone, as E2B's own cloud is used: E2B_DOMAIN and E2B_API_KEY over HTTPS$trust:
  set -a; source $state/dev.env; set +a; unset E2B_API_URL E2B_SANDBOX_URL
  node -e "const {Sandbox}=require('e2b'); Sandbox.create('base').then(async s=>{console.log(s.getHost(8080)); console.log((await s.commands.run('uname -a')).stdout); await s.kill()})"
MSG
[ "$TLS_PORT" = 443 ] || echo "  (TLS_PORT is $TLS_PORT: SDKs call https://api.<domain> on port 443 only, so domain mode needs TLS_PORT=443.)"
echo
fleet_mode && echo "Each agent runs in its own network namespace: e.g. ip netns exec $(fleet_netns 1) ip addr. One agent again: npm run up"
echo "Stop everything with: npm run down"
