#!/usr/bin/env bash
# `npm test`: prepares what the tests need (packages, services, build, guest image),
# then runs the fast suites (unit + integration against real Postgres/Redis/NATS)
# and the slow end-to-end suites (real QEMU VMs, real network namespaces).
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_root
ensure_apt_packages
ensure_services
ensure_npm
generate_and_build
build_guest_image

# envd semantics: commands run as the unprivileged `user` by default, also when the
# guest agent's suites run it directly on this host.
id user >/dev/null 2>&1 || useradd -m -s /bin/bash user

cd "$ROOT"
# Everything the suites print is also kept, so that the end of the output can name what failed: CI shows only
# the tail of a long run.
mkdir -p "$KILN_STATE"
TEST_LOG="$KILN_STATE/test-output.log"
: >"$TEST_LOG"
started=$SECONDS
status=0
run_stage() { "$@" 2>&1 | tee -a "$TEST_LOG"; return "${PIPESTATUS[0]}"; }
log "fast suites: unit and integration"
# One at a time: on 2 cores, parallel suites turn timing assertions into flakes.
run_stage nx run-many -t test --parallel=1 --outputStyle=stream || status=1
log "slow suites: end-to-end with real VMs"
run_stage nx run-many -t e2e --parallel=1 --outputStyle=stream || status=1
elapsed=$((SECONDS - started))
if [ $status = 0 ]; then
  log "all suites passed in $((elapsed / 60)) min $((elapsed % 60)) s"
else
  # jest's failed tests and suites, the shell suites' "not ok"/"FAIL" lines, and nx's failed targets.
  log "failures (full output: $TEST_LOG):"
  sed -e 's/\x1b\[[0-9;]*m//g' "$TEST_LOG" |
    grep -E '(✕|● .* › | FAIL |not ok|^- [a-z0-9-]+:[a-z0-9-]+$)' | grep -v '✓' | head -60 >&2 || true
  log "some suites failed after $((elapsed / 60)) min $((elapsed % 60)) s"
fi
exit $status
