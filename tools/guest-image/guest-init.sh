#!/bin/bash
# Runs under tini (PID 1) inside the guest: minimal system setup, guest network, then
# the guest agent. Network parameters come from the kernel command line so the host
# owns the addressing plan (kiln.ip=<addr/prefix> kiln.gw=<addr> kiln.hostname=<name>).
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root

cmdline_value() {
  local key=$1 default=$2 word
  for word in $(cat /proc/cmdline); do
    case $word in "$key="*) echo "${word#*=}"; return ;; esac
  done
  echo "$default"
}

mount_once() { # type target options
  mountpoint -q "$2" || mount -t "$1" -o "$3" "$1" "$2"
}

mount_once proc /proc nosuid,nodev,noexec
mount_once sysfs /sys nosuid,nodev,noexec
mount_once devtmpfs /dev mode=0755,nosuid
mkdir -p /dev/pts /dev/shm
mount_once devpts /dev/pts gid=5,mode=620,ptmxmode=666,nosuid,noexec
mount_once tmpfs /dev/shm mode=1777,nosuid,nodev
mount_once tmpfs /tmp mode=1777,nosuid,nodev
mount_once tmpfs /run mode=0755,nosuid,nodev
ln -sfn /proc/self/fd /dev/fd

guest_ip=$(cmdline_value kiln.ip 169.254.0.21/30)
gateway=$(cmdline_value kiln.gw 169.254.0.22)
hostname_value=$(cmdline_value kiln.hostname kiln)

hostname "$hostname_value"
ip link set lo up
ip addr add "$guest_ip" dev eth0
ip link set eth0 up
ip route add default via "$gateway" dev eth0

echo "kiln-init: kernel $(uname -r) ip ${guest_ip} gw ${gateway}" >/dev/console
# --jitless: under TCG every page of code a clone runs after a restore is translated again, and V8's JIT output
# (a private copy per clone, re-optimised on the fly) is most of that. Interpreted, the agent's request path
# translates into about 32 MiB instead of over 64 and a clone answers sooner (docs/bench/vm.md); the agent is
# I/O-bound, so the interpreter costs it little.
exec /usr/local/bin/node --jitless /opt/kiln/guest-agent/guest-agent.js --port 49983
