#!/usr/bin/env bash
# First-run check: what a new user on a fresh machine gets from the README's commands.
#
# Runs `npm run up` with a state dir and a data dir that do not exist yet, drives the README's SDK example, runs
# `npm run up` again (idempotent: same key, still works), then `npm run down` and asserts nothing it made is
# left. CI machines keep `.kiln/` and /var/lib/kiln from earlier runs, so without this check a stack that only
# works on a prepared machine (the umask 077 leak of apps.sh: a 500 on the first create) goes unnoticed.
#
# The stack under test is isolated from a developer's stack and from the e2e suites' (so it may run beside them):
# its own ports, network prefix and slot CIDR, host id, Postgres database, and the stack's own NATS and Redis. Only
# the Debian package download cache is shared (KILN_DEB_CACHE): downloads, never built images or templates.
#
# Rounds (KILN_FIRST_RUN_UMASKS, default "inherit 077"): a full round under the caller's umask (CI's 022), and a
# shorter one (up, example, down) under umask 077 as a user's shell may set it: the stack must set the modes
# that matter itself. Prints `first-run: N passed, N failed`; exits non-zero on any failure; always cleans up.
#
# Environment (all optional):
#   KILN_FIRST_RUN_UMASKS     rounds to run, e.g. "inherit" or "077" (default "inherit 077")
#   KILN_FIRST_RUN_PREFIX     network prefix (default kfr), KILN_FIRST_RUN_SLOT_CIDR (default 10.209.0.0/24)
#   KILN_DEB_CACHE            shared package download cache (default /var/lib/kiln/cache/debs)
#   KILN_FIRST_RUN_KEEP       1: keep the temp dirs and logs (the stack is still torn down)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
UP_TIMEOUT=900      # a fresh `up`: build (no-op when built), guest image (~45 s), apps, template snapshot
DOWN_TIMEOUT=180
EXAMPLE_TIMEOUT=300 # the first create may wait for the template's snapshot under TCG
ROUNDS=${KILN_FIRST_RUN_UMASKS:-inherit 077}
PREFIX=${KILN_FIRST_RUN_PREFIX:-kfr}
SLOT_CIDR=${KILN_FIRST_RUN_SLOT_CIDR:-10.209.0.0/24}

passed=0
failed=0
say() { printf 'first-run: %s\n' "$*" >&2; }
pass() { passed=$((passed + 1)); say "ok - $*"; }
fail() { failed=$((failed + 1)); say "FAIL - $*"; }

[ "$(id -u)" = 0 ] || { say "must run as root (as npm run up does)"; exit 1; }

# Everything this check makes lives under one temp root. mktemp makes it 0700; it stands in for /var/lib on a real
# machine (world-traversable), so it gets 0755. The state and data dirs under it do not exist yet: `npm run up`
# creates them, with whatever modes it sets under the round's umask.
TMP_ROOT=$(mktemp -d /tmp/kiln-first-run.XXXXXX)
chmod 0755 "$TMP_ROOT"
NATS_PID=
DB_NAME=kiln_first_run_$$_$RANDOM
ROUND_DIR=
declare -a STACK_PIDS=()

psql_admin() {
  if psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
    psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -Atq "$@"
  else
    su postgres -c "psql -d postgres -v ON_ERROR_STOP=1 -Atq $(printf '%q ' "$@")"
  fi
}

alive() { kill -0 "$1" 2>/dev/null; }

# Stops one process we started (by pid only): TERM, then KILL after ~10 s.
stop_pid() {
  local pid=$1
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do alive "$pid" || return 0; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
}

# The stack's app pids, read from its run dir while it is up (down removes the pid files).
record_stack_pids() {
  local f
  for f in "$ROUND_DIR"/state/run/*.pid; do
    [ -f "$f" ] && STACK_PIDS+=("$(cat "$f")")
  done
  return 0
}

# Unmounts anything left under the temp root (a guest image build killed mid-way leaves /proc, /sys, /dev of its
# chroot mounted): removing the dirs before that would walk into the host's /dev.
unmount_under() {
  local mnt
  awk -v root="$1/" 'index($5, root) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r mnt; do
    umount -l "$mnt" 2>/dev/null || true
  done
}

# Runs the README's commands with the round's isolated settings.
round_env() {
  export KILN_STATE="$ROUND_DIR/state" KILN_DATA_DIR="$ROUND_DIR/data"
  # The stack runs its own authenticated nats-server (tools/stack/nats.sh), here on a port of the round's.
  export DATABASE_URL="postgresql://postgres@127.0.0.1:5432/$DB_NAME" KILN_NATS_PORT=${PORTS[9]} KILN_REDIS_PORT=${PORTS[11]}
  export KILN_NETWORK_PREFIX="$PREFIX" KILN_SLOT_CIDR="$SLOT_CIDR" KILN_HOST_ID=first-run
  export KILN_DEB_CACHE=${KILN_DEB_CACHE:-/var/lib/kiln/cache/debs}
  export GATEWAY_HTTP_PORT=${PORTS[0]} SCHEDULER_HTTP_PORT=${PORTS[1]} TEMPLATE_BUILDER_HTTP_PORT=${PORTS[2]}
  export HOST_MONITOR_HTTP_PORT=${PORTS[3]} HOST_AGENT_HTTP_PORT=${PORTS[4]} SANDBOX_PROXY_PORT=${PORTS[5]}
  export GRPC_PORT=${PORTS[6]} PROXY_PORT=${PORTS[7]} KILN_EGRESS_PROXY_PORT=${PORTS[8]} TLS_PORT=${PORTS[10]}
  # Settings a caller's environment may carry that would point the stack elsewhere.
  unset HTTP_PORT RUN_DIR KILN_HOST_STATE_KEY KILN_SANDBOX_TOKEN_KEY TLS_CERT_FILE TLS_KEY_FILE KILN_DEV_CA_FILE
  unset KILN_JOIN_TOKEN HOST_JOIN_TOKEN_KEY KILN_ADMIN_TOKEN KILN_AGENTS
  unset NATS_URL NATS_USER NATS_PASSWORD
  # The stack runs its own password-protected redis-server (tools/stack/redis.sh), here on a port of the round's.
  unset REDIS_URL KILN_REDIS_PASSWORD
  unset KILN_INTERNAL_CA_FILE KILN_INTERNAL_CERT_FILE KILN_INTERNAL_KEY_FILE
}

npm_run() { # npm_run <up|down> <timeout> <log>
  (cd "$ROOT" && timeout --kill-after=30 "$2" npm run "$1") >"$3" 2>&1
}

# The README's example, verbatim, with the printed dev.env sourced. Prints the example's stdout.
readme_example() {
  (
    for v in $(compgen -e | grep '^E2B_' || true); do unset "$v"; done
    set -a
    # shellcheck disable=SC1091
    source "$KILN_STATE/dev.env"
    set +a
    cd "$ROOT"
    timeout --kill-after=10 "$EXAMPLE_TIMEOUT" node -e "const {Sandbox}=require('e2b'); Sandbox.create('base').then(async s => {
  console.log((await s.commands.run('uname -r')).stdout); await s.kill() })"
  )
}

check_example() { # check_example <label>
  local out rc=0 t=$SECONDS
  out=$(readme_example 2>"$ROUND_DIR/example.err") || rc=$?
  if [ "$rc" = 0 ] && grep -Eq '^[0-9][^ ]*-cloud-amd64$' <<<"$out"; then
    pass "$1: README example printed the guest kernel $(grep -E 'cloud-amd64' <<<"$out") in $((SECONDS - t)) s"
  else
    # The SDK's error line (e.g. `SandboxError: 500: ...`), not the stack trace around it.
    fail "$1: README example exited $rc, printed '${out//$'\n'/ }': $(grep -m1 -E '^[A-Za-z]*Error' "$ROUND_DIR/example.err" || tail -n 1 "$ROUND_DIR/example.err")"
  fi
}

api_key() { sed -n 's/^E2B_API_KEY=//p' "$KILN_STATE/dev.env" 2>/dev/null; }

# Domain mode as far as it goes off port 443 (the SDK itself only calls https://api.<domain> on 443, which the dev
# stack holds): node, with only dev.env's NODE_EXTRA_CA_CERTS for trust, resolves api.<E2B_DOMAIN> through the
# machine's resolver and gets an answer from the gateway's TLS listener; the CA key is the owner's alone.
check_domain_mode() { # check_domain_mode <label>
  local domain ca status
  domain=$(sed -n 's/^E2B_DOMAIN=//p' "$KILN_STATE/dev.env" 2>/dev/null)
  ca=$(sed -n 's/^NODE_EXTRA_CA_CERTS=//p' "$KILN_STATE/dev.env" 2>/dev/null)
  if [ -z "$domain" ] || [ ! -f "$ca" ]; then fail "$1: dev.env names no E2B_DOMAIN or no NODE_EXTRA_CA_CERTS file"; return; fi
  if [ "$(stat -c %a "$KILN_STATE/tls/ca-key.pem" 2>/dev/null)" != 600 ]; then fail "$1: the CA key $KILN_STATE/tls/ca-key.pem is not mode 0600"; return; fi
  status=$(NODE_EXTRA_CA_CERTS="$ca" timeout 30 node -e "
    fetch('https://api.$domain:$TLS_PORT/health').then((r) => console.log(String(r.status)), (e) => console.log(String(e.cause?.code ?? e.message)))" 2>&1) || true
  # String(): under nx, FORCE_COLOR makes console.log colour a bare number (ESC[33m200ESC[39m).
  if [ "$status" = 200 ]; then
    pass "$1: node reached https://api.$domain:$TLS_PORT/health (machine resolver, dev CA from dev.env)"
  else
    fail "$1: https://api.$domain:$TLS_PORT/health from node: $status"
  fi
}

tail_logs() {
  say "last lines of $1:"
  tail -n 25 "$1" | sed 's/^/    /' >&2
  local f
  for f in "$KILN_STATE"/run/*.log; do
    [ -f "$f" ] || continue
    grep -E '"level":(50|60)|error|fatal' "$f" 2>/dev/null | tail -n 5 | sed "s|^|    $(basename "$f"): |" >&2 || true
  done
}

# Everything of this round's stack still on the machine, one line each.
leftovers() {
  local pid sid
  for pid in "${STACK_PIDS[@]}"; do
    alive "$pid" && echo "process $pid ($(tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null | cut -c1-80))"
    # setsid made each app a session leader: anything it spawned and left is still in its session.
    for sid in $(ps -eo pid=,sid= | awk -v s="$pid" '$2 == s && $1 != s { print $1 }'); do echo "process $sid in the session of $pid"; done
  done
  pgrep -f "qemu-system.*$KILN_DATA_DIR/" | sed 's/^/qemu pid /' || true
  ip netns list 2>/dev/null | awk -v p="$PREFIX-" 'index($1, p) == 1 { print "netns " $1 }'
  ip -o link show 2>/dev/null | awk -F': ' -v p="$PREFIX-" 'index($2, p) == 1 { print "link " $2 }'
  nft list tables 2>/dev/null | awk -v p="$PREFIX" '$3 == p || index($3, p "-") == 1 { print "nft table " $2 " " $3 }'
  awk -v root="$ROUND_DIR/" -v ns="/run/netns/$PREFIX-" 'index($5, root) == 1 || index($5, ns) == 1 { print "mount " $5 }' /proc/self/mountinfo
  losetup -a 2>/dev/null | grep -F "$ROUND_DIR/" | sed 's/^/loop device /' || true
  local port
  for port in "${PORTS[@]:0:9}" "${PORTS[10]}"; do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && echo "listener on port $port"
  done
  local d
  for d in sandboxes clones; do
    [ -d "$KILN_DATA_DIR/$d" ] && [ -n "$(ls -A "$KILN_DATA_DIR/$d")" ] && echo "entries in $KILN_DATA_DIR/$d"
  done
  return 0
}

# Tears a round's stack down whatever state it is in: `npm run down` first (it is what is under test and may have
# run already), then the pids we recorded, then the host teardown directly.
force_down() {
  [ -n "$ROUND_DIR" ] && [ -d "$ROUND_DIR" ] || return 0
  round_env
  if compgen -G "$KILN_STATE/run/*.pid" >/dev/null || [ -n "$(leftovers)" ]; then
    npm_run down "$DOWN_TIMEOUT" "$ROUND_DIR/down-cleanup.log" || true
  fi
  local pid
  for pid in "${STACK_PIDS[@]}"; do stop_pid "$pid"; done
  if [ -n "$(leftovers)" ] && [ -f "$ROOT/apps/host-agent/dist/teardown.js" ]; then
    (cd "$ROOT" && timeout 120 node apps/host-agent/dist/teardown.js) >>"$ROUND_DIR/down-cleanup.log" 2>&1 || true
  fi
  unmount_under "$ROUND_DIR"
}

summary() { printf 'first-run: %d passed, %d failed\n' "$passed" "$failed"; SUMMARY_DONE=1; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # An unexpected exit (a command failing under set -e, a signal) still ends with the summary line, as a failure.
  if [ "${SUMMARY_DONE:-0}" != 1 ]; then
    fail "aborted (exit $rc)"
    [ "$rc" != 0 ] || rc=1
  fi
  force_down || true
  if [ -n "$NATS_PID" ]; then stop_pid "$NATS_PID"; fi
  psql_admin -c "drop database if exists \"$DB_NAME\" with (force)" >/dev/null 2>&1 || say "could not drop database $DB_NAME"
  unmount_under "$TMP_ROOT"
  if [ "${KILN_FIRST_RUN_KEEP:-0}" = 1 ]; then
    say "kept $TMP_ROOT"
  else
    rm -rf --one-file-system "$TMP_ROOT"
  fi
  [ "${SUMMARY_DONE:-0}" = 1 ] || summary
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Nine ports for the stack (five HTTP, sandbox traffic, gRPC, agent proxy, egress proxy), one for NATS, one for the
# gateway's TLS listener (the dev stack holds 443) and one for Redis, all held open at once so they are distinct.
mapfile -t PORTS < <(node -e "
  const net = require('node:net');
  const servers = Array.from({ length: 12 }, () => net.createServer());
  Promise.all(servers.map((s) => new Promise((r) => s.listen(0, '127.0.0.1', () => r(s.address().port)))))
    .then((ports) => { console.log(ports.join('\n')); servers.forEach((s) => s.close()); });")
[ "${#PORTS[@]}" = 12 ] || { say "could not find free ports"; exit 1; }


say "temp root $TMP_ROOT, database $DB_NAME, redis :${PORTS[11]}, nats :${PORTS[9]}, prefix $PREFIX, slots $SLOT_CIDR, gateway :${PORTS[0]}"
started=$SECONDS

for round in $ROUNDS; do
  ROUND_DIR="$TMP_ROOT/$round"
  mkdir -p "$ROUND_DIR"
  STACK_PIDS=()
  round_env
  say "round $round (umask $([ "$round" = inherit ] || umask "$round"; umask)): npm run up, $KILN_STATE and $KILN_DATA_DIR do not exist yet"
  [ ! -e "$KILN_STATE" ] && [ ! -e "$KILN_DATA_DIR" ] || { fail "$round: state or data dir exists before the first up"; continue; }
  psql_admin -c "drop database if exists \"$DB_NAME\" with (force)" >/dev/null 2>&1 || { fail "$round: cannot reach Postgres as postgres"; continue; }

  t=$SECONDS
  rc=0
  ( [ "$round" = inherit ] || umask "$round"; npm_run up "$UP_TIMEOUT" "$ROUND_DIR/up1.log" ) || rc=$?
  record_stack_pids
  if [ "$rc" = 0 ] && [ -f "$KILN_STATE/dev.env" ]; then
    pass "$round: first npm run up succeeded in $((SECONDS - t)) s"
    check_example "$round: after the first up"
    check_domain_mode "$round: after the first up"
    key1=$(api_key)
    if [ "$round" = inherit ]; then
      # Idempotent: a second `up` on the running stack keeps the key and the stack working.
      t=$SECONDS
      rc=0
      npm_run up "$UP_TIMEOUT" "$ROUND_DIR/up2.log" || rc=$?
      record_stack_pids
      if [ "$rc" = 0 ]; then pass "$round: second npm run up succeeded in $((SECONDS - t)) s"; else fail "$round: second npm run up exited $rc"; tail_logs "$ROUND_DIR/up2.log"; fi
      if [ -n "$key1" ] && [ "$(api_key)" = "$key1" ]; then pass "$round: second up kept the API key"; else fail "$round: API key changed or missing after the second up"; fi
      check_example "$round: after the second up"
    fi
  else
    fail "$round: first npm run up exited $rc (log $ROUND_DIR/up1.log)"
    tail_logs "$ROUND_DIR/up1.log"
  fi

  t=$SECONDS
  rc=0
  ( [ "$round" = inherit ] || umask "$round"; npm_run down "$DOWN_TIMEOUT" "$ROUND_DIR/down.log" ) || rc=$?
  if [ "$rc" = 0 ]; then pass "$round: npm run down succeeded in $((SECONDS - t)) s"; else fail "$round: npm run down exited $rc"; tail_logs "$ROUND_DIR/down.log"; fi
  left=$(leftovers)
  if [ -z "$left" ]; then
    pass "$round: nothing left after down (processes, qemu, netns, links, nft, mounts, loop devices, ports, sandboxes)"
  else
    fail "$round: left after down: $(tr '\n' ';' <<<"$left")"
  fi
  if [ -f "$KILN_STATE/dev.env" ]; then fail "$round: dev.env still there after down"; fi
  # Whatever down missed goes now, so the next round starts clean; the round's dirs go with the temp root.
  force_down
done

say "took $((SECONDS - started)) s"
summary
[ "$failed" = 0 ]
