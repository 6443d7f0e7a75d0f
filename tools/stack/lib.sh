#!/usr/bin/env bash
# Shared steps of `npm run up`, `npm test` and CI: every step is idempotent and
# checks before it acts, so a second run on a prepared machine is fast.
set -euo pipefail
# Everything the stack makes is read by other users: the guest image and template tree by QEMU once it dropped to
# its VM's own uid, the guest agent bundle inside the guest, the apps' data dirs. A user's shell may have umask 077; the
# stack's modes must not depend on it (secrets.env sets its own 0600). The apps inherit this, as under systemd.
umask 022

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KILN_STATE=${KILN_STATE:-$ROOT/.kiln}
export KILN_DATA_DIR=${KILN_DATA_DIR:-/var/lib/kiln}
export KILN_ARTIFACT_DIR=${KILN_ARTIFACT_DIR:-$KILN_DATA_DIR/artifacts}
export PATH="$ROOT/node_modules/.bin:$PATH"
export NX_DAEMON=false NX_NO_CLOUD=true NX_TUI=false NX_SKIP_NX_CACHE=${NX_SKIP_NX_CACHE:-false}

log() { printf '\033[1;34m[kiln]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[kiln]\033[0m %s\n' "$*" >&2; exit 1; }

# Debian packages the stack needs on a host: VMs, guest image build, networking, services.
APT_PACKAGES=(
  qemu-system-x86 qemu-utils busybox-static cpio e2fsprogs xfsprogs iproute2 iptables nftables
  debootstrap mmdebstrap tini curl ca-certificates conntrack
  # Template builds from images: pull (skopeo), unpack (umoci), make node self-contained (patchelf); the tests' registry.
  skopeo umoci patchelf docker-registry
  postgresql redis-server nats-server
  # The dev domain (KILN_DOMAIN, kiln.localhost) and its certificate: *.localhost names resolve to loopback through
  # myhostname, and openssl makes the local CA and the wildcard certificate of the gateway's TLS listener.
  libnss-myhostname openssl
  # The native UFFD worker (apps/host-agent/uffd-worker): C toolchain, OpenSSL (sha256), cJSON, sanitizer runtimes.
  gcc make libc6-dev libssl-dev libcjson-dev libasan8 libubsan1
)

ensure_root() {
  [ "$(id -u)" = 0 ] || die "must run as root (VMs need /dev/kvm or TCG, network namespaces and nftables)"
}

ensure_apt_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# The hosts line of an nsswitch.conf with `myhostname` before `dns` (appended when there is no dns; the file's other
# lines unchanged; a line already listing it before dns is left as it is). Prints the result.
nsswitch_with_myhostname() {
  awk '
    !done && /^hosts:/ {
      done = 1
      line = $0; comment = ""
      if ((c = index(line, "#")) > 0) { comment = " " substr(line, c); line = substr(line, 1, c - 1) }
      match(line, /^hosts:[ \t]*/); prefix = substr(line, 1, RLENGTH)
      n = split(substr(line, RLENGTH + 1), t, /[ \t]+/)
      m = 0; d = 0
      for (i = 1; i <= n; i++) { if (t[i] == "myhostname" && !m) m = i; if (t[i] == "dns" && !d) d = i }
      if (m && (!d || m < d)) { print; next }
      # Move it: drop it (with the [action] items that belonged to it) and put it right before dns.
      out = ""; skip = 0; placed = 0
      for (i = 1; i <= n; i++) {
        if (t[i] == "") continue
        if (t[i] == "myhostname") { skip = 1; continue }
        if (skip && t[i] ~ /^\[/) continue
        skip = 0
        if (t[i] == "dns" && !placed) { out = out (out == "" ? "" : " ") "myhostname"; placed = 1 }
        out = out (out == "" ? "" : " ") t[i]
      }
      if (!placed) out = out (out == "" ? "" : " ") "myhostname"
      print prefix out comment
      next
    }
    { print }
    END { if (!done) print "hosts: files myhostname dns" }
  ' "$1"
}

# `*.localhost` names (the dev KILN_DOMAIN and every `{port}-{sandboxId}.` name under it) resolve to 127.0.0.1 and
# ::1 through glibc's myhostname module (package libnss-myhostname), with no DNS query and no /etc/hosts entry per
# sandbox. Its package may add it after `dns`; it goes before. Rewritten in place: /etc/nsswitch.conf may be a
# bind mount that a rename could not replace.
ensure_loopback_names() {
  local conf=/etc/nsswitch.conf wanted
  [ -f "$conf" ] || touch "$conf"
  wanted=$(nsswitch_with_myhostname "$conf")
  if [ "$wanted" != "$(cat "$conf")" ]; then
    log "resolving *.localhost to loopback: $(grep -m1 '^hosts:' <<<"$wanted" | tr -s ' \t' ' ') in $conf"
    printf '%s\n' "$wanted" > "$conf"
  fi
}

# port_open PORT [ADDRESS]: something accepts connections there (default 127.0.0.1).
port_open() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }

wait_port() {
  local port=$1 what=$2 address=${3:-127.0.0.1}
  for _ in $(seq 1 100); do port_open "$port" "$address" && return 0; sleep 0.2; done
  die "$what did not start listening on $address:$port"
}

ensure_services() {
  if ! port_open 5432; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
    wait_port 5432 PostgreSQL
  fi
  if ! port_open 6379; then
    log "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/kiln.log
    wait_port 6379 Redis
  fi
  if ! port_open 4222; then
    log "starting NATS (JetStream)"
    mkdir -p /var/lib/nats-server
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    wait_port 4222 NATS
  fi
}

# psql as the postgres superuser over TCP (trust on this machine kind) or the local socket.
psql_admin() {
  if psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
    psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -Atq "$@"
  else
    su postgres -c "psql -d postgres -v ON_ERROR_STOP=1 -Atq $(printf '%q ' "$@")"
  fi
}

ensure_database() {
  local db=$1
  psql_admin -c "select 1 from pg_database where datname = '$db'" | grep -q 1 || psql_admin -c "create database \"$db\""
}

ensure_npm() {
  local stamp="$ROOT/node_modules/.kiln-lock.sha256" want
  want=$(sha256sum "$ROOT/package-lock.json" | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    # `npm install` with the committed lockfile rather than `npm ci`: npm 11.19 writes lockfiles
    # without other platforms' optional binaries (e.g. @swc/core-darwin-*) and `npm ci` then
    # refuses them as "missing from lock file". The lockfile still pins every version installed.
    log "installing npm dependencies (npm install from package-lock.json)"
    (cd "$ROOT" && npm install --no-audit --no-fund --loglevel=error)
    echo "$want" > "$stamp"
  fi
}

generate_and_build() {
  log "generating Prisma client and protobuf types"
  (cd "$ROOT" && DATABASE_URL=${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres} prisma generate >/dev/null)
  # tsc -b does not notice a regenerated Prisma client: libs/db's declarations inline its model types, so a
  # schema change must rebuild libs/db (and, through its new declarations, what depends on it).
  local schema_hash stamp="$ROOT/libs/db/dist/.prisma-schema.sha256"
  schema_hash=$(sha256sum "$ROOT/prisma/schema.prisma" | cut -d' ' -f1)
  if [[ -d "$ROOT/libs/db/dist" && "$(cat "$stamp" 2>/dev/null)" != "$schema_hash" ]]; then
    rm -rf "$ROOT/libs/db/dist"
  fi
  (cd "$ROOT" && nx run proto:generate --outputStyle=static >/dev/null)
  log "building (tsc -b)"
  (cd "$ROOT" && tsc -b tsconfig.json)
  (cd "$ROOT" && nx run host-agent:build-native --outputStyle=static >/dev/null)
  echo "$schema_hash" > "$stamp"
  (cd "$ROOT" && nx run guest-agent:bundle --outputStyle=static >/dev/null)
}

build_guest_image() {
  log "building guest image (content-hash cached; a no-op when inputs are unchanged)"
  (cd "$ROOT" && nx run guest-image:build --outputStyle=static)
}
