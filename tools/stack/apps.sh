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

RUN_DIR=${RUN_DIR:-$KILN_STATE/run}
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

stack_env() {
  local secrets="$KILN_STATE/secrets.env"
  mkdir -p "$KILN_STATE"
  # Each secret is generated once; a secrets file from an older checkout gains the ones it lacks. The umask is set
  # in a subshell only: the apps started from this shell must not inherit it (their directories set their own modes).
  (
    umask 077
    touch "$secrets"
    chmod 600 "$secrets"
    grep -q '^HOST_REGISTRATION_TOKEN=' "$secrets" || echo "HOST_REGISTRATION_TOKEN=$(random_secret 24)" >> "$secrets"
    grep -q '^KILN_SANDBOX_TOKEN_KEY=' "$secrets" || echo "KILN_SANDBOX_TOKEN_KEY=$(random_secret 48)" >> "$secrets"
    grep -q '^KILN_REDIS_PASSWORD=' "$secrets" || echo "KILN_REDIS_PASSWORD=$(random_secret 32)" >> "$secrets"
    ensure_nats_secrets "$secrets"
  )
  set -a
  # shellcheck disable=SC1090
  source "$secrets"
  DATABASE_URL=${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/kiln}
  # The stack's own authenticated NATS (nats.sh), not the machine's anonymous one.
  KILN_NATS_PORT=${KILN_NATS_PORT:-4223}
  NATS_URL=nats://127.0.0.1:$KILN_NATS_PORT
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
  local dir="$KILN_STATE/internal-tls" addresses=127.0.0.1,localhost
  case ",$addresses," in *",${KILN_HOST_ADDRESS:-127.0.0.1},"*) ;; *) addresses="$addresses,$KILN_HOST_ADDRESS" ;; esac
  ensure_internal_tls "$dir" "$addresses" scheduler gateway host-agent template-builder || die "could not make the internal certificates in $dir"
  export KILN_INTERNAL_CA_FILE="$dir/ca.pem"
}

# The internal certificate and key of an app that has one (start_app), as env assignments.
internal_tls_env_of() {
  case $1 in
    scheduler | gateway | host-agent | template-builder)
      [ -n "${KILN_INTERNAL_CA_FILE:-}" ] || return 0
      local dir
      dir=$(dirname "$KILN_INTERNAL_CA_FILE")
      echo "KILN_INTERNAL_CERT_FILE=$dir/$1.pem" "KILN_INTERNAL_KEY_FILE=$dir/$1-key.pem"
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
  (cd "$ROOT" && find "apps/$1/dist" libs/*/dist -type f \( -name '*.js' -o -name '*.cjs' -o -name '*.mjs' -o -name '*.node' \) \
    -print0 2>/dev/null | LC_ALL=C sort -z | xargs -0 -r sha256sum | sha256sum | cut -c1-16)
}

# The variables one app gets beside the shared stack environment (NAME=value words): its own HTTP port, internal
# certificate and NATS user. Its helpers (the host agent's teardown) run with the same, so they validate as it does.
app_env_of() {
  local app=$1
  echo "$(internal_tls_env_of "$app") $(nats_env_of "$app") HTTP_PORT=${HEALTH_PORT[$app]}"
}

start_app() {
  local app=$1 build
  mkdir -p "$RUN_DIR"
  build=$(app_build_id "$app")
  if app_running "$app"; then
    if [ "$(cat "$RUN_DIR/$app.build" 2>/dev/null)" = "$build" ]; then
      log "$app already running (pid $(cat "$RUN_DIR/$app.pid"))"
      return
    fi
    # An app left running by an earlier `up` would otherwise keep serving the code it was started with.
    log "restarting $app: its build changed since it started"
    stop_app "$app"
  fi
  # setsid: each app leads its own session so `down` can signal exactly what it started.
  local own_env
  read -r -a own_env <<< "$(app_env_of "$app")"
  env "${own_env[@]}" setsid node "$ROOT/apps/$app/dist/main.js" >>"$RUN_DIR/$app.log" 2>&1 < /dev/null &
  echo $! > "$RUN_DIR/$app.pid"
  echo "$build" > "$RUN_DIR/$app.build"
}

wait_healthy() {
  local app=$1 port=${HEALTH_PORT[$1]} deadline=$((SECONDS + ${2:-180}))
  while [ $SECONDS -lt $deadline ]; do
    if ! kill -0 "$(cat "$RUN_DIR/$app.pid" 2>/dev/null)" 2>/dev/null; then
      tail -n 20 "$RUN_DIR/$app.log" >&2
      die "$app exited during start-up (log: $RUN_DIR/$app.log)"
    fi
    if curl -fs -o /dev/null "http://127.0.0.1:$port/health"; then return 0; fi
    sleep 0.5
  done
  tail -n 20 "$RUN_DIR/$app.log" >&2
  die "$app did not become healthy within ${2:-180}s (log: $RUN_DIR/$app.log)"
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
  rm -f "$pidfile" "$RUN_DIR/$app.build"
}
