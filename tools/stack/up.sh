#!/usr/bin/env bash
# `npm run up`: brings the whole Kiln stack up on this machine and prints how to use it.
# shellcheck source=apps.sh
source "$(dirname "${BASH_SOURCE[0]}")/apps.sh"

ensure_root
ensure_apt_packages
ensure_loopback_names
ensure_services
ensure_npm
generate_and_build
build_guest_image
stack_env
ensure_dev_certificate
ensure_internal_certificates
ensure_database "$(database_name)"
ensure_stack_nats
ensure_stack_redis

# A gateway an earlier `up` left running may predate the TLS listener, or serve another domain or certificate. It
# keeps no state, so it is restarted rather than left serving the old configuration.
if app_running gateway && ! gateway_tls_answers; then
  log "restarting the gateway: it does not serve https://api.$KILN_DOMAIN:$TLS_PORT with the current certificate"
  stop_app gateway
fi

for app in "${APPS[@]}"; do
  log "starting $app"
  start_app "$app"
  # The scheduler must answer registrations before the host agent starts heartbeating.
  [ "$app" = scheduler ] && wait_healthy scheduler
done
for app in "${APPS[@]}"; do wait_healthy "$app" 600; done
check_domain_mode

log "seeding the dev team, API key and templates"
node "$ROOT/tools/stack/seed-dev.cjs" > "$KILN_STATE/dev.env.tmp"
mv "$KILN_STATE/dev.env.tmp" "$KILN_STATE/dev.env"
# shellcheck disable=SC1091
source "$KILN_STATE/dev.env"

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

Use it with the official e2b SDK:
  set -a; source $state/dev.env; set +a
  node -e "const {Sandbox}=require('e2b'); Sandbox.create('base').then(async s=>{console.log((await s.commands.run('uname -a')).stdout); await s.kill()})"

Or by domain alone, as E2B's own cloud is used: E2B_DOMAIN and E2B_API_KEY over HTTPS$trust:
  set -a; source $state/dev.env; set +a; unset E2B_API_URL E2B_SANDBOX_URL
  node -e "const {Sandbox}=require('e2b'); Sandbox.create('base').then(async s=>{console.log(s.getHost(8080)); console.log((await s.commands.run('uname -a')).stdout); await s.kill()})"
MSG
[ "$TLS_PORT" = 443 ] || echo "  (TLS_PORT is $TLS_PORT: SDKs call https://api.<domain> on port 443 only, so domain mode needs TLS_PORT=443.)"
echo
echo "Stop everything with: npm run down"
