/* virtio-blk through Linux's own driver: each /dev/vdX's transport (and MSI-X on PCI),
 * its first bytes (HUSHVM-DISK-MAGIC), and a 4 KiB block written to its end, flushed
 * and read back from the device (O_DIRECT, after the buffer cache is dropped). */
#include "checks.h"

#define BLOCK 4096
#define MAX_DISKS 8
static const char MAGIC[] = "HUSHVM-DISK-MAGIC";

static u8 io_block[BLOCK] __attribute__((aligned(BLOCK)));
static u8 pattern[BLOCK];

struct disks {
    char names[MAX_DISKS][16];
    u32 count;
};

static int add_disk(const char *name, void *ctx)
{
    struct disks *d = ctx;
    if (!starts_with(name, "vd") || d->count >= MAX_DISKS || slen(name) >= 16)
        return 0;
    /* Insert in name order: vda before vdb whatever order the directory lists. */
    u32 at = d->count++;
    for (; at > 0; at--) {
        const char *prev = d->names[at - 1];
        u64 pl = slen(prev), nl = slen(name);
        int before = nl < pl;
        for (u64 i = 0; nl == pl && i < nl; i++)
            if (name[i] != prev[i]) {
                before = name[i] < prev[i];
                break;
            }
        if (!before)
            break;
        memcpy(d->names[at], prev, 16);
    }
    memcpy(d->names[at], name, slen(name) + 1);
    return 0;
}

/* Waits (bounded) until at least `wanted` vd* disks are in /sys/block. */
static void find_disks(struct disks *d, u32 wanted)
{
    u64 deadline = now_ms() + wait_limit_ms();
    for (;;) {
        d->count = 0;
        each_entry("/sys/block", add_disk, d);
        if (d->count >= wanted || now_ms() >= deadline)
            return;
        sleep_ms(50);
    }
}

static void sys_path(struct buf *b, const char *disk, const char *rest)
{
    b->len = 0;
    buf_str(b, "/sys/block/");
    buf_str(b, disk);
    buf_str(b, rest);
}

/* MSI-X vectors of the PCI function under the disk: entries of msi_irqs whose mode is
 * "msix". */
struct msi_count {
    const char *dir;
    u32 msix;
};

static int count_msix(const char *name, void *ctx)
{
    struct msi_count *c = ctx;
    BUF(path, 256);
    char mode[16];
    buf_str(&path, c->dir);
    buf_str(&path, "/");
    buf_str(&path, name);
    if (read_text(buf_cstr(&path), mode, sizeof mode) > 0 && str_eq(mode, "msix"))
        c->msix++;
    return 0;
}

static u32 msix_vectors(const char *disk)
{
    BUF(dir, 256);
    sys_path(&dir, disk, "/device/../msi_irqs");
    struct msi_count c = {buf_cstr(&dir), 0};
    each_entry(c.dir, count_msix, &c);
    return c.msix;
}

static void fill_pattern(const char *disk, u64 stamp, struct buf *detail)
{
    BUF(header, 64);
    buf_str(&header, "HUSHVM-WRITE ");
    buf_str(&header, disk);
    buf_str(&header, " ");
    buf_hex(&header, stamp, 16);
    buf_str(&header, "\n");
    for (u32 i = 0; i < BLOCK; i++)
        pattern[i] = (u8)((stamp >> ((i & 7) * 8)) ^ (i * 37));
    memcpy(pattern, header.text, header.len);
    buf_key(detail, "stamp");
    buf_hex(detail, stamp, 16);
}

/* Reads BLOCK bytes at `offset` from the device itself; 0 on success. */
static int read_direct(const char *dev, u64 offset, struct buf *detail)
{
    s64 fd = sys_open(dev, O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (fd < 0) {
        buf_key(detail, "open_direct_errno");
        buf_dec(detail, (u64)-fd);
        return -1;
    }
    s64 n = sys_pread((int)fd, io_block, BLOCK, offset);
    sys_close((int)fd);
    if (n != BLOCK) {
        buf_key(detail, "read_result");
        buf_str(detail, n < 0 ? "-" : "");
        buf_dec(detail, (u64)(n < 0 ? -n : n));
        return -1;
    }
    return 0;
}

/* Writes the pattern at `offset`, flushes it (fsync: a virtio-blk FLUSH when the disk
 * caches writes) and drops the buffer cache (BLKFLSBUF); 0 on success. */
static int write_flush(const char *dev, u64 offset, struct buf *detail)
{
    s64 fd = sys_open(dev, O_RDWR | O_CLOEXEC);
    const char *step = "open";
    s64 err = fd;
    if (fd >= 0) {
        s64 n = sys_pwrite((int)fd, pattern, BLOCK, offset);
        err = n == BLOCK ? 0 : (n < 0 ? n : -1);
        step = "write";
        if (!err) {
            err = sys_fsync((int)fd);
            step = "fsync";
        }
        if (!err) {
            err = sys_ioctl((int)fd, BLKFLSBUF, 0);
            step = "blkflsbuf";
        }
        sys_close((int)fd);
    }
    if (err) {
        buf_key(detail, step);
        buf_str(detail, "errno");
        buf_dec(detail, (u64)-err);
        return -1;
    }
    return 0;
}

static int check_magic(const char *dev, struct buf *detail)
{
    buf_key(detail, "magic");
    if (read_direct(dev, 0, detail))
        return 0;
    u64 n = sizeof MAGIC - 1;
    if (mem_eq(io_block, MAGIC, n)) {
        buf_str(detail, "ok");
        return 1;
    }
    buf_str(detail, "bad:");
    for (u64 i = 0; i < n; i++) {
        char c = (char)io_block[i];
        buf_mem(detail, (c > ' ' && c <= '~') ? &c : ".", 1);
    }
    return 0;
}

/* The write, flush and read-back of the disk's last 4 KiB. */
static int check_write(const char *disk, const char *dev, struct buf *detail)
{
    BUF(path, 128);
    char text[32];
    sys_path(&path, disk, "/size");
    s64 got = read_text(buf_cstr(&path), text, sizeof text);
    u64 sectors = 0;
    for (s64 i = 0; i < got && text[i] >= '0' && text[i] <= '9'; i++)
        sectors = sectors * 10 + (u64)(text[i] - '0');
    buf_key(detail, "bytes");
    buf_dec(detail, sectors * 512);
    sys_path(&path, disk, "/ro");
    if (read_text(buf_cstr(&path), text, sizeof text) > 0 && str_eq(text, "1")) {
        buf_key(detail, "rw");
        buf_str(detail, "skipped-readonly");
        return 1;
    }
    if (sectors * 512 < 2 * BLOCK) {
        buf_key(detail, "rw");
        buf_str(detail, "too-small");
        return 0;
    }
    sys_path(&path, disk, "/queue/write_cache");
    if (read_text(buf_cstr(&path), text, sizeof text) > 0) {
        buf_key(detail, "cache");
        buf_str(detail, str_eq(text, "write back") ? "back" : "through");
    }
    u64 offset = (sectors * 512 - BLOCK) / BLOCK * BLOCK;
    fill_pattern(disk, boot_stamp(), detail);
    buf_key(detail, "wrote");
    buf_dec(detail, offset);
    int ok = write_flush(dev, offset, detail) == 0 && read_direct(dev, offset, detail) == 0;
    buf_key(detail, "readback");
    ok = ok && mem_eq(io_block, pattern, BLOCK);
    buf_str(detail, ok ? "ok" : "bad");
    return ok;
}

/* One disk's line, `blk.vdX`; its transport is left in `transport`. */
static int check_disk(const char *disk, char *transport, u64 cap)
{
    BUF(detail, 512);
    BUF(path, 128);
    BUF(dev, 32);
    char driver[64], device[32];
    buf_str(&dev, "/dev/");
    buf_str(&dev, disk);
    sys_path(&path, disk, "/device/../driver");
    if (link_base(buf_cstr(&path), driver, sizeof driver) < 0)
        memcpy(driver, "none", 5);
    const char *kind = transport_of_driver(driver);
    memcpy(transport, kind, slen(kind) + 1 < cap ? slen(kind) + 1 : cap);
    transport[cap - 1] = 0;
    sys_path(&path, disk, "/device");
    if (link_base(buf_cstr(&path), device, sizeof device) < 0)
        memcpy(device, "none", 5);
    buf_key(&detail, "transport");
    buf_str(&detail, transport);
    buf_key(&detail, "device");
    buf_str(&detail, device);
    int ok = 1;
    int pci = str_eq(transport, "pci");
    if (pci) {
        u32 vectors = msix_vectors(disk);
        buf_key(&detail, "msix");
        buf_dec(&detail, vectors);
        ok = vectors > 0;
    }
    int magic = check_magic(buf_cstr(&dev), &detail);
    if (str_eq(disk, "vda"))
        say(magic ? "HUSHVM-DISK-OK" : "HUSHVM-DISK-BAD");
    ok = check_write(disk, buf_cstr(&dev), &detail) && magic && ok;
    /* After the I/O, so a working disk has taken at least one interrupt, and on PCI
     * as an MSI-X message. */
    u64 msi_irqs;
    u64 irqs = interrupts_of(device, &msi_irqs);
    buf_key(&detail, "irqs");
    buf_dec(&detail, irqs);
    if (pci) {
        buf_key(&detail, "msix_irqs");
        buf_dec(&detail, msi_irqs);
    }
    ok = ok && irqs > 0 && (!pci || msi_irqs > 0);
    BUF(name, 32);
    buf_str(&name, "blk.");
    buf_str(&name, disk);
    check_line(buf_cstr(&name), ok, &detail);
    return ok;
}

void check_blk(void)
{
    u32 len = 0;
    const char *wanted = cmdline_value("hushvm.blk", &len);
    u32 expected = wanted ? list_count(wanted, len) : 1;
    struct disks disks;
    find_disks(&disks, expected);
    BUF(detail, 256);
    buf_key(&detail, "expected");
    buf_mem(&detail, wanted ? wanted : "any", wanted ? len : 3);
    buf_key(&detail, "found");
    int ok = disks.count >= expected && disks.count > 0;
    u32 matched_pci = 0, matched_mmio = 0;
    for (u32 i = 0; i < disks.count; i++) {
        char transport[32];
        ok = check_disk(disks.names[i], transport, sizeof transport) && ok;
        buf_str(&detail, i ? "," : "");
        buf_str(&detail, disks.names[i]);
        buf_str(&detail, ":");
        buf_str(&detail, transport);
        matched_pci += str_eq(transport, "pci");
        matched_mmio += str_eq(transport, "mmio");
    }
    if (!disks.count)
        buf_str(&detail, "none");
    if (wanted) {
        /* Each transport named once per disk expected on it. */
        u32 want_pci = list_count_of(wanted, len, "pci");
        u32 want_mmio = list_count_of(wanted, len, "mmio");
        ok = ok && matched_pci == want_pci && matched_mmio == want_mmio &&
             want_pci + want_mmio == expected;
    }
    check_line("blk", ok, &detail);
}
