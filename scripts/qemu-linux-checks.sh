#!/usr/bin/env bash
# Usage: scripts/qemu-linux-checks.sh [OUTDIR]   (default target/qemu-linux-checks)
#
# Checks the test initramfs (scripts/make-initramfs.sh) under QEMU's TCG, without KVM,
# in seconds: Debian's kernel (target/linux/vmlinux, through PVH) boots to the test
# /init, which checks QEMU's devices through Linux's own drivers. Two boots:
#   all      `-M microvm,acpi=on,pcie=on`: one virtio-blk disk on PCI (MSI-X) and one on
#            virtio-mmio (described in ACPI as LNRO0005, as hushvm does), virtio-rng and
#            a virtio-console on virtio-mmio, a virtio-net on PCI whose only peer is an
#            empty QEMU hub (no network), two CPUs, and a module parameter from the
#            command line (virtio_blk.num_request_queues=1); every check must pass and the
#            machine power off. tsc_early_khz: microvm has no HPET or PM timer, and
#            without KVM's clock TCG's TSC cannot be calibrated otherwise.
#            no_timer_check (both boots): on a loaded host TCG can miss the kernel's
#            IO-APIC timer test ("IO-APIC + timer doesn't work!", a panic).
#   failures `-M pc`: a disk with a wrong marker on PCI where MMIO is expected, a second
#            PCI disk without MSI-X (vectors=0: Linux falls back to INTx), no rng,
#            console, net or vsock, one CPU expected of two, an unknown check name,
#            `hushvm.wait=2`: every one of these must fail (no hang) and the machine
#            reboot through 0xcf9 (`reboot=pci`).
# Writes OUTDIR/{all,failures}.log (COM1), OUTDIR/all.vc (the virtio-console's output)
# and the disk images; prints the HUSHVM lines; exits non-zero if a boot did not end as
# described. Needs qemu-system-x86 (installed through apt if missing). No network.
set -euo pipefail

die() {
    echo "qemu-linux-checks: error: $*" >&2
    exit 1
}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:-target/qemu-linux-checks}
mkdir -p "$OUT"
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    echo "qemu-linux-checks: installing qemu-system-x86"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends qemu-system-x86 >/dev/null ||
        die "qemu-system-x86_64 is missing and apt-get install qemu-system-x86 failed"
fi
scripts/make-initramfs.sh "$OUT/initramfs.cpio.gz"

# A 1 MiB disk whose first bytes are marker $2.
make_disk() {
    head -c $((1 << 20)) /dev/zero >"$1"
    printf '%s' "$2" | dd of="$1" conv=notrunc status=none
}
make_disk "$OUT/pci.img" HUSHVM-DISK-MAGIC
make_disk "$OUT/mmio.img" HUSHVM-DISK-MAGIC
make_disk "$OUT/bad.img" XUSHVM-DISK-MAGIC
make_disk "$OUT/intx.img" HUSHVM-DISK-MAGIC
rm -f "$OUT/all.vc"

QEMU=(timeout 120 qemu-system-x86_64 -accel tcg -cpu max -m 256M -smp 2 -nographic
    -no-reboot -nic none -kernel target/linux/vmlinux -initrd "$OUT/initramfs.cpio.gz")

echo "qemu-linux-checks: boot 'all' (microvm, PCI and MMIO)"
"${QEMU[@]}" -M microvm,acpi=on,pcie=on \
    -append "console=ttyS0 no_timer_check tsc_early_khz=2000000 hushvm.checks=blk,rng,console,serial,cpus,net hushvm.blk=pci,mmio hushvm.cpus=2 virtio_blk.num_request_queues=1" \
    -drive file="$OUT/pci.img",if=none,id=pci,format=raw -device virtio-blk-pci,drive=pci,disable-legacy=on \
    -drive file="$OUT/mmio.img",if=none,id=mmio,format=raw -device virtio-blk-device,drive=mmio \
    -device virtio-rng-device \
    -device virtio-serial-device -chardev file,id=vc,path="$OUT/all.vc" -device virtconsole,chardev=vc \
    -netdev hubport,id=net0,hubid=0 -device virtio-net-pci,netdev=net0,disable-legacy=on \
    >"$OUT/all.log" 2>&1 || die "boot 'all' failed (exit $?): see $OUT/all.log"
grep -a '^HUSHVM' "$OUT/all.log"
grep -aq '^HUSHVM-DONE checks=10 failed=0 end=poweroff' "$OUT/all.log" ||
    die "boot 'all': not every check passed"
grep -aq 'reboot: Power down' "$OUT/all.log" || die "boot 'all' did not power off"

echo "qemu-linux-checks: boot 'failures' (pc)"
"${QEMU[@]}" -M pc \
    -append "console=ttyS0 no_timer_check reboot=pci hushvm.checks=blk,rng,console,serial,cpus,net,vsock,bogus hushvm.blk=mmio hushvm.cpus=1 hushvm.wait=2 hushvm.end=reboot" \
    -drive file="$OUT/bad.img",if=none,id=bad,format=raw -device virtio-blk-pci,drive=bad,disable-legacy=on \
    -drive file="$OUT/intx.img",if=none,id=intx,format=raw -device virtio-blk-pci,drive=intx,disable-legacy=on,vectors=0 \
    >"$OUT/failures.log" 2>&1 || die "boot 'failures' failed (exit $?): see $OUT/failures.log"
grep -a '^HUSHVM' "$OUT/failures.log"
grep -aq '^HUSHVM-DONE checks=12 failed=9 end=reboot' "$OUT/failures.log" ||
    die "boot 'failures': not the 9 failures expected"
grep -aq 'reboot: Restarting system' "$OUT/failures.log" || die "boot 'failures' did not reboot"
echo "qemu-linux-checks: both boots ended as expected ($OUT)"
