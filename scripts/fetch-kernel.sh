#!/usr/bin/env bash
# Fetches Debian's stock cloud kernel and a static busybox through apt (no other
# download) for the Linux boot tests, and lays them out under target/linux/:
#   bzImage         /boot/vmlinuz-* of the package linux-image-cloud-amd64 depends on
#   vmlinux         the ELF64 inside bzImage's LZ4 payload (it carries the PVH note)
#   modules/        the virtio modules the kernel has as =m, uncompressed, and
#                   modules/modules.order: their file names in load order;
#                   modules/WANTED: the WANTED_MODULES list they were made for (a
#                   changed list makes them again from the cached .deb)
#   busybox         busybox-static's /bin/busybox
#   KERNEL_VERSION  the kernel release (uname -r), written last
#   PACKAGE         the kernel package and its version
# A second run with every output present does nothing. Runs as root without a TTY.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C

OUT=target/linux
DEBS=$OUT/debs
META=linux-image-cloud-amd64
# The modules the initramfs loads when the kernel has them as =m, each as FILE:SYMBOL
# (the module's file name without .ko, and its CONFIG_ symbol): the virtio core (the
# ring first, as HOST.md found the order to matter; 6.1's modules.dep links neither to
# the other), the MMIO and PCI transports, then the drivers of the devices the test /init checks
# (guests/linux-init): block, entropy, console, network, vsock. What they need
# (virtio_ring, the virtio_pci libraries, failover, vsock's core) comes with them from
# modules.dep, in dependency order.
WANTED_MODULES=(
    virtio_ring:VIRTIO
    virtio:VIRTIO
    virtio_mmio:VIRTIO_MMIO
    virtio_pci:VIRTIO_PCI
    virtio_blk:VIRTIO_BLK
    virtio-rng:HW_RANDOM_VIRTIO
    virtio_console:VIRTIO_CONSOLE
    virtio_net:VIRTIO_NET
    vmw_vsock_virtio_transport:VIRTIO_VSOCKETS
)

step() { echo "fetch-kernel: $*"; }
die() {
    echo "fetch-kernel: error: $*" >&2
    exit 1
}

outputs_ready() {
    local f
    for f in bzImage vmlinux busybox KERNEL_VERSION modules/modules.order; do
        [ -s "$OUT/$f" ] || return 1
    done
    [ "$(cat "$OUT/modules/WANTED" 2>/dev/null)" = "${WANTED_MODULES[*]}" ]
}

if outputs_ready; then
    step "up to date: $OUT (kernel $(cat "$OUT/KERNEL_VERSION"))"
    exit 0
fi

# Installs Debian package $2 unless command $1 exists.
need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    step "installing $2 (for $1)"
    apt-get install -y --no-install-recommends "$2" >/dev/null ||
        die "apt-get install $2 failed (needed for $1)"
    command -v "$1" >/dev/null 2>&1 || die "$1 is still missing after installing $2"
}

LISTS_UPDATED=0
update_lists() {
    [ "$LISTS_UPDATED" = 1 ] && return 1
    step "apt-get update"
    apt-get update -q >/dev/null || die "apt-get update failed"
    LISTS_UPDATED=1
}

# Prints the linux-image-* package the meta package depends on.
resolve_kernel_package() {
    apt-cache depends "$META" 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}

# Prints the cached .deb of package $1, if any.
cached_deb() {
    find "$DEBS" -maxdepth 1 -name "${1}_*.deb" -size +0 | sort | tail -n 1
}

# Downloads package $1 into $DEBS unless a .deb of it is there already; sets DEB to it.
download() {
    local pkg=$1
    DEB=$(cached_deb "$pkg")
    if [ -n "$DEB" ]; then
        step "cached: $DEB"
        return 0
    fi
    step "apt-get download $pkg"
    # apt (as root) warns that it downloads unsandboxed; only failures matter here.
    if ! (cd "$DEBS" && apt-get download -q "$pkg" >/dev/null 2>&1); then
        update_lists || die "apt-get download $pkg failed"
        # This time apt's own messages stay visible.
        (cd "$DEBS" && apt-get download -q "$pkg" >/dev/null) ||
            die "apt-get download $pkg failed after apt-get update"
    fi
    DEB=$(cached_deb "$pkg")
    [ -n "$DEB" ] || die "apt-get download $pkg left no .deb in $DEBS"
}

# Writes the ELF64 vmlinux inside bzImage $1 to $2: the payload is LZ4 (legacy frame,
# magic 02 21 4c 18); try each place the magic occurs until one decompresses to an ELF.
extract_vmlinux() {
    local image=$1 dest=$2 offset
    while read -r offset; do
        # lz4 may complain about what follows the stream; the ELF check decides.
        tail -c "+$((offset + 1))" "$image" | lz4 -dc >"$dest.tmp" 2>/dev/null || true
        if readelf -h "$dest.tmp" 2>/dev/null | grep -q 'Class:[[:space:]]*ELF64'; then
            mv "$dest.tmp" "$dest"
            step "vmlinux: LZ4 payload at offset $offset of bzImage"
            return 0
        fi
    done < <(grep -obUaP '\x02\x21\x4c\x18' "$image" | cut -d: -f1)
    rm -f "$dest.tmp"
    die "no LZ4 stream in $image decompresses to an ELF64 vmlinux"
}

# Prints, in load order, the module files (relative to the tree) that $1 needs, then $1,
# reading the modules.dep of tree $2; each file once (already printed ones are in $3).
load_order() {
    local path=$1 dep deps line i
    line=$(grep -m1 "^$path:" "$2/modules.dep") || die "$path is not in modules.dep"
    read -r -a deps <<<"${line#*:}"
    # modules.dep lists a module's dependencies last-loaded first.
    for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
        dep=${deps[i]}
        grep -qxF "$dep" "$3" || {
            echo "$dep" >>"$3"
        }
    done
    grep -qxF "$path" "$3" || echo "$path" >>"$3"
}

# Copies module file $1 (relative to tree $2), uncompressed, to directory $3 and prints
# its new file name.
copy_module() {
    local src=$2/$1 name
    name=$(basename "$1")
    case $name in
    *.ko) cp "$src" "$3/$name" ;;
    *.ko.xz) need xz xz-utils >&2 && name=${name%.xz} && xz -dc "$src" >"$3/$name" ;;
    *.ko.zst) need zstd zstd >&2 && name=${name%.zst} && zstd -qdc "$src" >"$3/$name" ;;
    *.ko.gz) name=${name%.gz} && gzip -dc "$src" >"$3/$name" ;;
    *) die "unknown module file type: $name" ;;
    esac
    echo "$name"
}

need apt-get apt
need dpkg-deb dpkg
need lz4 lz4
need readelf binutils
need depmod kmod
mkdir -p "$DEBS"

step "resolving $META"
KPKG=$(resolve_kernel_package)
if [ -z "$KPKG" ]; then
    update_lists || true
    KPKG=$(resolve_kernel_package)
fi
[ -n "$KPKG" ] || die "cannot resolve the linux-image package that $META depends on"
step "kernel package: $KPKG"

download "$KPKG"
KDEB=$DEB
download busybox-static
BDEB=$DEB

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fetch-kernel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

step "extracting $(basename "$KDEB")"
dpkg-deb -x "$KDEB" "$WORK/kernel" || die "dpkg-deb -x $KDEB failed"
step "extracting $(basename "$BDEB")"
dpkg-deb -x "$BDEB" "$WORK/busybox" || die "dpkg-deb -x $BDEB failed"

VMLINUZ=$(find "$WORK/kernel/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n 1)
[ -n "$VMLINUZ" ] || die "no /boot/vmlinuz-* in $KDEB"
RELEASE=${VMLINUZ##*/vmlinuz-}
CONFIG=$WORK/kernel/boot/config-$RELEASE
TREE=$WORK/kernel/lib/modules/$RELEASE
[ -f "$CONFIG" ] || die "no /boot/config-$RELEASE in $KDEB"
[ -d "$TREE" ] || die "no /lib/modules/$RELEASE in $KDEB"

rm -f "$OUT/KERNEL_VERSION"
step "bzImage: $RELEASE"
cp "$VMLINUZ" "$OUT/bzImage.tmp" && mv "$OUT/bzImage.tmp" "$OUT/bzImage"

extract_vmlinux "$OUT/bzImage" "$OUT/vmlinux"
# XEN_ELFNOTE_PHYS32_ENTRY is note type 18 (0x12) with owner "Xen".
readelf -n "$OUT/vmlinux" | grep -Eq '^[[:space:]]*Xen[[:space:]].*type: \(0x0*12\)' ||
    die "$OUT/vmlinux has no PVH entry note (Xen note type 0x12)"
step "vmlinux: ELF64 with a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"

step "modules: dependency order from depmod's modules.dep"
# The package ships no modules.dep (the postinst makes it): make one in the temp tree.
depmod -b "$WORK/kernel" "$RELEASE" || die "depmod failed on the extracted tree"
ORDER=$WORK/order
: >"$ORDER"
for wanted in "${WANTED_MODULES[@]}"; do
    module=${wanted%%:*}
    symbol=CONFIG_${wanted#*:}
    setting=$(grep -E "^$symbol=" "$CONFIG" | cut -d= -f2 || true)
    case $setting in
    y) step "  $module: built in" ;;
    m)
        path=$(grep -oE "^[^:]*/$module\.ko(\.(xz|zst|gz))?:" "$TREE/modules.dep" | head -n 1)
        [ -n "$path" ] || die "$module is =m in the config but not in modules.dep"
        load_order "${path%:}" "$TREE" "$ORDER"
        ;;
    *) die "$symbol is neither =y nor =m in $(basename "$CONFIG") (got '${setting}')" ;;
    esac
done
rm -rf "$OUT/modules"
mkdir -p "$OUT/modules"
while read -r path; do
    name=$(copy_module "$path" "$TREE" "$OUT/modules")
    echo "$name" >>"$OUT/modules/modules.order"
    step "  module: $name"
done <"$ORDER"
[ -s "$OUT/modules/modules.order" ] || echo "# none: every wanted module is built in" >"$OUT/modules/modules.order"
echo "${WANTED_MODULES[*]}" >"$OUT/modules/WANTED"

step "busybox"
[ -x "$WORK/busybox/bin/busybox" ] || die "no /bin/busybox in $BDEB"
cp "$WORK/busybox/bin/busybox" "$OUT/busybox.tmp" && chmod 755 "$OUT/busybox.tmp"
mv "$OUT/busybox.tmp" "$OUT/busybox"

echo "$KPKG $(dpkg-deb -f "$KDEB" Version)" >"$OUT/PACKAGE"
echo "$RELEASE" >"$OUT/KERNEL_VERSION"
step "done: $OUT (kernel $RELEASE, package $(cat "$OUT/PACKAGE"))"
