#!/usr/bin/env bash
# Starting and stopping the Kiln apps as background processes with logs and pid
# files under a run folder. Sourced by up.sh, down.sh and the e2e test harness.
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

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
  )
  set -a
  # shellcheck disable=SC1090
  source "$secrets"
  DATABASE_URL=${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/kiln}
  NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
  REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
  NODE_ENV=${NODE_ENV:-production}
  KILN_HOST_ID=${KILN_HOST_ID:-$(hostname -s)}
  # seed-dev.cjs reads these to find the state dir and to print the URLs of dev.env.
  GATEWAY_HTTP_PORT=${HEALTH_PORT[gateway]}
  export KILN_STATE
  set +a
}

# The database named by DATABASE_URL (the last path segment, without query string).
database_name() {
  local name=${DATABASE_URL##*/}
  echo "${name%%\?*}"
}

start_app() {
  local app=$1
  mkdir -p "$RUN_DIR"
  if [ -f "$RUN_DIR/$app.pid" ] && kill -0 "$(cat "$RUN_DIR/$app.pid")" 2>/dev/null; then
    log "$app already running (pid $(cat "$RUN_DIR/$app.pid"))"
    return
  fi
  # setsid: each app leads its own session so `down` can signal exactly what it started.
  HTTP_PORT=${HEALTH_PORT[$app]} setsid node "$ROOT/apps/$app/dist/main.js" >>"$RUN_DIR/$app.log" 2>&1 < /dev/null &
  echo $! > "$RUN_DIR/$app.pid"
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
  rm -f "$pidfile"
}
