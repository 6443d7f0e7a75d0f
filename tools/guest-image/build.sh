#!/usr/bin/env bash
# Builds the `base` guest image (kernel, initramfs, ext4 rootfs with Node and the guest
# agent) and registers it as a template build. Output is keyed by a sha256 over every
# input, so a rebuild with unchanged inputs only re-registers the existing image.
#
# Environment:
#   KILN_DATA_DIR            data dir (default /var/lib/kiln)
#   KILN_GUEST_AGENT_BUNDLE  guest agent bundle dir (default apps/guest-agent/dist/bundle)
#   KILN_TEMPLATE_ID         template name to register (default base)
#   KILN_ROOTFS_SIZE         sparse rootfs size (default 3G: about 2.1 GiB left free for users after the packages)
#   KILN_TEMPLATE_VCPUS / KILN_TEMPLATE_MEMORY_MIB   template.json defaults (1 / 512)
#   KILN_TEMPLATE_KEEP_BUILDS  template builds kept, current included (default 3)
#   KILN_NPM_DIR             npm distribution copied into the guest beside node (default: the one the host's `npm`
#                            command runs, e.g. /usr/lib/node_modules/npm); `none` leaves npm and npx out
#   KILN_DEB_CACHE           Debian package download cache (default $KILN_DATA_DIR/cache/debs): only .deb files
#                            as the mirror serves them, so data dirs may share one (the first-run check does)
set -euo pipefail
# The image tree is read by QEMU after it dropped to its VM's uid, and the rootfs contents (dirs this script makes,
# the guest agent's files) must not depend on the builder's umask.
umask 022

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DATA_DIR=${KILN_DATA_DIR:-/var/lib/kiln}
DEB_CACHE=${KILN_DEB_CACHE:-$DATA_DIR/cache/debs}
TEMPLATE_ID=${KILN_TEMPLATE_ID:-base}
BUNDLE_DIR=${KILN_GUEST_AGENT_BUNDLE:-$REPO/apps/guest-agent/dist/bundle}
ROOTFS_SIZE=${KILN_ROOTFS_SIZE:-3G}
VCPUS=${KILN_TEMPLATE_VCPUS:-1}
MEMORY_MIB=${KILN_TEMPLATE_MEMORY_MIB:-512}
SUITE=bookworm
KERNEL_META_PACKAGE=linux-image-cloud-amd64
NODE_BIN=$(command -v node)
NPM_DIR=${KILN_NPM_DIR:-}
KERNEL_ARGS="console=ttyS0 reboot=t panic=-1 quiet"
# Kernel modules the initramfs loads, in load order (see initramfs-init.sh).
VIRTIO_MODULES="kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko \
kernel/drivers/virtio/virtio_mmio.ko kernel/drivers/block/virtio_blk.ko kernel/net/core/failover.ko \
kernel/drivers/net/net_failover.ko kernel/drivers/net/virtio_net.ko"
HOST_PACKAGES="mmdebstrap busybox-static cpio e2fsprogs qemu-utils qemu-system-x86 gzip"

log() { echo "guest-image: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap, chroot and ownership in the rootfs)"

ensure_host_packages() {
  local missing=() pkg
  for pkg in $HOST_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing host packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends "${missing[@]}" </dev/null; then
    apt-get update </dev/null
    apt-get install -y --no-install-recommends "${missing[@]}" </dev/null
  fi
}

resolve_kernel_package() {
  KERNEL_PACKAGE=$(apt-cache depends "$KERNEL_META_PACKAGE" | awk '/Depends: linux-image-/ && !p {p=$2} END {print p}')
  [ -n "$KERNEL_PACKAGE" ] || die "cannot resolve $KERNEL_META_PACKAGE (apt-get update?)"
  KERNEL_VERSION=$(apt-cache policy "$KERNEL_PACKAGE" | awk '/Candidate:/ && !v {v=$2} END {print v}')
  [ -n "$KERNEL_VERSION" ] && [ "$KERNEL_VERSION" != "(none)" ] || die "no candidate for $KERNEL_PACKAGE"
}

# The npm that belongs to the host's node: the package the `npm` command runs (bin/npm-cli.js two levels down), not
# whatever `npm root -g` says, which a user prefix can point elsewhere. Debian's npm/nodejs packages would bring a
# second, older node, so the guest gets this one instead.
resolve_npm_dir() {
  if [ -z "$NPM_DIR" ]; then
    local npm_bin
    npm_bin=$(command -v npm) || die "npm not found on the host (install it beside node, or set KILN_NPM_DIR, or KILN_NPM_DIR=none)"
    NPM_DIR=$(cd "$(dirname "$(readlink -f "$npm_bin")")/.." && pwd)
  fi
  [ "$NPM_DIR" = none ] && return 0
  [ -f "$NPM_DIR/bin/npm-cli.js" ] && [ -f "$NPM_DIR/bin/npx-cli.js" ] || die "$NPM_DIR is not an npm distribution (no bin/npm-cli.js, bin/npx-cli.js)"
  NPM_DIR=$(cd "$NPM_DIR" && pwd -P)
}

package_list() { grep -v '^\s*#' "$HERE/packages.txt" | grep -v '^\s*$' | sort -u; }

# Hash of a directory tree: relative paths, modes and contents, independent of mtimes.
tree_digest() {
  (cd "$1" && {
    find . -printf '%y %m %p %l\n' | LC_ALL=C sort
    find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
  }) | sha256sum | cut -d' ' -f1
}

compute_input_hash() {
  {
    echo "format=1"
    echo "suite=$SUITE"
    echo "kernel=$KERNEL_PACKAGE=$KERNEL_VERSION"
    echo "rootfs_size=$ROOTFS_SIZE vcpus=$VCPUS memory_mib=$MEMORY_MIB"
    echo "kernel_args=$KERNEL_ARGS"
    echo "packages=$(package_list | tr '\n' ' ')"
    for f in build.sh initramfs-init.sh guest-init.sh packages.txt; do
      echo "script $f $(sha256sum "$HERE/$f" | cut -d' ' -f1)"
    done
    echo "node $(sha256sum "$NODE_BIN" | cut -d' ' -f1)"
    if [ "$NPM_DIR" = none ]; then echo "npm none"; else echo "npm $(tree_digest "$NPM_DIR")"; fi
    echo "agent $(tree_digest "$BUNDLE_DIR")"
  } | tee "$WORK_INPUTS" | sha256sum | cut -d' ' -f1
}

build_kernel() {
  local out=$1 deb_cache="$DEB_CACHE" deb
  mkdir -p "$deb_cache"
  deb=$(ls "$deb_cache/${KERNEL_PACKAGE}_${KERNEL_VERSION//:/%3a}_"*.deb 2>/dev/null | head -n1 || true)
  if [ -z "$deb" ]; then
    log "downloading $KERNEL_PACKAGE $KERNEL_VERSION"
    (cd "$deb_cache" && apt-get download "$KERNEL_PACKAGE=$KERNEL_VERSION" </dev/null 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
    deb=$(ls "$deb_cache/${KERNEL_PACKAGE}_"*.deb 2>/dev/null | head -n1 || true)
    [ -n "$deb" ] || die "download of $KERNEL_PACKAGE failed"
  fi
  mkdir -p "$out/kernel-pkg"
  dpkg-deb -x "$deb" "$out/kernel-pkg"
  KERNEL_RELEASE=$(ls "$out/kernel-pkg/lib/modules")
  cp "$out/kernel-pkg/boot/vmlinuz-$KERNEL_RELEASE" "$out/vmlinuz"
  echo "$KERNEL_RELEASE" >"$out/kernel.release"
}

build_initramfs() {
  local out=$1 root="$1/initramfs-root" m
  mkdir -p "$root"/{bin,dev,proc,sys,newroot,lib/modules}
  cp /bin/busybox "$root/bin/busybox"
  for m in $VIRTIO_MODULES; do
    cp "$out/kernel-pkg/lib/modules/$KERNEL_RELEASE/$m" "$root/lib/modules/"
  done
  install -m 0755 "$HERE/initramfs-init.sh" "$root/init"
  (cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --owner=0:0) | gzip -6 >"$out/initramfs.cpio.gz"
}

build_rootfs() {
  local out=$1 root="$1/rootfs" mirror
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  # The packages of the last build are kept in $DEB_CACHE/rootfs and handed to apt before it downloads (apt
  # verifies each against the mirror's index and fetches only what is missing or newer); afterwards the cache holds
  # exactly this build's packages. Hard links where the cache shares the filesystem: apt only reads and unlinks.
  local cached="$DEB_CACHE/rootfs" staging="$DEB_CACHE/.rootfs-$$" q_cached q_staging
  mkdir -p "$cached"
  # A build killed mid-way leaves its staging dir; an hour is far longer than any build.
  find "$DEB_CACHE" -maxdepth 1 -name '.rootfs-*' -mmin +60 -exec rm -rf {} + 2>/dev/null || true
  rm -rf "$staging"
  mkdir -p "$staging"
  q_cached=$(printf %q "$cached")
  q_staging=$(printf %q "$staging")
  log "mmdebstrap $SUITE from $mirror ($(find "$cached" -maxdepth 1 -name '*.deb' | wc -l) cached packages)"
  mmdebstrap --quiet --variant=minbase --mode=root \
    --include="$(package_list | paste -sd,)" \
    --skip=essential/unlink \
    --setup-hook="mkdir -p \"\$1/var/cache/apt/archives\" && for f in $q_cached/*.deb; do [ -e \"\$f\" ] || continue; ln \"\$f\" \"\$1/var/cache/apt/archives/\" 2>/dev/null || cp \"\$f\" \"\$1/var/cache/apt/archives/\"; done" \
    --customize-hook="for f in \"\$1\"/var/cache/apt/archives/*.deb; do [ -e \"\$f\" ] || continue; ln \"\$f\" $q_staging/ 2>/dev/null || cp \"\$f\" $q_staging/; done" \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    "$SUITE" "$root" "$mirror" </dev/null
  rm -rf "$cached"
  mv -T "$staging" "$cached"

  chroot "$root" useradd --uid 1000 --create-home --home-dir /home/user --shell /bin/bash --user-group user
  echo 'user ALL=(ALL) NOPASSWD:ALL' >"$root/etc/sudoers.d/user"
  chmod 0440 "$root/etc/sudoers.d/user"
  echo kiln >"$root/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 kiln\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
  : >"$root/etc/resolv.conf"

  install -m 0755 "$NODE_BIN" "$root/usr/local/bin/node"
  # Node comes from the host; prove every shared library it needs is in the guest.
  if chroot "$root" ldd /usr/local/bin/node | grep -q 'not found'; then
    chroot "$root" ldd /usr/local/bin/node >&2
    die "node has unresolved libraries in the guest rootfs"
  fi
  chroot "$root" /usr/local/bin/node -e 'process.exit(0)' || die "node does not run in the guest rootfs"
  [ "$NPM_DIR" = none ] || install_npm "$root"

  mkdir -p "$root/opt/kiln/guest-agent"
  cp -a "$BUNDLE_DIR/." "$root/opt/kiln/guest-agent/"
  chown -R 0:0 "$root/opt/kiln"
  # A bundle built under umask 077 is 0600/0700; in the guest it is root's code, readable by all as any /usr file.
  chmod -R u=rwX,go=rX "$root/opt/kiln"
  install -m 0755 "$HERE/guest-init.sh" "$root/opt/kiln/init"

  truncate -s "$ROOTFS_SIZE" "$out/rootfs.ext4"
  mke2fs -q -F -t ext4 -L kiln-root -d "$root" "$out/rootfs.ext4"
}

# npm and npx as a node distribution lays them out under its prefix (/usr/local, node's dir's parent), so the guest's
# `npm root -g` is /usr/local/lib/node_modules and `npm install -g` lands beside npm itself.
install_npm() {
  local root=$1 home
  mkdir -p "$root/usr/local/lib/node_modules"
  cp -a "$NPM_DIR" "$root/usr/local/lib/node_modules/npm"
  chown -R 0:0 "$root/usr/local/lib/node_modules/npm"
  chmod -R u=rwX,go=rX "$root/usr/local/lib/node_modules/npm"
  ln -sfn ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/local/bin/npm"
  ln -sfn ../lib/node_modules/npm/bin/npx-cli.js "$root/usr/local/bin/npx"
  # Run through the links as a user would; a scratch HOME so npm's cache and logs stay out of the image.
  home=$(mktemp -d "$root/tmp/npm-check.XXXXXX")
  local npm_version npx_version
  npm_version=$(chroot "$root" env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="${home#"$root"}" npm --version) || die "npm does not run in the guest rootfs"
  npx_version=$(chroot "$root" env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="${home#"$root"}" npx --version) || die "npx does not run in the guest rootfs"
  rm -rf "$home"
  [ "$npm_version" = "$("$NODE_BIN" -p 'require(process.argv[1]).version' "$NPM_DIR/package.json")" ] ||
    die "npm in the guest reports $npm_version, not the version copied from $NPM_DIR"
  log "npm $npm_version (npx $npx_version) from $NPM_DIR"
}

write_template_json() {
  local out=$1
  cat >"$out/template.json" <<JSON
{
  "templateId": "$TEMPLATE_ID",
  "buildId": "$BUILD_ID",
  "imageHash": "$INPUT_HASH",
  "vcpus": $VCPUS,
  "memoryMib": $MEMORY_MIB,
  "kernel": "vmlinuz",
  "initrd": "initramfs.cpio.gz",
  "rootfs": "rootfs.ext4",
  "rootfsFormat": "raw",
  "kernelArgs": "$KERNEL_ARGS",
  "kernelRelease": "$(cat "$out/kernel.release")",
  "kernelPackage": "$KERNEL_PACKAGE=$KERNEL_VERSION",
  "agentPort": 49983,
  "createdAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
JSON
}

# Template store layout: templates/<id>/<buildId>/ holds hard links to the image files
# (same filesystem, read-only), and templates/<id>/current points at the newest build.
register_template() {
  local image_dir=$1 tdir="$DATA_DIR/templates/$TEMPLATE_ID" bdir f
  bdir="$tdir/$BUILD_ID"
  if [ ! -f "$bdir/template.json" ]; then
    mkdir -p "$tdir"
    local staging="$tdir/.staging-$BUILD_ID-$$"
    rm -rf "$staging"
    mkdir -p "$staging"
    for f in vmlinuz initramfs.cpio.gz rootfs.ext4 template.json kernel.release; do
      ln "$image_dir/$f" "$staging/$f" 2>/dev/null || cp --sparse=always "$image_dir/$f" "$staging/$f"
    done
    mv -T "$staging" "$bdir"
  fi
  ln -sfn "$BUILD_ID" "$tdir/.current-$$"
  mv -T "$tdir/.current-$$" "$tdir/current"
  ln -sfn "$INPUT_HASH" "$DATA_DIR/images/.current-$TEMPLATE_ID-$$"
  mv -T "$DATA_DIR/images/.current-$TEMPLATE_ID-$$" "$DATA_DIR/images/current-$TEMPLATE_ID"
}

# Image dirs are only a build cache: template builds hold their own hard links, so dropping
# every image but the current one frees nothing a template still uses.
prune_old_images() {
  local dir
  for dir in "$DATA_DIR"/images/*/; do
    dir=${dir%/}
    [ "$(basename "$dir")" = "$INPUT_HASH" ] && continue
    [ -f "$dir/.complete" ] || continue
    [ -L "$dir" ] && continue
    rm -rf "$dir"
  done
}

# Older template builds (with their snapshots) are kept for a while: sandboxes may have been
# created from them. Running VMs keep their files open, so removal never pulls a disk or a
# memory file out from under a live VM; only new creates of an old build stop working.
prune_old_template_builds() {
  local tdir="$DATA_DIR/templates/$TEMPLATE_ID" keep=${KILN_TEMPLATE_KEEP_BUILDS:-3} dir kept=1
  for dir in $(ls -1dt "$tdir"/*/ 2>/dev/null); do
    dir=${dir%/}
    [ "$(basename "$dir")" = "$BUILD_ID" ] && continue
    [ -L "$dir" ] && continue
    [ -f "$dir/template.json" ] || continue
    if [ "$kept" -lt "$keep" ]; then
      kept=$((kept + 1))
    else
      log "removing old template build $(basename "$dir")"
      rm -rf "$dir"
    fi
  done
}

main() {
  [ -f "$BUNDLE_DIR/guest-agent.js" ] ||
    die "guest agent bundle not found at $BUNDLE_DIR (build it: npx nx run guest-agent:bundle, or set KILN_GUEST_AGENT_BUNDLE)"
  ensure_host_packages
  resolve_kernel_package
  resolve_npm_dir
  mkdir -p "$DATA_DIR/images"
  # One build at a time per data dir: concurrent runs (CI retries, two checkouts) would
  # otherwise race on the same image dir and the `current` links.
  exec 9>"$DATA_DIR/images/.build.lock"
  flock 9
  WORK_INPUTS=$(mktemp)
  trap 'rm -f "$WORK_INPUTS"' EXIT
  INPUT_HASH=$(compute_input_hash)
  BUILD_ID=${INPUT_HASH:0:16}
  local image_dir="$DATA_DIR/images/$INPUT_HASH" work

  if [ -f "$image_dir/.complete" ]; then
    log "inputs unchanged, image $INPUT_HASH is current"
  else
    work="$DATA_DIR/images/.build-$INPUT_HASH-$$"
    BUILD_WORK_DIR=$work
    trap 'rm -f "$WORK_INPUTS"; rm -rf "$BUILD_WORK_DIR"' EXIT
    rm -rf "$work"
    mkdir -p "$work"
    cp "$WORK_INPUTS" "$work/inputs.txt"
    local started=$SECONDS
    build_kernel "$work"
    build_initramfs "$work"
    build_rootfs "$work"
    write_template_json "$work"
    rm -rf "$work/kernel-pkg" "$work/initramfs-root" "$work/rootfs"
    chmod 0444 "$work/vmlinuz" "$work/initramfs.cpio.gz" "$work/rootfs.ext4" "$work/template.json"
    touch "$work/.complete"
    rm -rf "$image_dir"
    mv -T "$work" "$image_dir"
    log "built image $INPUT_HASH in $((SECONDS - started)) s"
  fi
  register_template "$image_dir"
  prune_old_images
  prune_old_template_builds
  log "template $TEMPLATE_ID build $BUILD_ID at $DATA_DIR/templates/$TEMPLATE_ID/$BUILD_ID"
  echo "$DATA_DIR/templates/$TEMPLATE_ID/$BUILD_ID"
}

main "$@"
