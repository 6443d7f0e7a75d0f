#!/usr/bin/env bash
# `npm run up`: brings the whole Kiln stack up on this machine and prints how to use it.
# shellcheck source=apps.sh
source "$(dirname "${BASH_SOURCE[0]}")/apps.sh"

ensure_root
ensure_apt_packages
ensure_services
ensure_vmm_user
ensure_npm
generate_and_build
build_guest_image
stack_env
ensure_database "$(database_name)"

for app in "${APPS[@]}"; do
  log "starting $app"
  start_app "$app"
  # The scheduler must answer registrations before the host agent starts heartbeating.
  [ "$app" = scheduler ] && wait_healthy scheduler
done
for app in "${APPS[@]}"; do wait_healthy "$app" 600; done

log "seeding the dev team, API key and templates"
node "$ROOT/tools/stack/seed-dev.cjs" > "$KILN_STATE/dev.env.tmp"
mv "$KILN_STATE/dev.env.tmp" "$KILN_STATE/dev.env"
# shellcheck disable=SC1091
source "$KILN_STATE/dev.env"

cat <<MSG

Kiln is up.
  API (E2B-compatible):  $E2B_API_URL      (OpenAPI: $E2B_API_URL/openapi.json)
  Sandbox traffic:       $E2B_SANDBOX_URL
  API key:               $E2B_API_KEY
  Logs:                  $RUN_DIR/<app>.log

Use it with the official e2b SDK:
  set -a; source ${KILN_STATE#"$PWD/"}/dev.env; set +a
  node -e "const {Sandbox}=require('e2b'); Sandbox.create('base').then(async s=>{console.log((await s.commands.run('uname -a')).stdout); await s.kill()})"

Stop everything with: npm run down
MSG
