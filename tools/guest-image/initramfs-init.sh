#!/bin/busybox sh
# PID 1 of the initramfs: load the virtio drivers the Debian cloud kernel ships as
# modules, then hand over to the ext4 rootfs on /dev/vda.
/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# Order matters: each module depends on the ones before it.
for module in virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net; do
  insmod "/lib/modules/${module}.ko" || echo "kiln-initramfs: insmod ${module} failed" >/dev/console
done

# Acceleration probe: the host only wants to know that this kernel runs to userspace.
if grep -q 'kiln.probe=1' /proc/cmdline; then
  echo "KILN_PROBE_OK $(uname -r)" >/dev/console
  reboot -f
fi

tries=0
while [ ! -b /dev/vda ]; do
  tries=$((tries + 1))
  if [ "$tries" -gt 500 ]; then
    echo "kiln-initramfs: /dev/vda did not appear" >/dev/console
    reboot -f
  fi
  usleep 10000
done

mkdir -p /newroot
if ! mount -t ext4 -o rw,noatime /dev/vda /newroot; then
  echo "kiln-initramfs: cannot mount /dev/vda" >/dev/console
  reboot -f
fi

mount --move /dev /newroot/dev
umount /proc /sys
# Templates built from images carry a static tini of Kiln's own (the image may have none, or one for another libc).
tini=/usr/bin/tini
[ -x /newroot/opt/kiln/bin/tini ] && tini=/opt/kiln/bin/tini
exec switch_root /newroot "$tini" -g -- /opt/kiln/init
