#!/usr/bin/env bash
# Usage: scripts/make-initramfs.sh [--strip-signatures] [--no-compress] [--busybox]
#                                  [--skip-modules NAME,...] OUT
#
# Builds the test initramfs (newc cpio, gzip unless --no-compress) from
# guests/linux-init/ and target/linux/modules (scripts/fetch-kernel.sh makes them; this
# script runs it first, a no-op when target/linux is up to date).
#
# /init is guests/linux-init, compiled here with the system gcc as a static program
# without libc and without SSE, x87 or MMX instructions (-mgeneral-regs-only; checked
# with objdump): the development host's KVM completes only plain integer code in the
# guest (HOST.md). As PID 1 it mounts proc, sysfs and devtmpfs, prints
# `HUSHVM-INIT-OK boottime_ms=N`, loads the modules of /lib/modules/modules.order in
# that (dependency) order with finit_module (`HUSHVM-MODULE <file> loaded|present|
# errno=N ms=N` each), checks the devices through Linux's own drivers and prints one
# `HUSHVM-CHECK <name> ok|fail <key=value ...>` line per check (tests/common/
# linux_checks.rs reads them), then `HUSHVM-DONE checks=N failed=M end=... boottime_ms=N`,
# and powers off (ACPI S5) or reboots. The kernel command line chooses:
#   hushvm.checks=blk,rng,console,serial,cpus,net,vsock   which checks (default: blk)
#   hushvm.blk=pci,mmio   the disks' transports, one disk each (default: any one disk)
#   hushvm.cpus=N         the CPUs the cpus check expects online (0-(N-1))
#   hushvm.modules=all    load every module (default: the virtio core and transports,
#                         and the drivers of the checks asked for)
#   hushvm.wait=SECONDS   the longest wait for a device (default 30): a missing device
#                         is a fail line, never a hang
#   hushvm.end=poweroff|reboot|halt   (default poweroff; add reboot=pci for 0xcf9)
#   MODULE.PARAM=VALUE    given to MODULE when /init loads it, as modprobe would (e.g.
#                         virtio_pci.force_legacy=1); the kernel reads such words only
#                         for built-in code. HUSHVM-MODULE shows them as args=...
# The checks:
#   mounts   proc, sysfs, devtmpfs mounted (always)
#   modules  every module loaded or already present (always)
#   blk.vdX  per disk: transport (pci|mmio from the parent's driver), MSI-X vectors on
#            PCI (msix=N, must be >0), first bytes HUSHVM-DISK-MAGIC (read with
#            O_DIRECT), its last 4 KiB overwritten with a block that starts
#            `HUSHVM-WRITE vdX <stamp>\n` (wrote=OFFSET stamp=HEX), fsync'd, the buffer
#            cache dropped (BLKFLSBUF) and read back with O_DIRECT, and the interrupts
#            its virtio device took (irqs=N, must be >0; on PCI msix_irqs=N, those
#            through MSI/MSI-X vectors in /proc/interrupts, must be >0 too); also prints
#            HUSHVM-DISK-OK (or -BAD) for vda
#   blk      the disks found match hushvm.blk
#   rng      hw_random's rng_current is virtio_rng.N and /dev/hwrng gives 32 bytes
#   console  a line `HUSHVM-VIRTIO-CONSOLE <stamp>\n` written to /dev/hvc0 (or the first
#            /dev/vport*) and drained; the host finds it in the console's output
#   serial   /proc/tty/driver/serial's port 0 is uart:16550A port:000003F8 (its irq:
#            Linux's IRQ number, shown), and TIOCGSERIAL on /dev/ttyS0 says PORT_16550A
#   cpus     /sys/devices/system/cpu/online is 0-(N-1) for hushvm.cpus=N
#   net      an interface bound to virtio_net (presence, MAC)
#   vsock    /dev/vsock gives a guest CID (>= 3) with the virtio transport bound
# Options:
#   --strip-signatures  removes the modules' appended signatures, so the kernel skips
#                       their SHA-256/RSA check (it taints itself once: "module
#                       verification failed"); saves emulated work on this host
#   --no-compress       a plain cpio: the kernel copies instead of inflating
#   --skip-modules NAME,...  leaves these modules (file names without .ko) out, e.g.
#                       failover,net_failover,virtio_net,vsock,vmw_vsock_virtio_transport_common,vmw_vsock_virtio_transport
#                       when no boot checks net or vsock: less for the kernel to unpack
#   --busybox           adds target/linux/busybox and its applets under /bin, for
#                       debugging with rdinit=/bin/sh (no test needs it)
# The same inputs give the same bytes: sorted entries, fixed mtimes, owner 0:0, no gzip
# timestamp.
set -euo pipefail

die() {
    echo "make-initramfs: error: $*" >&2
    exit 1
}

STRIP=0
COMPRESS=1
BUSYBOX=0
SKIP=,
while [ $# -gt 1 ]; do
    case $1 in
    --strip-signatures) STRIP=1 ;;
    --no-compress) COMPRESS=0 ;;
    --busybox) BUSYBOX=1 ;;
    --skip-modules)
        [ $# -gt 2 ] || die "--skip-modules needs a list"
        SKIP=,$2,
        shift
        ;;
    *) die "unknown option $1" ;;
    esac
    shift
done
[ $# -eq 1 ] && [ "${1#--}" = "$1" ] ||
    die "usage: $0 [--strip-signatures] [--no-compress] [--busybox] [--skip-modules NAME,...] OUT"
case $1 in
/*) OUTPUT=$1 ;;
*) OUTPUT=$PWD/$1 ;;
esac
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export LC_ALL=C
LINUX=target/linux
INIT_SRC=guests/linux-init
scripts/fetch-kernel.sh >/dev/null || die "scripts/fetch-kernel.sh failed"
[ -s "$LINUX/modules/modules.order" ] || die "$LINUX/modules is missing: run scripts/fetch-kernel.sh"
command -v gcc >/dev/null 2>&1 || die "gcc is missing (it compiles $INIT_SRC)"
command -v objdump >/dev/null 2>&1 || die "objdump is missing (binutils)"
if ! command -v cpio >/dev/null 2>&1; then
    echo "make-initramfs: installing cpio"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cpio >/dev/null ||
        die "cpio is missing and apt-get install cpio failed"
fi

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/make-initramfs.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{dev,proc,sys,lib/modules}

# -mgeneral-regs-only keeps SSE, x87 and MMX out of the code gcc writes; no libc (glibc's
# string functions use SSE) and no start files; loops stay loops (no memset calls).
gcc -std=gnu11 -O2 -Wall -Wextra -Werror -static -nostdlib -ffreestanding -fno-builtin \
    -fno-stack-protector -fno-pie -no-pie -mgeneral-regs-only \
    -fno-tree-loop-distribute-patterns -fno-asynchronous-unwind-tables -fno-unwind-tables \
    -Wl,--build-id=none -Wl,-z,noexecstack \
    -o "$STAGE/init" "$INIT_SRC"/init.c "$INIT_SRC"/lib.c "$INIT_SRC"/blk.c "$INIT_SRC"/devices.c ||
    die "compiling $INIT_SRC failed"
# Each instruction's text without symbol names; x87 mnemonics all start with f.
FORBIDDEN=$(objdump -d --no-show-raw-insn "$STAGE/init" | awk -F'\t' 'NF >= 2 { print $2 }' |
    sed 's/<[^>]*>//g' |
    grep -E '%(x|y|z)mm|%mm[0-7]|%st|^(f|emms|ldmxcsr|stmxcsr|xsave|xrstor)' | sort -u || true)
[ -z "$FORBIDDEN" ] || die "$INIT_SRC compiled to FPU or vector instructions: $FORBIDDEN"

chmod 755 "$STAGE/init"

# Removes the signature that sign-file appended to module $1: the data, then a 12-byte
# struct module_signature whose last 4 bytes are its length (big-endian), then a marker.
strip_signature() {
    local file=$1 marker='~Module signature appended~' size tail_bytes length
    size=$(stat -c %s "$file")
    [ "$size" -gt 40 ] || return 0
    [ "$(tail -c 28 "$file" | head -c 27)" = "$marker" ] || return 0
    read -r -a tail_bytes < <(od -An -v -tu1 -j $((size - 32)) -N 4 "$file")
    length=$(((tail_bytes[0] << 24) | (tail_bytes[1] << 16) | (tail_bytes[2] << 8) | tail_bytes[3]))
    [ $((28 + 12 + length)) -lt "$size" ] || die "$file: signature length $length is not credible"
    truncate -s $((size - 28 - 12 - length)) "$file"
}

# The modules in load order; modules.order lists file names, '#' lines are comments.
while read -r module; do
    case $module in
    '#'* | '') ;;
    *) [ "${SKIP#*,"${module%.ko}",}" != "$SKIP" ] || echo "$module" ;;
    esac
done <"$LINUX/modules/modules.order" >"$STAGE/lib/modules/modules.order"
for skipped in ${SKIP//,/ }; do
    grep -qxF "$skipped.ko" "$LINUX/modules/modules.order" || die "--skip-modules: no module $skipped"
done
while read -r module; do
    cp "$LINUX/modules/$module" "$STAGE/lib/modules/$module"
    [ "$STRIP" = 0 ] || strip_signature "$STAGE/lib/modules/$module"
done <"$STAGE/lib/modules/modules.order"

if [ "$BUSYBOX" = 1 ]; then
    [ -s "$LINUX/busybox" ] || die "$LINUX/busybox is missing: run scripts/fetch-kernel.sh"
    mkdir -p "$STAGE/bin"
    cp "$LINUX/busybox" "$STAGE/bin/busybox"
    chmod 755 "$STAGE/bin/busybox"
    for applet in sh mount umount insmod lsmod poweroff reboot dd od hexdump cat echo \
        sleep ls head tr grep mkdir mknod dmesg uname; do
        ln -s busybox "$STAGE/bin/$applet"
    done
fi

# The kernel opens /dev/console for init before devtmpfs is mounted; as root, give it
# the node (otherwise /init opens the console itself once /dev is there).
mknod -m 600 "$STAGE/dev/console" c 5 1 2>/dev/null || true

mkdir -p "$(dirname "$OUTPUT")"
(
    cd "$STAGE"
    find . -mindepth 1 -exec touch -h -d @0 {} +
    find . -mindepth 1 -printf '%P\n' | sort |
        cpio --quiet -o -H newc -R 0:0 --reproducible
) | if [ "$COMPRESS" = 1 ]; then gzip -9 -n; else cat; fi >"$OUTPUT.tmp"
mv "$OUTPUT.tmp" "$OUTPUT"
echo "make-initramfs: $OUTPUT ($(wc -c <"$OUTPUT") bytes, $(wc -l <"$STAGE/lib/modules/modules.order") modules)"
