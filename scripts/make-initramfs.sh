#!/usr/bin/env bash
# Usage: scripts/make-initramfs.sh OUT.cpio.gz
#
# Builds the test initramfs (newc cpio, gzip) from target/linux/busybox and
# target/linux/modules (scripts/fetch-kernel.sh makes both). Its /init mounts proc, sys
# and devtmpfs, prints HUSHVM-INIT-OK, loads the virtio modules in order, reads the
# first sector of /dev/vda and prints HUSHVM-DISK-OK if it starts with
# HUSHVM-DISK-MAGIC (HUSHVM-DISK-BAD and what it read otherwise), then powers off with
# `poweroff -f`. The same inputs give the same bytes: sorted entries, fixed mtimes,
# owner 0:0, no gzip timestamp.
set -euo pipefail

die() {
    echo "make-initramfs: error: $*" >&2
    exit 1
}

[ $# -eq 1 ] || die "usage: $0 OUT.cpio.gz"
case $1 in
/*) OUTPUT=$1 ;;
*) OUTPUT=$PWD/$1 ;;
esac
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export LC_ALL=C
LINUX=target/linux
[ -s "$LINUX/busybox" ] || die "$LINUX/busybox is missing: run scripts/fetch-kernel.sh"
[ -s "$LINUX/modules/modules.order" ] || die "$LINUX/modules is missing: run scripts/fetch-kernel.sh"
if ! command -v cpio >/dev/null 2>&1; then
    echo "make-initramfs: installing cpio"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cpio >/dev/null ||
        die "cpio is missing and apt-get install cpio failed"
fi

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/make-initramfs.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{bin,dev,proc,sys,lib/modules}

cp "$LINUX/busybox" "$STAGE/bin/busybox"
chmod 755 "$STAGE/bin/busybox"
for applet in sh mount umount insmod lsmod poweroff reboot dd od hexdump cat echo \
    sleep ls head tr grep mkdir mknod dmesg uname; do
    ln -s busybox "$STAGE/bin/$applet"
done

# The modules in load order; modules.order lists file names, '#' lines are comments.
grep -v '^#' "$LINUX/modules/modules.order" >"$STAGE/lib/modules/modules.order" || true
while read -r module; do
    cp "$LINUX/modules/$module" "$STAGE/lib/modules/$module"
done <"$STAGE/lib/modules/modules.order"

# The kernel opens /dev/console for init before devtmpfs is mounted; as root, give it
# the node (otherwise /init reopens the console itself once /dev is there).
mknod -m 600 "$STAGE/dev/console" c 5 1 2>/dev/null || true

cat >"$STAGE/init" <<'EOF'
#!/bin/sh
# hushvm's test init: see scripts/make-initramfs.sh.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
echo HUSHVM-INIT-OK

while read -r module; do
    # A module the kernel already has (built in or loaded) is not an error here.
    out=$(insmod "/lib/modules/$module" 2>&1) ||
        case $out in
        *"File exists"*) ;;
        *) echo "HUSHVM-INSMOD-FAILED $module: $out" ;;
        esac
done </lib/modules/modules.order

tries=0
while [ ! -b /dev/vda ] && [ "$tries" -lt 50 ]; do
    sleep 0.1
    tries=$((tries + 1))
done

magic=HUSHVM-DISK-MAGIC
if [ ! -b /dev/vda ]; then
    echo "HUSHVM-DISK-BAD no /dev/vda"
else
    # The first sector, cut to the marker's length; what is not printable shows as '.'.
    got=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -c ${#magic} | tr -c ' -~' '.')
    if [ "$got" = "$magic" ]; then
        echo HUSHVM-DISK-OK
    else
        echo "HUSHVM-DISK-BAD $got"
    fi
fi
poweroff -f
EOF
chmod 755 "$STAGE/init"

mkdir -p "$(dirname "$OUTPUT")"
(
    cd "$STAGE"
    find . -mindepth 1 -exec touch -h -d @0 {} +
    find . -mindepth 1 -printf '%P\n' | sort |
        cpio --quiet -o -H newc -R 0:0 --reproducible
) | gzip -9 -n >"$OUTPUT.tmp"
mv "$OUTPUT.tmp" "$OUTPUT"
echo "make-initramfs: $OUTPUT ($(wc -c <"$OUTPUT") bytes, $(wc -l <"$STAGE/lib/modules/modules.order") modules)"
