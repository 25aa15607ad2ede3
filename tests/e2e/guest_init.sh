#!/bin/busybox sh
# /init of the end-to-end guest: loads the virtio modules, writes a pattern to /dev/vda and
# reads it back, reads a region the host wrote before boot, prints one marker line per result
# and powers off. The host script (vhost_user_blk_qemu.sh) decides pass or fail from the
# markers and from the image; this script only reports what it saw.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "GUESTMEM-E2E: $*"; }
finish() { say "end"; sync; poweroff -f; }

for module in $(cat /modules.order); do
  insmod "/modules/$module" || say "insmod-failed $module"
done

# The device appears once virtio_blk has probed it; give it 20 seconds.
tries=0
while [ ! -b /dev/vda ] && [ "$tries" -lt 200 ]; do
  sleep 0.1
  tries=$((tries + 1))
done
if [ ! -b /dev/vda ]; then
  say "no-device"
  finish
fi
say "device-sectors $(cat /sys/block/vda/size)"

# Guest-written region: the pattern from the initramfs, written with O_DIRECT so that it
# reaches the back end now, then read back with O_DIRECT so that the page cache cannot
# answer.
write_mib=$(cat /write.mib)
write_seek_mib=$(cat /write.seek_mib)
dd if=/pattern.bin of=/dev/vda bs=1M seek="$write_seek_mib" count="$write_mib" \
   oflag=direct conv=fsync 2>/dev/null || say "write-failed"
readback=$(dd if=/dev/vda bs=1M skip="$write_seek_mib" count="$write_mib" iflag=direct \
              2>/dev/null | sha256sum | cut -d' ' -f1)
say "readback-sha256 $readback"

# Host-written region: bytes the guest never wrote, so only the back end can supply them.
host_mib=$(cat /host.mib)
host_skip_mib=$(cat /host.skip_mib)
hostsum=$(dd if=/dev/vda bs=1M skip="$host_skip_mib" count="$host_mib" iflag=direct \
             2>/dev/null | sha256sum | cut -d' ' -f1)
say "host-region-sha256 $hostsum"
finish
