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
status=0
log "fast suites: unit and integration"
# One at a time: on 2 cores, parallel suites turn timing assertions into flakes.
nx run-many -t test --parallel=1 --outputStyle=stream || status=1
log "slow suites: end-to-end with real VMs"
nx run-many -t e2e --parallel=1 --outputStyle=stream || status=1
[ $status = 0 ] && log "all suites passed" || log "some suites failed"
exit $status
