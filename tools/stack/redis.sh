#!/usr/bin/env bash
# The dev stack's own Redis: a redis-server (Debian package redis-server) on its own port (KILN_REDIS_PORT, default
# 6380), requiring the password generated once into $KILN_STATE/secrets.env (KILN_REDIS_PASSWORD), with its config,
# pid file, log and (empty: no persistence) data dir under $KILN_STATE/redis. Started by `npm run up`, stopped by
# `npm run down`; the machine's Redis on 6379 (tests, other engineers) is left alone. Sourced by apps.sh; needs
# lib.sh's log, die and port_open.

KILN_REDIS_PORT=${KILN_REDIS_PORT:-6380}

stack_redis_dir() { echo "$KILN_STATE/redis"; }

# The pid of the stack's redis-server if it runs (its pid file names a live redis-server), else nothing.
stack_redis_pid() {
  local pidfile pid
  pidfile="$(stack_redis_dir)/redis.pid"
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q redis-server "/proc/$pid/comm" 2>/dev/null && echo "$pid"
  return 0
}

# PONG when the stack's Redis answers with its password. REDISCLI_AUTH keeps the password off the command line.
stack_redis_ping() {
  REDISCLI_AUTH="$KILN_REDIS_PASSWORD" redis-cli --no-auth-warning -h 127.0.0.1 -p "$KILN_REDIS_PORT" ping 2>/dev/null
}

# Starts the stack's Redis unless it already runs and answers with the current password. The password goes in a
# 0600 config file, never on a command line (ps would show it to every user).
ensure_stack_redis() {
  [ -n "${KILN_REDIS_PASSWORD:-}" ] || die "KILN_REDIS_PASSWORD is not set (stack_env generates it into $KILN_STATE/secrets.env)"
  local dir conf pid
  dir=$(stack_redis_dir)
  conf="$dir/redis.conf"
  pid=$(stack_redis_pid)
  if [ -n "$pid" ]; then
    [ "$(stack_redis_ping)" = PONG ] && return 0
    log "restarting the stack's Redis (pid $pid): it does not answer on 127.0.0.1:$KILN_REDIS_PORT with the current password"
    stop_stack_redis
  fi
  port_open "$KILN_REDIS_PORT" && die "127.0.0.1:$KILN_REDIS_PORT is taken by something else: set KILN_REDIS_PORT to a free port for the stack's Redis"
  (
    umask 077
    mkdir -p "$dir"
    chmod 700 "$dir"
    cat > "$conf.tmp" <<CONF
# Written by tools/stack/redis.sh on every start; the password is in $KILN_STATE/secrets.env.
bind 127.0.0.1
protected-mode yes
port $KILN_REDIS_PORT
requirepass $KILN_REDIS_PASSWORD
daemonize yes
pidfile $dir/redis.pid
logfile $dir/redis.log
dir $dir
save ""
appendonly no
CONF
    mv "$conf.tmp" "$conf"
  )
  log "starting the stack's Redis on 127.0.0.1:$KILN_REDIS_PORT (password in $KILN_STATE/secrets.env)"
  redis-server "$conf" || die "redis-server did not start (see $dir/redis.log)"
  for _ in $(seq 1 100); do
    [ "$(stack_redis_ping)" = PONG ] && return 0
    sleep 0.1
  done
  die "the stack's Redis did not answer on 127.0.0.1:$KILN_REDIS_PORT (see $dir/redis.log)"
}

# Stops the stack's Redis (SIGTERM, then SIGKILL after 10 s) and removes its pid file; the config and log stay.
stop_stack_redis() {
  local pid
  pid=$(stack_redis_pid)
  if [ -n "$pid" ]; then
    log "stopping the stack's Redis (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$(stack_redis_dir)/redis.pid"
}
