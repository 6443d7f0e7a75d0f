#!/usr/bin/env bash
# Starting and stopping the Kiln apps as background processes with logs and pid
# files under a run folder. Sourced by up.sh, down.sh and the e2e test harness.
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=internal-tls.sh
source "$(dirname "${BASH_SOURCE[0]}")/internal-tls.sh"
# shellcheck source=nats.sh
source "$(dirname "${BASH_SOURCE[0]}")/nats.sh"
# shellcheck source=redis.sh
source "$(dirname "${BASH_SOURCE[0]}")/redis.sh"
# shellcheck source=fleet.sh
source "$(dirname "${BASH_SOURCE[0]}")/fleet.sh"
# The host agents run fleet.sh as a script (fleet_exec): it must name the same fleet as this shell.
export FLEET_NETNS_PREFIX FLEET_LINK_PREFIX FLEET_NET FLEET_AGENT_PREFIX

RUN_DIR=${RUN_DIR:-$KILN_STATE/run}
# `host-agent` stands for the layout's host agents (agent_apps): one in the root namespace, or a fleet.
APPS=(scheduler host-monitor template-builder host-agent gateway)

# Every app reads its HTTP port from HTTP_PORT, so one shared environment cannot carry five of them: the stack
# takes <APP>_HTTP_PORT (e.g. GATEWAY_HTTP_PORT) and hands each app its own as HTTP_PORT. The other listeners
# have names of their own in the apps' env classes (SANDBOX_PROXY_PORT, GRPC_PORT, PROXY_PORT,
# KILN_EGRESS_PROXY_PORT) and pass through unchanged. A second stack beside the dev one sets all of them.
declare -A HEALTH_PORT=(
  [gateway]=${GATEWAY_HTTP_PORT:-3000}
  [scheduler]=${SCHEDULER_HTTP_PORT:-3001}
  [template-builder]=${TEMPLATE_BUILDER_HTTP_PORT:-3002}
  [host-monitor]=${HOST_MONITOR_HTTP_PORT:-3003}
  [host-agent]=${HOST_AGENT_HTTP_PORT:-3004}
)

random_secret() { head -c "$1" /dev/urandom | base64 | tr -d '/+=\n'; }

# How many host agents the stack runs (`npm run up -- --agents N`, up.sh sets KILN_AGENTS). 1: the one host agent
# in the root network namespace on 127.0.0.1, as always. N > 1: a fleet, agent i (1..N) in network namespace
# kilnfl<i> (fleet.sh) as host <KILN_HOST_ID>-a<i>. A command that does not choose (down) gets the layout the last
# `up` recorded in $KILN_STATE/agents.
agent_count() {
  local count=${KILN_AGENTS:-$(cat "$KILN_STATE/agents" 2>/dev/null || echo 1)}
  [[ "$count" =~ ^[1-9][0-9]*$ ]] && [ "$count" -le "$FLEET_MAX_AGENTS" ] || die "--agents must be 1..$FLEET_MAX_AGENTS, got '$count'"
  echo "$count"
}

fleet_mode() { [ "$(agent_count)" -gt 1 ]; }

# The app names of the layout's host agents: host-agent, or host-agent-a1 .. host-agent-aN.
agent_apps() {
  local count i
  count=$(agent_count)
  if [ "$count" = 1 ]; then echo host-agent; return; fi
  for ((i = 1; i <= count; i++)); do echo "host-agent-a$i"; done
}

is_agent_app() { [[ "$1" == host-agent || "$1" =~ ^host-agent-a[1-9][0-9]*$ ]]; }

# A fleet agent's index (host-agent-a2 → 2); nothing for the root-namespace agent.
fleet_index_of() { [[ "$1" =~ ^host-agent-a([1-9][0-9]*)$ ]] && echo "${BASH_REMATCH[1]}"; return 0; }

fleet_host_id() { echo "$KILN_HOST_ID-a$1"; }
fleet_data_dir() { echo "$KILN_DATA_DIR/fleet/a$1"; }

# The host id of an agent app.
agent_host_id() {
  local i
  i=$(fleet_index_of "$1")
  if [ -n "$i" ]; then fleet_host_id "$i"; else echo "$KILN_HOST_ID"; fi
}

# Where an app's HTTP port (health, metrics) answers from this shell: a fleet agent's on its namespace's address.
app_http_address() {
  local i
  i=$(fleet_index_of "$1")
  if [ -n "$i" ]; then fleet_agent_address "$i"; else echo 127.0.0.1; fi
}

app_http_port() {
  local i
  i=$(fleet_index_of "$1")
  if [ -n "$i" ]; then echo $((${HEALTH_PORT[host-agent]} + 10 * i)); else echo "${HEALTH_PORT[$1]}"; fi
}

# The settings that make fleet agent i a host of its own (NAME=value words): its address, ports (the root agent's
# + 10·i: unique on the machine although each namespace has its own), data dir, network names and slot block, VMM
# uids and cgroup, and a 1/N share of the machine, so N agents do not promise N times its memory.
fleet_agent_env() {
  local i=$1 count vcpus memory_mib
  count=$(agent_count)
  vcpus=$(($(nproc) * 8 / count))
  [ "$vcpus" -ge 1 ] || vcpus=1
  memory_mib=$(awk -v n="$count" '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.8 / n }' /proc/meminfo)
  echo "GRPC_PORT=$((${GRPC_PORT:-50051} + 10 * i)) PROXY_PORT=$((${PROXY_PORT:-5007} + 10 * i))" \
    "KILN_EGRESS_PROXY_PORT=$((${KILN_EGRESS_PROXY_PORT:-5008} + 10 * i))" \
    "KILN_HOST_ID=$(fleet_host_id "$i") KILN_HOST_ADDRESS=$(fleet_agent_address "$i")" \
    "KILN_DATA_DIR=$(fleet_data_dir "$i") KILN_NETWORK_PREFIX=$FLEET_AGENT_PREFIX$i KILN_SLOT_CIDR=10.$((240 + i)).0.0/16" \
    "KILN_VMM_UID_BASE=$((${KILN_VMM_UID_BASE:-200000} + 65536 * i)) KILN_VMM_UID_COUNT=65536 KILN_VMM_CGROUP_PARENT=kiln-$FLEET_AGENT_PREFIX$i" \
    "KILN_CAPACITY_VCPUS=$vcpus KILN_CAPACITY_MEMORY_MIB=$memory_mib KILN_CLONE_POOL_SIZE=1"
}

# A fleet agent's data dir: its own sandboxes, clones, layers, uid leases and host credential; the guest images, the
# package cache and the built-in templates of $KILN_DATA_DIR are shared (links, read by every agent), as the e2e
# harness's agent shares them (tools/e2e/harness/stack-harness.ts). Templates an agent builds are its own.
prepare_fleet_data_dir() {
  local dir=$1 shared name
  mkdir -p "$dir/templates"
  for shared in images cache; do
    [ -e "$dir/$shared" ] || [ ! -e "$KILN_DATA_DIR/$shared" ] || ln -s "$KILN_DATA_DIR/$shared" "$dir/$shared"
  done
  for shared in "$KILN_DATA_DIR"/templates/*; do
    [ -d "$shared" ] || continue
    name=$(basename "$shared")
    [ -e "$dir/templates/$name" ] || ln -s "$shared" "$dir/templates/$name"
  done
  # Links to templates the shared store no longer has.
  find "$dir/templates" -maxdepth 1 -xtype l -delete
}

stack_env() {
  local secrets="$KILN_STATE/secrets.env"
  mkdir -p "$KILN_STATE"
  # Each secret is generated once; a secrets file from an older checkout gains the ones it lacks. The umask is set
  # in a subshell only: the apps started from this shell must not inherit it (their directories set their own modes).
  (
    umask 077
    touch "$secrets"
    chmod 600 "$secrets"
    grep -q '^KILN_SANDBOX_TOKEN_KEY=' "$secrets" || echo "KILN_SANDBOX_TOKEN_KEY=$(random_secret 48)" >> "$secrets"
    grep -q '^KILN_REDIS_PASSWORD=' "$secrets" || echo "KILN_REDIS_PASSWORD=$(random_secret 32)" >> "$secrets"
    # The host monitor's key for one-time join tokens (join-token.cjs mints each agent's with it at every start).
    grep -q '^HOST_JOIN_TOKEN_KEY=' "$secrets" || echo "HOST_JOIN_TOKEN_KEY=$(random_secret 48)" >> "$secrets"
    # The gateway's admin API token (X-Admin-Token on /nodes); seed-dev.cjs puts it into dev.env.
    grep -q '^KILN_ADMIN_TOKEN=' "$secrets" || echo "KILN_ADMIN_TOKEN=$(random_secret 48)" >> "$secrets"
    # Each host agent's key for its sealed sandbox records (its KILN_HOST_STATE_KEY): the layout's agents, and any
    # an earlier layout left (their teardown runs with the same environment).
    local app variable
    for app in $( (agent_apps; known_agent_apps) | awk '!seen[$0]++'); do
      variable=$(state_key_variable "$app")
      grep -q "^$variable=" "$secrets" || echo "$variable=$(random_secret 48)" >> "$secrets"
    done
    ensure_nats_secrets "$secrets"
  )
  set -a
  # shellcheck disable=SC1090
  source "$secrets"
  DATABASE_URL=${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/kiln}
  # The stack's own authenticated NATS (nats.sh), not the machine's anonymous one. A fleet's agents reach it from
  # their namespaces at the fleet's control address (fleet.sh), so it listens there instead of on loopback.
  KILN_NATS_PORT=${KILN_NATS_PORT:-4223}
  KILN_NATS_HOST=127.0.0.1
  if fleet_mode; then KILN_NATS_HOST=$(fleet_control_address); fi
  NATS_URL=nats://$KILN_NATS_HOST:$KILN_NATS_PORT
  # The stack's own password-protected Redis (redis.sh), not the machine's open one on 6379.
  KILN_REDIS_PORT=${KILN_REDIS_PORT:-6380}
  REDIS_URL=redis://:$KILN_REDIS_PASSWORD@127.0.0.1:$KILN_REDIS_PORT
  NODE_ENV=${NODE_ENV:-production}
  KILN_HOST_ID=${KILN_HOST_ID:-$(hostname -s)}
  # seed-dev.cjs reads these to find the state dir and to print the URLs of dev.env.
  GATEWAY_HTTP_PORT=${HEALTH_PORT[gateway]}
  # The domain E2B SDKs are given (E2B_DOMAIN): the gateway's TLS listener serves api.<domain> and
  # <port>-<sandboxId>.<domain>, and create/get answer it as the sandbox domain. Two labels or more: TLS clients
  # refuse a wildcard certificate over one (*.localhost). Under .localhost it resolves to loopback (ensure_loopback_names).
  KILN_DOMAIN=${KILN_DOMAIN:-kiln.localhost}
  TLS_PORT=${TLS_PORT:-443}
  export KILN_STATE
  set +a
}

# The local CA and the wildcard certificate of the gateway's TLS listener, under $KILN_STATE/tls: made once, the CA
# (key 0600) kept across `down`. The CA may only sign names under KILN_DOMAIN (a critical name constraint), so
# trusting it (NODE_EXTRA_CA_CERTS) vouches for nothing else even if its key leaks; a new domain gets a new CA. The
# certificate is renewed when it no longer verifies, covers another domain or has under 30 days left; the gateway
# re-reads it every minute. An operator's own TLS_CERT_FILE/TLS_KEY_FILE are left alone.
ensure_dev_certificate() {
  local dir="$KILN_STATE/tls" domain=$KILN_DOMAIN ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  if [ -n "${TLS_CERT_FILE:-}" ] && [ "$TLS_CERT_FILE" != "$dir/wildcard.pem" ]; then
    log "TLS listener: using TLS_CERT_FILE=$TLS_CERT_FILE"
    return 0
  fi
  mkdir -p "$dir"
  if [ ! -s "$dir/ca.pem" ] || [ ! -s "$dir/ca-key.pem" ] || [ "$(cat "$dir/ca.domain" 2>/dev/null)" != "$domain" ]; then
    log "making a local CA for *.$domain ($dir/ca.pem)"
    (
      umask 077
      openssl req -x509 "${ec[@]}" -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" -days 3650 \
        -subj "/CN=Kiln dev CA for $domain ($(hostname -s))" \
        -addext 'basicConstraints=critical,CA:TRUE,pathlen:0' -addext 'keyUsage=critical,keyCertSign,cRLSign' \
        -addext "nameConstraints=critical,permitted;DNS:$domain,excluded;IP:0.0.0.0/0.0.0.0,excluded;IP:0:0:0:0:0:0:0:0/0:0:0:0:0:0:0:0" \
        2>/dev/null
    ) || die "openssl could not make the dev CA in $dir"
    chmod 600 "$dir/ca-key.pem"
    chmod 644 "$dir/ca.pem"
    echo "$domain" > "$dir/ca.domain"
    rm -f "$dir/wildcard.pem"
  fi
  if ! { [ -s "$dir/wildcard.pem" ] && [ -s "$dir/wildcard-key.pem" ] &&
    openssl verify -CAfile "$dir/ca.pem" "$dir/wildcard.pem" >/dev/null 2>&1 &&
    openssl x509 -in "$dir/wildcard.pem" -noout -checkend $((30 * 86400)) >/dev/null 2>&1 &&
    openssl x509 -in "$dir/wildcard.pem" -noout -checkhost "api.$domain" 2>/dev/null | grep -q 'does match'; }; then
    log "making the TLS certificate for *.$domain and $domain ($dir/wildcard.pem)"
    printf '%s\n' 'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature' 'extendedKeyUsage=serverAuth' \
      'authorityKeyIdentifier=keyid' "subjectAltName=DNS:*.$domain,DNS:$domain" > "$dir/wildcard.ext"
    (
      umask 077
      openssl req -new "${ec[@]}" -keyout "$dir/wildcard-key.pem" -out "$dir/wildcard.csr" -subj "/CN=*.$domain" 2>/dev/null &&
        openssl x509 -req -in "$dir/wildcard.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" -CAcreateserial \
          -days 397 -extfile "$dir/wildcard.ext" -out "$dir/wildcard.pem" 2>/dev/null
    ) || die "openssl could not make the TLS certificate in $dir"
    chmod 644 "$dir/wildcard.pem"
    rm -f "$dir/wildcard.csr" "$dir/wildcard.ext"
  fi
  export TLS_CERT_FILE="$dir/wildcard.pem" TLS_KEY_FILE="$dir/wildcard-key.pem" KILN_DEV_CA_FILE="$dir/ca.pem"
}

# The internal plane's mTLS (host agent gRPC and proxy; libs/config/src/internal-tls.ts): a CA of its own (key 0600)
# and the scheduler's, gateway's, template builder's and host agent's certificates under $KILN_STATE/internal-tls,
# made once and kept across `down`, each renewed by ensure_internal_tls (internal-tls.sh) when it nears expiry. The CA is separate from
# the TLS listener's: that one is trusted by SDK users, this one vouches only for Kiln's own services.
ensure_internal_certificates() {
  local dir="$KILN_STATE/internal-tls" addresses=127.0.0.1,localhost app i
  case ",$addresses," in *",${KILN_HOST_ADDRESS:-127.0.0.1},"*) ;; *) addresses="$addresses,$KILN_HOST_ADDRESS" ;; esac
  # One certificate for every host agent: it names each fleet agent's address.
  for app in $(agent_apps); do
    i=$(fleet_index_of "$app")
    [ -z "$i" ] || addresses="$addresses,$(fleet_agent_address "$i")"
  done
  ensure_internal_tls "$dir" "$addresses" scheduler gateway host-agent template-builder || die "could not make the internal certificates in $dir"
  export KILN_INTERNAL_CA_FILE="$dir/ca.pem"
}

# The internal certificate and key of an app that has one (start_app), as env assignments.
internal_tls_env_of() {
  local service=$1
  is_agent_app "$service" && service=host-agent
  case $service in
    scheduler | gateway | host-agent | template-builder)
      [ -n "${KILN_INTERNAL_CA_FILE:-}" ] || return 0
      local dir
      dir=$(dirname "$KILN_INTERNAL_CA_FILE")
      echo "KILN_INTERNAL_CERT_FILE=$dir/$service.pem" "KILN_INTERNAL_KEY_FILE=$dir/$service-key.pem"
      ;;
  esac
}

# After the gateway is up: api.<domain> resolves to loopback through the machine's resolver (only checked for a
# .localhost domain: any other needs DNS of its own) and the TLS listener answers there with the dev certificate.
check_domain_mode() {
  local api="api.$KILN_DOMAIN" address resolve=()
  if [[ "$KILN_DOMAIN" == *.localhost ]]; then
    address=$(getent ahostsv4 "$api" | awk '{ print $1; exit }')
    [ "$address" = 127.0.0.1 ] || die "$api resolves to '${address:-nothing}', not 127.0.0.1: the hosts line of /etc/nsswitch.conf needs myhostname (libnss-myhostname)"
  else
    resolve=(--resolve "$api:$TLS_PORT:127.0.0.1")
  fi
  local ca=()
  [ -n "${KILN_DEV_CA_FILE:-}" ] && ca=(--cacert "$KILN_DEV_CA_FILE")
  curl -s -o /dev/null --max-time 10 "${ca[@]}" "${resolve[@]}" "https://$api:$TLS_PORT/health" ||
    die "the gateway does not answer https://$api:$TLS_PORT (log: $RUN_DIR/gateway.log)"
}

# Does the gateway answer https://api.<domain>:<TLS_PORT> with a certificate the dev CA (or the system store) vouches
# for? Any HTTP status will do (a dependency outage is a 503): the handshake and the routing are what is checked.
# --resolve: the answer must not depend on the resolver, which ensure_loopback_names may only just have changed.
gateway_tls_answers() {
  local ca=()
  [ -n "${KILN_DEV_CA_FILE:-}" ] && ca=(--cacert "$KILN_DEV_CA_FILE")
  curl -s -o /dev/null --max-time 5 "${ca[@]}" --resolve "api.$KILN_DOMAIN:$TLS_PORT:127.0.0.1" "https://api.$KILN_DOMAIN:$TLS_PORT/health"
}

# The database named by DATABASE_URL (the last path segment, without query string).
database_name() {
  local name=${DATABASE_URL##*/}
  echo "${name%%\?*}"
}

app_running() { [ -f "$RUN_DIR/$1.pid" ] && kill -0 "$(cat "$RUN_DIR/$1.pid")" 2>/dev/null; }

# Identifies the code an app runs: the contents of its compiled JavaScript and native addons and the libs' (not
# mtimes: a rebuild re-emits some files unchanged).
app_build_id() {
  local app=$1
  is_agent_app "$app" && app=host-agent
  (cd "$ROOT" && find "apps/$app/dist" libs/*/dist -type f \( -name '*.js' -o -name '*.cjs' -o -name '*.mjs' -o -name '*.node' \) \
    -print0 2>/dev/null | LC_ALL=C sort -z | xargs -0 -r sha256sum | sha256sum | cut -c1-16)
}

# A host agent's secret variable in secrets.env for its KILN_HOST_STATE_KEY: HOST_AGENT_STATE_KEY,
# HOST_AGENT_A2_STATE_KEY.
state_key_variable() { local name=${1^^}; echo "${name//-/_}_STATE_KEY"; }

# The variables one app gets beside the shared stack environment (NAME=value words, no spaces): its own HTTP port,
# internal certificate and NATS user, and a host agent its state key (a fleet agent all of fleet_agent_env). Its
# helpers (the host agent's teardown) run with the same, so they validate as it does. Not the join token: that is
# minted at each start (start_app).
app_env_of() {
  local app=$1 words i variable
  words="$(internal_tls_env_of "$app") $(nats_env_of "$app") HTTP_PORT=$(app_http_port "$app")"
  if is_agent_app "$app"; then
    variable=$(state_key_variable "$app")
    [ -n "${!variable:-}" ] || die "$variable is not set (stack_env makes it in $KILN_STATE/secrets.env)"
    words="$words KILN_HOST_STATE_KEY=${!variable}"
    i=$(fleet_index_of "$app")
    [ -z "$i" ] || words="$words $(fleet_agent_env "$i")"
  fi
  echo "$words"
}

start_app() {
  local app=$1 build config i command=()
  mkdir -p "$RUN_DIR"
  build=$(app_build_id "$app")
  local own_env
  read -r -a own_env <<< "$(app_env_of "$app")"
  # What the app was started with beyond its build: its own settings and the shared NATS URL (a fleet moves it).
  config=$(printf '%s\n' "${own_env[@]}" "NATS_URL=$NATS_URL" | sha256sum | cut -c1-16)
  if app_running "$app"; then
    if [ "$(cat "$RUN_DIR/$app.build" 2>/dev/null)" = "$build" ] && [ "$(cat "$RUN_DIR/$app.config" 2>/dev/null)" = "$config" ]; then
      log "$app already running (pid $(cat "$RUN_DIR/$app.pid"))"
      return
    fi
    # An app left running by an earlier `up` would otherwise keep serving the code or settings it was started with.
    log "restarting $app: its build or settings changed since it started"
    stop_app "$app"
  fi
  local main=$app
  if is_agent_app "$app"; then
    main=host-agent
    # A fresh one-time join token at every start: used only while the agent has no stored host credential.
    own_env+=("KILN_JOIN_TOKEN=$(node "$ROOT/tools/stack/join-token.cjs" "$(agent_host_id "$app")")") || die "could not mint a join token for $app"
    i=$(fleet_index_of "$app")
    if [ -n "$i" ]; then
      prepare_fleet_data_dir "$(fleet_data_dir "$i")"
      # Into its namespace; every step execs, so the pid below is the agent's node process.
      command=(bash "$ROOT/tools/stack/fleet.sh" exec "$i" --)
    fi
  fi
  # setsid: each app leads its own session so `down` can signal exactly what it started.
  env "${own_env[@]}" setsid "${command[@]}" node "$ROOT/apps/$main/dist/main.js" >>"$RUN_DIR/$app.log" 2>&1 < /dev/null &
  echo $! > "$RUN_DIR/$app.pid"
  echo "$build" > "$RUN_DIR/$app.build"
  echo "$config" > "$RUN_DIR/$app.config"
}

# Runs a stopped host agent's teardown (apps/host-agent/dist/teardown.js: its VMs, slots, layers, cgroups), with the
# agent's environment and, for a fleet agent whose namespace still exists, in that namespace (its slot veths and
# firewall table are there).
teardown_agent() {
  local app=$1 i command=() agent_env
  [ -f "$ROOT/apps/host-agent/dist/teardown.js" ] || return 0
  read -r -a agent_env <<< "$(app_env_of "$app")"
  i=$(fleet_index_of "$app")
  if [ -n "$i" ]; then
    [ -d "$(fleet_data_dir "$i")" ] || [ -e "/run/netns/$(fleet_netns "$i")" ] || return 0
    [ -e "/run/netns/$(fleet_netns "$i")" ] && command=(bash "$ROOT/tools/stack/fleet.sh" exec "$i" --)
  fi
  env "${agent_env[@]}" "${command[@]}" node "$ROOT/apps/host-agent/dist/teardown.js" || log "host teardown of $app reported problems (see above)"
}

# Every host agent app this state dir may have: the root-namespace one, the recorded layout's, any with a pid file
# and any whose fleet namespace exists.
known_agent_apps() {
  local recorded i file
  recorded=$(cat "$KILN_STATE/agents" 2>/dev/null || echo 1)
  {
    echo host-agent
    if [[ "$recorded" =~ ^[0-9]+$ ]] && [ "$recorded" -gt 1 ]; then
      for ((i = 1; i <= recorded; i++)); do echo "host-agent-a$i"; done
    fi
    for file in "$RUN_DIR"/host-agent-a*.pid; do [ -e "$file" ] && basename "$file" .pid; done
    for i in $(fleet_existing_agents); do echo "host-agent-a$i"; done
  } | awk '!seen[$0]++'
}

wait_healthy() {
  local app=$1 port address deadline=$((SECONDS + ${2:-180}))
  port=$(app_http_port "$app")
  address=$(app_http_address "$app")
  while [ $SECONDS -lt $deadline ]; do
    if ! kill -0 "$(cat "$RUN_DIR/$app.pid" 2>/dev/null)" 2>/dev/null; then
      tail -n 20 "$RUN_DIR/$app.log" >&2
      die "$app exited during start-up (log: $RUN_DIR/$app.log)"
    fi
    if curl -fs -o /dev/null "http://$address:$port/health"; then return 0; fi
    sleep 0.5
  done
  tail -n 20 "$RUN_DIR/$app.log" >&2
  die "$app did not become healthy within ${2:-180}s (log: $RUN_DIR/$app.log)"
}

# Waits until the host monitor reports every given host `ready` (asked through the gateway's admin API, with the
# stack's KILN_ADMIN_TOKEN), so that `up` returns with a stack that can place sandboxes.
wait_hosts_ready() {
  local deadline=$((SECONDS + ${HOSTS_READY_TIMEOUT_SECONDS:-180})) host state pending
  while :; do
    pending=()
    for host in "$@"; do
      state=$(curl -fs --max-time 5 -H "X-Admin-Token: $KILN_ADMIN_TOKEN" "http://127.0.0.1:${HEALTH_PORT[gateway]}/nodes/$host" |
        node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{try{process.stdout.write(JSON.parse(s).kilnState||"")}catch{}})') || state=""
      [ "$state" = ready ] || pending+=("$host${state:+ ($state)}")
    done
    [ ${#pending[@]} = 0 ] && return 0
    if [ $SECONDS -ge $deadline ]; then
      die "host agents not ready with the host monitor within ${HOSTS_READY_TIMEOUT_SECONDS:-180}s: ${pending[*]} (logs: $RUN_DIR/host-agent*.log, $RUN_DIR/host-monitor.log)"
    fi
    sleep 0.5
  done
}

stop_app() {
  local app=$1 pidfile="$RUN_DIR/$1.pid" pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile" "$RUN_DIR/$app.build" "$RUN_DIR/$app.config"
}
