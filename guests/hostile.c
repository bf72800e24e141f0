/* Workload "hostile": a guest that attacks hushvm (issue 12). From `seed=N` a xorshift
 * generator drives `ops=M` operations, each one of: a port access of 1, 2 or 4 bytes
 * (biased toward the devices' ports), an MMIO access of 1, 2, 4 or 8 bytes in the device
 * windows (virtio-mmio slots, PCI BARs, ECAM, the PCI window, a light touch of the
 * IOAPIC and LAPIC), a PCI configuration access through 0xCF8/0xCFC (BAR moves, MSI-X
 * capability and table), a virtio transport poked register by register, a virtqueue set
 * up at random addresses, a random descriptor chain followed by a doorbell, and
 * `rep outs`/`rep ins` with counts up to 64 KiB. Both transports are attacked: whichever
 * the host placed answers, the other is unclaimed space.
 *
 * It must stay alive to be useful, so it never asks to stop (no write to 0xf4-0xf7, no
 * reset through 0xcf9 or 0x64, no ACPI S5), and every guest-physical address it hands a
 * device lies in the scratch area (8-16 MiB, which nothing else uses) or outside RAM:
 * devices may write only there (with zones=0, rarely, a device may follow a descriptor
 * its own writes made, such as a used ring laid over a descriptor table, and derail the
 * guest: the run still ends with a clear status). MSI-X messages use fixed or
 * lowest-priority delivery (an NMI or INIT would end the guest, not test hushvm).
 *
 * `zones=1` (for a writable disk) also makes sure no block request can be a write: the
 * scratch area is split so that what devices read (descriptor tables, avail rings,
 * readable buffers) is never what devices write (used rings, writable buffers), readable
 * buffers never hold a byte 1 (so a request type, little-endian, is never T_OUT = 1), no
 * descriptor is indirect, queue addresses reach a transport only whole, and no BAR write
 * is made that hushvm would refuse (bar_write_refused). The host then checks the image
 * is unchanged.
 *
 * With more than one vCPU (and zones=0: the zone checks assume no one else moves BARs
 * meanwhile) every AP runs M operations of its own at the same time, from the same
 * generator, so devices see accesses from several vCPUs at once.
 *
 * Prints "hostile: seed=N ops=M ... done" and exits with status 0 (hushvm's 1). */
#include "irq.h"
#include "lib.h"

#define MIB (1024u * 1024u)
#define SCRATCH (8 * MIB)
#define SCRATCH_END (16 * MIB)
/* zones=1: descriptor tables, avail rings, readable buffers, then writable ones. */
#define Z_DESC SCRATCH
#define Z_AVAIL (SCRATCH + 0x10000)
#define Z_READ (SCRATCH + 0x20000)
#define Z_WRITE (SCRATCH + 0x40000)
#define STRING_BUFFER (SCRATCH_END - 0x20000)
#define VIRTIO_MMIO 0xc0000000u
#define PCI_WINDOW 0xc1000000u
#define ECAM 0xe0000000u
#define IOAPIC 0xfec00000u
#define LAPIC 0xfee00000u
#define QUEUES 3
#define DEVICES 6
#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4

static uint32_t state, zones, ram_top;
/* Set while a queue is set up well-formed, so that devices get chains to serve. */
static int tidy;

static uint32_t rnd(void)
{
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    return state;
}
static uint32_t below(uint32_t n) { return n ? rnd() % n : 0; }
static int chance(uint32_t n) { return below(n) == 0; }

/* Values that hit edges more often than uniform ones do. */
static uint32_t value(void)
{
    static const uint32_t edges[] = {0, 1, 2, 0xff, 0xffff, 0xffffffff, 0x80000000, 0x7fffffff, 0x10, 0x1000};
    return chance(3) ? edges[below(sizeof edges / sizeof edges[0])] : rnd();
}

/* outl and inw come from lib.h. */

static void port_out(uint16_t port, int size, uint32_t v)
{
    if (size == 1) outb(port, (uint8_t)v);
    else if (size == 2) outw(port, (uint16_t)v);
    else outl(port, v);
}
static uint32_t port_in(uint16_t port, int size)
{
    return size == 1 ? inb(port) : size == 2 ? inw(port) : inl(port);
}

static void mmio_write(uint32_t addr, int size, uint32_t v)
{
    if (size == 1) *(volatile uint8_t *)addr = (uint8_t)v;
    else if (size == 2) *(volatile uint16_t *)addr = (uint16_t)v;
    else if (size == 4) *(volatile uint32_t *)addr = v;
    else {
        /* An 8-byte access: MMX movq, which KVM's emulator knows. */
        uint32_t pair[2] = {v, rnd()};
        __asm__ volatile("movq (%0), %%mm0\n\tmovq %%mm0, (%1)" : : "r"(pair), "r"(addr) : "memory");
    }
}
static uint32_t mmio_read(uint32_t addr, int size)
{
    if (size == 1) return *(volatile uint8_t *)addr;
    if (size == 2) return *(volatile uint16_t *)addr;
    if (size == 4) return *(volatile uint32_t *)addr;
    uint32_t pair[2];
    __asm__ volatile("movq (%1), %%mm0\n\tmovq %%mm0, (%0)" : : "r"(pair), "r"(addr) : "memory");
    return pair[0];
}

/* ---- Ports ---- */

/* Would this write stop the machine? The debug exit, a reset through 0xcf9 or the
 * i8042, ACPI S5 (SLP_EN is bit 13 of PM1a control, bit 5 of port 0x605). */
static uint32_t harmless(uint16_t port, int size, uint32_t v, int *skip)
{
    *skip = 0;
    for (int i = 0; i < size; i++) {
        uint16_t p = (uint16_t)(port + i);
        uint32_t shift = 8u * (uint32_t)i;
        if (p >= 0xf4 && p <= 0xf7) *skip = 1;
        if (p == 0xcf9) v &= ~(4u << shift);
        if (p == 0x605) v &= ~(0x20u << shift);
        if (p == 0x64 && ((v >> shift) & 0xff) == 0xfe) v ^= 1u << shift;
        /* zones=1: configuration writes only through op_pci_config's checks. */
        if (zones && p >= 0xcfc && p <= 0xcff) *skip = 1;
    }
    return v;
}

static const uint16_t device_ports[] = {
    0x60, 0x61, 0x64, 0x70, 0x71, 0x80, 0x3f8, 0x3f9, 0x3fa, 0x3fb, 0x3fc, 0x3fd, 0x3fe,
    0x3ff, 0x510, 0x511, 0x1f0, 0x1f7, 0x600, 0x602, 0x604, 0x608, 0xcf8, 0xcf9, 0xcfc,
    0xcfd, 0xcfe, 0xcff, 0xb00, 0xb04, 0xb08, 0x20, 0x21, 0xa0, 0x4d0, 0x92};

static uint16_t pick_port(void)
{
    uint32_t r = below(10);
    if (r < 6) return (uint16_t)(device_ports[below(sizeof device_ports / 2)] + (chance(4) ? below(4) : 0));
    if (r < 7) return (uint16_t)(0xd00 + below(0x10000 - 0xd00));
    return (uint16_t)rnd();
}

static void op_port(void)
{
    uint16_t port = pick_port();
    int size = 1 << below(3), skip;
    if (chance(2)) {
        port_in(port, size);
        return;
    }
    uint32_t v = harmless(port, size, value(), &skip);
    if (!skip) port_out(port, size, v);
}

/* rep outs/ins: one element per exit out, 512 per exit in; large counts are rare so a
 * run stays short. Ports whose data could stop the machine are left out for outs. */
static void op_string(void)
{
    uint16_t port = pick_port();
    int size = 1 << below(2);
    uint32_t bytes = chance(24) ? 1 + below(0x10000) : 1 + below(256);
    uint32_t count = bytes / (uint32_t)size + 1;
    uint32_t buffer = STRING_BUFFER;
    if (chance(2)) {
        __asm__ volatile("cld\n\trep insb" : "+D"(buffer), "+c"(count) : "d"(port) : "memory");
        return;
    }
    int skip = 0;
    for (int i = 0; i < size; i++) {
        uint16_t p = (uint16_t)(port + i);
        if ((p >= 0xf4 && p <= 0xf7) || p == 0x64 || p == 0xcf9 || p == 0x605) skip = 1;
        if (zones && p >= 0xcfc && p <= 0xcff) skip = 1;
    }
    if (skip) return;
    if (size == 1)
        __asm__ volatile("cld\n\trep outsb" : "+S"(buffer), "+c"(count) : "d"(port) : "memory");
    else
        __asm__ volatile("cld\n\trep outsw" : "+S"(buffer), "+c"(count) : "d"(port) : "memory");
}

/* ---- PCI ---- */

struct function {
    uint32_t bdf, bar0, msix_cap, window_cap;
};
static struct function functions[8];
static uint32_t function_count;

static uint32_t cfg_read(uint32_t bdf, uint32_t offset)
{
    outl(0xcf8, 0x80000000u | bdf << 8 | (offset & 0xfc));
    return inl(0xcfc);
}
static void cfg_write(uint32_t bdf, uint32_t offset, int size, uint32_t v)
{
    outl(0xcf8, 0x80000000u | bdf << 8 | (offset & 0xfc));
    port_out((uint16_t)(0xcfc + (offset & 3)), size, v);
}

static void pci_scan(void)
{
    for (uint32_t dev = 0; dev < 32 && function_count < 8; dev++) {
        uint32_t bdf = dev << 3;
        if ((cfg_read(bdf, 0) & 0xffff) != 0x1af4) continue;
        struct function *f = &functions[function_count++];
        f->bdf = bdf;
        f->bar0 = cfg_read(bdf, 0x10) & ~0xfu;
        for (uint32_t cap = cfg_read(bdf, 0x34) & 0xfc, n = 0; cap && n < 16; n++) {
            uint32_t head = cfg_read(bdf, cap);
            if ((head & 0xff) == 0x11) f->msix_cap = cap;
            if ((head & 0xff) == 0x09 && ((head >> 24) & 0xff) == 5) f->window_cap = cap;
            cap = (head >> 8) & 0xfc;
        }
    }
}

/* BAR 0's address if the guest can reach it as MMIO (below 4 GiB, in the device hole). */
static uint32_t bar_now(const struct function *f)
{
    uint32_t lo = cfg_read(f->bdf, 0x10) & ~0xfu, hi = cfg_read(f->bdf, 0x14);
    return hi == 0 && lo >= VIRTIO_MMIO && lo < IOAPIC - 0x8000 ? lo : 0;
}

/* zones=1 relies on each BAR register saying where its device answers, so that the
 * writes it leaves out (queue addresses) are left out where the device really is. hushvm
 * keeps a device put, with the register changed, when a move would overlap another
 * device or ECAM, leave the address space, or go to 0; so with zones=1 a BAR write that
 * would do that is not made, writes of less than a dword are not made (their result is
 * harder to foresee), and a sizing write is undone at once. */
static int bar_write_refused(uint32_t bdf, uint32_t offset, int size, uint32_t v)
{
    if (!zones || offset < 0x10 || offset >= 0x18) return 0;
    int self = -1;
    for (uint32_t i = 0; i < function_count; i++)
        if (functions[i].bdf == bdf) self = (int)i;
    if (self < 0) return 0;
    if (size != 4) return 1;
    uint32_t lo = cfg_read(bdf, 0x10), hi = cfg_read(bdf, 0x14);
    if (offset == 0x10) lo = v; else hi = v;
    lo &= ~0x7fffu; /* 32 KiB: the low bits are read-only */
    if ((lo | hi) == 0 || (hi == 0xffffffff && lo >= 0xffff8000)) return 1;
    if (hi == 0 && lo + 0x8000 > ECAM && lo < ECAM + 0x10000000) return 1;
    if (hi == 0 && lo + 0x8000 > VIRTIO_MMIO && lo < VIRTIO_MMIO + 0x10000) return 1;
    for (uint32_t i = 0; i < function_count; i++) {
        if ((int)i == self) continue;
        uint32_t olo = cfg_read(functions[i].bdf, 0x10) & ~0xfu, ohi = cfg_read(functions[i].bdf, 0x14);
        if (ohi == hi && lo + 0x8000 > olo && lo < olo + 0x8000) return 1;
    }
    return 0;
}

/* A configuration write, minding bar_write_refused; a sizing write with zones=1 is
 * followed by the old value at once. */
static void cfg_write_checked(uint32_t bdf, uint32_t offset, int size, uint32_t v)
{
    if (zones && size == 4 && v == 0xffffffff && offset >= 0x10 && offset < 0x18) {
        uint32_t old = cfg_read(bdf, offset);
        cfg_write(bdf, offset, 4, v);
        cfg_write(bdf, offset, 4, old);
        return;
    }
    if (!bar_write_refused(bdf, offset, size, v)) cfg_write(bdf, offset, size, v);
}

/* Puts every function back where it was, decoding and bus-mastering, so that later
 * operations reach the devices again. */
static void pci_repair(void)
{
    for (uint32_t i = 0; i < function_count; i++) {
        cfg_write_checked(functions[i].bdf, 0x10, 4, functions[i].bar0 | 4);
        cfg_write_checked(functions[i].bdf, 0x14, 4, 0);
        cfg_write(functions[i].bdf, 0x04, 2, 0x6);
    }
}

static uint32_t bar_value(void)
{
    switch (below(6)) {
    case 0: return 0xffffffff; /* sizing */
    case 1: return functions[below(function_count)].bar0; /* onto another device */
    case 2: return PCI_WINDOW + below(0x1f000000) / 0x8000 * 0x8000;
    case 3: return VIRTIO_MMIO + below(16) * 0x1000; /* the virtio-mmio slots */
    case 4: return ECAM + below(0x1000) * 0x1000;
    default: return rnd();
    }
}

static void op_pci_config(void)
{
    if (!function_count) {
        cfg_write(below(256), below(256), 4, value());
        return;
    }
    struct function *f = &functions[below(function_count)];
    uint32_t bdf = chance(8) ? below(0x10000) : f->bdf;
    uint32_t offset;
    switch (below(5)) {
    case 0: offset = 0x04; break;
    case 1: offset = 0x10 + 4 * below(6); break;
    case 2: offset = f->msix_cap + below(12); break;
    default: offset = below(256);
    }
    int size = 1 << below(3);
    offset &= ~(uint32_t)(size - 1);
    if (chance(2)) {
        outl(0xcf8, 0x80000000u | bdf << 8 | (offset & 0xfc));
        port_in((uint16_t)(0xcfc + (offset & 3)), size);
        return;
    }
    /* zones=1: the pci_cfg window reaches BAR 0 through configuration space, queue
     * addresses included; it is only read. */
    if (zones && f->window_cap && offset >= f->window_cap + 16 && offset < f->window_cap + 20) return;
    uint32_t v = offset >= 0x10 && offset < 0x28 ? bar_value() : value();
    if (offset == f->msix_cap + 2 && chance(2)) v = 0x8000 | (chance(4) ? 0x4000 : 0);
    cfg_write_checked(bdf, offset, size, v);
}

/* ECAM: the same configuration space as MMIO; writes leave BARs and the window alone. */
static void op_ecam(void)
{
    uint32_t bdf = function_count && chance(2) ? functions[below(function_count)].bdf : below(0x10000);
    uint32_t offset = below(0x1000), addr = ECAM + (bdf << 12) + offset;
    int size = 1 << below(3);
    addr &= ~(uint32_t)(size > 4 ? 3 : size - 1);
    if (chance(2) || (zones && offset < 0x100)) mmio_read(addr, size);
    else mmio_write(addr, size, value());
}

/* ---- Guest-physical addresses handed to devices ---- */

enum zone { DESC, AVAIL, READ, WRITE };

/* An address outside RAM: above it, in the device hole, above 4 GiB, or at the very top
 * (where addr + len overflows). Returned as the low and high halves. */
static uint32_t outside(uint32_t *high)
{
    *high = 0;
    switch (below(4)) {
    case 0: return ram_top + below(VIRTIO_MMIO - ram_top);
    case 1: return VIRTIO_MMIO + rnd() % 0x3fffffffu;
    case 2: *high = 1 + below(0xffff); return rnd();
    default: *high = 0xffffffff; return 0xfffffff0u + below(16);
    }
}

static uint32_t inside(enum zone z, uint32_t align)
{
    uint32_t base = SCRATCH, size = SCRATCH_END - SCRATCH - 0x20000;
    if (zones) {
        switch (z) {
        case DESC: base = Z_DESC, size = 0x10000 - 0x1000; break; /* a 128-entry table fits */
        case AVAIL: base = Z_AVAIL, size = 0x10000 - 0x200; break;
        case READ: base = Z_READ, size = 0x20000; break;
        default: base = Z_WRITE, size = STRING_BUFFER - Z_WRITE; break;
        }
    } else if (!tidy && chance(8)) {
        align = 1; /* unaligned: the device must refuse it, not trip on it */
    }
    return (base + below(size)) & ~(align - 1);
}

static uint32_t device_address(enum zone z, uint32_t align, uint32_t *high)
{
    *high = 0;
    if (!tidy && chance(8)) return outside(high);
    return inside(z, align);
}

static int in_scratch(uint32_t addr, uint32_t high) { return high == 0 && addr >= SCRATCH && addr < SCRATCH_END - 0x1000; }

/* zones=1: a readable buffer never holds a byte 1. */
static uint8_t readable_byte(uint8_t b) { return zones && b == 1 ? 0x81 : b; }

static uint32_t buffer_len(void)
{
    static const uint32_t lens[] = {0, 1, 16, 17, 512, 4096, 0x10000, 0xffffffff};
    return chance(2) ? lens[below(8)] : below(0x2000);
}

/* One descriptor at `at`: flags, next and length at random; its buffer where its
 * direction may point. */
static void make_desc(uint32_t at, uint16_t size)
{
    volatile uint32_t *d = (volatile uint32_t *)at;
    uint32_t flags = zones ? rnd() & (F_NEXT | F_WRITE) : chance(8) ? rnd() & 0xffff : rnd() & 7;
    uint32_t next = chance(4) ? below(0x10000) : below(size ? size : 16), high;
    uint32_t addr = device_address(flags & F_WRITE ? WRITE : READ, flags & F_INDIRECT ? 16 : 1, &high);
    d[0] = addr;
    d[1] = high;
    d[2] = flags & F_INDIRECT ? 16 * (1 + below(8)) : buffer_len();
    d[3] = flags | next << 16;
}

/* A block request header where a readable buffer starts: any type (never T_OUT with
 * zones=1), any sector. */
static void make_header(uint32_t at)
{
    static const uint32_t types[] = {0, 1, 4, 8, 2, 0xffffffff};
    uint32_t type = types[below(6)];
    if (zones && type == 1) type = 0;
    uint32_t sector = chance(2) ? below(64) : rnd(), sector_high = chance(4) ? rnd() : 0;
    uint32_t words[4] = {type, rnd(), sector, sector_high};
    const uint8_t *bytes = (const uint8_t *)words;
    for (int i = 0; i < 16; i++) ((volatile uint8_t *)at)[i] = readable_byte(bytes[i]);
}

static void zones_init(void)
{
    for (uint32_t at = Z_DESC; at < Z_AVAIL; at += 16) make_desc(at, 16);
    for (uint32_t at = Z_READ; at < Z_WRITE; at += 4) {
        uint32_t v = rnd();
        for (int i = 0; i < 4; i++) ((volatile uint8_t *)at)[i] = readable_byte((uint8_t)(v >> (8 * i)));
    }
}

/* ---- virtio transports ---- */

struct queue { uint32_t desc, desc_high, avail, avail_high, used, used_high; uint16_t size, idx; };
struct device {
    int pci;               /* 0: a virtio-mmio slot; 1: a PCI function */
    uint32_t slot;         /* virtio-mmio slot, or index into functions[] */
    uint32_t last;         /* the queue set up last: chains go there most often */
    struct queue queues[QUEUES];
};
static struct device devices[DEVICES];
static uint32_t device_count;

/* Where the transport's registers are now (0: unreachable). */
static uint32_t regs(const struct device *d)
{
    return d->pci ? bar_now(&functions[d->slot]) : VIRTIO_MMIO + 0x1000 * d->slot;
}

/* Register numbers common to both transports: MMIO offset, PCI common offset, width. */
enum reg { SEL, SIZE, DESC_LO, DESC_HI, AVAIL_LO, AVAIL_HI, USED_LO, USED_HI, READY, STATUS, FSEL, FEAT };
static const uint16_t mmio_off[] = {0x30, 0x38, 0x80, 0x84, 0x90, 0x94, 0xa0, 0xa4, 0x44, 0x70, 0x24, 0x20};
static const uint16_t pci_off[] = {0x16, 0x18, 0x20, 0x24, 0x28, 0x2c, 0x30, 0x34, 0x1c, 0x14, 0x08, 0x0c};
static const uint8_t pci_size[] = {2, 2, 4, 4, 4, 4, 4, 4, 2, 1, 4, 4};

static void reg_write(const struct device *d, uint32_t base, enum reg r, uint32_t v)
{
    if (d->pci) mmio_write(base + pci_off[r], pci_size[r], v);
    else mmio_write(base + mmio_off[r], 4, v);
}

static void doorbell(const struct device *d, uint32_t base, uint32_t q)
{
    if (d->pci) mmio_write(base + 0x3000 + 4 * q, 2, q);
    else if (chance(4)) outw((uint16_t)(0xb00 + 4 * d->slot), (uint16_t)q);
    else mmio_write(base + 0x50, 4, q);
}

/* A queue set up from scratch: random size and addresses, the device (re)started. */
static void op_queue(struct device *d)
{
    uint32_t base = regs(d);
    if (!base) return;
    uint32_t q = chance(8) ? rnd() & 0xffff : below(QUEUES);
    struct queue *s = &d->queues[q % QUEUES];
    if (chance(2)) {
        reg_write(d, base, STATUS, 0);
        reg_write(d, base, STATUS, 3);
        reg_write(d, base, FSEL, 1);
        reg_write(d, base, FEAT, chance(4) ? rnd() : 1);
        reg_write(d, base, STATUS, 11);
    }
    static const uint16_t sizes[] = {16, 64, 8, 128, 1, 0, 256, 3};
    tidy = chance(2);
    s->size = tidy ? (uint16_t)(8 << below(4)) : chance(8) ? (uint16_t)rnd() : sizes[below(8)];
    d->last = q;
    s->desc = device_address(DESC, 16, &s->desc_high);
    s->avail = device_address(AVAIL, 2, &s->avail_high);
    s->used = device_address(WRITE, 4, &s->used_high);
    tidy = 0;
    s->idx = 0;
    reg_write(d, base, SEL, q);
    reg_write(d, base, SIZE, s->size);
    reg_write(d, base, DESC_LO, s->desc);
    reg_write(d, base, DESC_HI, s->desc_high);
    reg_write(d, base, AVAIL_LO, s->avail);
    reg_write(d, base, AVAIL_HI, s->avail_high);
    reg_write(d, base, USED_LO, s->used);
    reg_write(d, base, USED_HI, s->used_high);
    reg_write(d, base, READY, 1);
    if (chance(4) == 0) reg_write(d, base, STATUS, 15);
    if (d->pci) cfg_write(functions[d->slot].bdf, 0x04, 2, 0x6);
}

/* A random chain: descriptors written into the queue's table, the avail ring pointed at
 * them, a header where the first one reads, then a doorbell (not waited for). */
static void op_chain(struct device *d)
{
    uint32_t base = regs(d), q = chance(4) ? below(QUEUES) : d->last % QUEUES;
    struct queue *s = &d->queues[q];
    if (!base) return;
    uint16_t size = s->size && s->size <= 256 ? s->size : 16;
    uint32_t head = below(size);
    if (in_scratch(s->desc, s->desc_high)) {
        uint32_t n = 1 + below(6), i = head;
        for (uint32_t k = 0; k < n; k++) {
            uint32_t at = s->desc + 16 * (i % size);
            make_desc(at, size);
            volatile uint32_t *desc = (volatile uint32_t *)at;
            if (k == 0 && !(desc[3] & F_WRITE) && in_scratch(desc[0], desc[1])) make_header(desc[0]);
            /* Usually a proper chain; sometimes a loop or a jump anywhere. */
            uint32_t next = chance(6) ? (desc[3] >> 16) : (i + 1) % size;
            desc[3] = (desc[3] & 0xffff) | next << 16;
            i = next;
        }
    }
    if (in_scratch(s->avail, s->avail_high)) {
        volatile uint16_t *avail = (volatile uint16_t *)s->avail;
        uint16_t step = chance(8) ? (uint16_t)rnd() : 1;
        avail[2 + s->idx % size] = (uint16_t)(chance(8) ? rnd() : head);
        s->idx = (uint16_t)(s->idx + step);
        avail[0] = (uint16_t)(chance(4) ? rnd() : 0);
        avail[1] = s->idx;
    }
    doorbell(d, base, chance(8) ? rnd() & 0xffff : q);
}

/* A register of the transport at random: any offset, size and value. With zones=1 the
 * queue address registers get addresses only through op_queue. */
static void op_register(struct device *d)
{
    uint32_t base = regs(d);
    if (!base) return;
    uint32_t span = d->pci ? 0x8000 : 0x1000, offset;
    switch (below(4)) {
    case 0: offset = d->pci ? below(0x38) : below(0x100); break;
    case 1: offset = d->pci ? 0x4000 + below(0x60) : 0x100 + below(0x40); break; /* MSI-X table; config */
    case 2: offset = d->pci ? 0x1000 * below(6) + below(8) : 0x60 + below(0x10); break;
    default: offset = below(span);
    }
    int size = 1 << below(4);
    offset &= ~(uint32_t)(size > 4 ? 3 : size - 1);
    if (chance(2)) {
        mmio_read(base + offset, size);
        return;
    }
    uint32_t lo = d->pci ? 0x20 : 0x80, hi = d->pci ? 0x38 : 0xa8;
    if (zones && offset + (uint32_t)size > lo && offset < hi) return;
    uint32_t v = value();
    if (d->pci && offset >= 0x4000 && offset < 0x5000 && (offset & 0xf) == 8)
        v &= ~0x700u; /* MSI-X data: fixed or lowest priority, never NMI, INIT or SMI */
    if (d->pci && offset >= 0x4000 && offset < 0x5000 && (offset & 0xf) == 0 && chance(2))
        v = LAPIC | (v & 0xff000);
    if (d->pci && offset >= 0x4000 && offset < 0x5000 && (offset & 0xf) < 8 && size == 8) return;
    mmio_write(base + offset, size, v);
}

static void find_devices(void)
{
    for (uint32_t slot = 0; slot < 3; slot++)
        if (*(volatile uint32_t *)(VIRTIO_MMIO + 0x1000 * slot) == 0x74726976)
            devices[device_count++] = (struct device){.pci = 0, .slot = slot};
    for (uint32_t i = 0; i < function_count && device_count < DEVICES; i++)
        devices[device_count++] = (struct device){.pci = 1, .slot = i};
}

/* ---- The rest of the device hole ---- */

static uint32_t hole_address(void);

/* rep movs between the scratch area and a device window: an MMIO exit per element.
 * With zones=1 only from the device (a write could land on a queue address). */
static void op_string_mmio(void)
{
    uint32_t size = 1u << below(3), count = 1 + below(64), addr = hole_address() & ~(size - 1);
    uint32_t from = addr, to = STRING_BUFFER;
    if (!zones && chance(2)) from = STRING_BUFFER, to = addr;
    if (size == 1) __asm__ volatile("cld\n\trep movsb" : "+S"(from), "+D"(to), "+c"(count) : : "memory");
    else if (size == 2) __asm__ volatile("cld\n\trep movsw" : "+S"(from), "+D"(to), "+c"(count) : : "memory");
    else __asm__ volatile("cld\n\trep movsl" : "+S"(from), "+D"(to), "+c"(count) : : "memory");
}

/* zones=1: would a write here reach a queue address register (a virtio-mmio slot's, a
 * BAR's common configuration) or configuration space below 0x100 (the pci_cfg window)? */
static int zone_conflict(uint32_t addr, uint32_t size)
{
    if (addr >= ECAM && addr < ECAM + 0x10000000) return (addr & 0xfff) < 0x100;
    for (uint32_t slot = 0; slot < 3; slot++) {
        uint32_t regs = VIRTIO_MMIO + 0x1000 * slot;
        if (addr + size > regs + 0x80 && addr < regs + 0xa8) return 1;
    }
    for (uint32_t i = 0; i < function_count; i++) {
        uint32_t bar = bar_now(&functions[i]);
        if (bar && addr + size > bar + 0x20 && addr < bar + 0x38) return 1;
    }
    return 0;
}

/* Somewhere in the device hole below the IOAPIC: often a device's registers. */
static uint32_t hole_address(void)
{
    uint32_t f = below(function_count + 1);
    switch (below(4)) {
    case 0: return VIRTIO_MMIO + below(0x4000);
    case 1: return f < function_count && bar_now(&functions[f]) ? bar_now(&functions[f]) + below(0x8000) : PCI_WINDOW + below(0x40000);
    case 2: return PCI_WINDOW + below(ECAM - PCI_WINDOW);
    default: return VIRTIO_MMIO + below(IOAPIC - VIRTIO_MMIO - 0x1000);
    }
}

static void op_mmio(void)
{
    uint32_t addr;
    switch (below(3)) {
    case 0:
    case 1: addr = hole_address(); break;
    default:
        /* The IOAPIC and LAPIC are KVM's: select an IOAPIC register, read. */
        if (chance(2)) {
            *(volatile uint32_t *)IOAPIC = below(0x40);
            addr = IOAPIC + 0x10;
        } else {
            addr = LAPIC + below(0x400) * 4;
        }
        mmio_read(addr & ~3u, 4);
        return;
    }
    int size = 1 << below(4);
    addr &= ~(uint32_t)(size > 4 ? 3 : size - 1);
    if (chance(2) || (zones && zone_conflict(addr, (uint32_t)size))) mmio_read(addr, size);
    else mmio_write(addr, size, value());
}

static uint32_t ops;
static volatile uint32_t aps_done;

static void run_ops(void)
{
    for (uint32_t op = 0; op < ops; op++) {
        uint32_t kind = below(100);
        struct device *d = device_count ? &devices[below(device_count)] : 0;
        if (kind < 25) op_port();
        else if (kind < 28) op_string();
        else if (kind < 30) op_string_mmio();
        else if (kind < 40) op_mmio();
        else if (kind < 50) op_pci_config();
        else if (kind < 55) op_ecam();
        else if (kind < 58) pci_repair();
        else if (!d) op_port();
        else if (kind < 68) op_queue(d);
        else if (kind < 85) op_chain(d);
        else op_register(d);
    }
}

void ap_main(void)
{
    run_ops();
    __atomic_fetch_add(&aps_done, 1, __ATOMIC_SEQ_CST);
}

/* INIT-SIPI-SIPI to every other vCPU (smp.S's trampoline); returns how many there are. */
extern const char ap_trampoline_start[], ap_trampoline_end[];
static uint32_t start_aps(void)
{
    outw(0x510, 0x05); /* fw_cfg: CPU count */
    uint32_t cpus = inb(0x511);
    cpus |= (uint32_t)inb(0x511) << 8;
    if (cpus < 2 || zones) return 0;
    uint8_t *trampoline = (uint8_t *)0x8000;
    for (const char *p = ap_trampoline_start; p < ap_trampoline_end; p++) *trampoline++ = (uint8_t)*p;
    lapic_enable(0);
    lapic_write(APIC_ICR_HIGH, 0);
    lapic_write(APIC_ICR_LOW, 0x000c4500); /* INIT, all excluding self */
    for (volatile uint32_t i = 0; i < 100; i++) { }
    for (int i = 0; i < 2; i++) {
        lapic_write(APIC_ICR_HIGH, 0);
        lapic_write(APIC_ICR_LOW, 0x000c4600 | (0x8000 >> 12)); /* SIPI, vector 0x08 */
        for (volatile uint32_t k = 0; k < 100; k++) { }
    }
    return cpus - 1;
}

int guest_main(uint32_t magic, const struct mb_info *mbi)
{
    if (magic != MB_BOOT_MAGIC) return 3;
    uint32_t seed = cmdline_u32(mbi, "seed", 1);
    ops = cmdline_u32(mbi, "ops", 2000);
    zones = cmdline_u32(mbi, "zones", 0);
    state = seed * 2654435761u + 0x9e3779b9u;
    if (!state) state = 1;
    ram_top = (mbi->mem_upper + 1024) * 1024;
    if (ram_top < SCRATCH_END) {
        put_str("hostile: needs 16 MiB of RAM\n");
        return 4;
    }
    /* MMX for 8-byte accesses: CR0.EM and CR0.TS clear. */
    __asm__ volatile("mov %%cr0, %%eax\n\tand $~0xc, %%eax\n\tmov %%eax, %%cr0" : : : "eax");
    pci_scan();
    find_devices();
    if (zones) zones_init();
    uint32_t aps = start_aps();
    run_ops();
    /* Wait for the APs, boundedly: one that a device's write derailed must not hang the
     * run (about 10 s of emulated spinning). */
    for (uint32_t spins = 0; aps_done < aps && spins < 20000000; spins++) { }
    /* Undo what random writes did to COM1 (DLAB, loopback) so the last line is seen. */
    outb(0x3fb, 0x03);
    outb(0x3fc, 0x00);
    outb(0x3f9, 0x00);
    put_str("\nhostile: seed=");
    put_dec(seed);
    put_str(" ops=");
    put_dec(ops);
    put_str(zones ? " zones=1" : " zones=0");
    put_str(" cpus=");
    put_dec(1 + aps);
    put_str(" aps_done=");
    put_dec(aps_done);
    /* How much the devices did: the used indices of the queues as last set up (a
     * device's own writes, or whatever later overwrote them). */
    uint32_t used = 0;
    for (uint32_t i = 0; i < device_count; i++)
        for (int q = 0; q < QUEUES; q++)
            if (in_scratch(devices[i].queues[q].used, devices[i].queues[q].used_high))
                used += ((volatile uint16_t *)devices[i].queues[q].used)[1];
    put_str(" used=");
    put_dec(used);
    put_str(" done\n");
    return 0;
}
