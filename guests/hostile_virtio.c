/* The hostile guest's attacks on virtio and the device hole (hostile.c says what the
 * guest does): the guest-physical addresses it hands devices (in the scratch area, split
 * into zones with zones=1, or outside RAM), descriptors and block request headers, both
 * virtio transports poked register by register with queues set up at random and chains
 * followed by doorbells, and MMIO and rep movs anywhere in the device hole. */
#include "hostile.h"
#include "lib.h"

/* zones=1: descriptor tables, avail rings, readable buffers, then writable ones. */
#define Z_DESC SCRATCH
#define Z_AVAIL (SCRATCH + 0x10000)
#define Z_READ (SCRATCH + 0x20000)
#define Z_WRITE (SCRATCH + 0x40000)
#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4

/* Set while a queue is set up well-formed, so that devices get chains to serve. */
static int tidy;

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

int in_scratch(uint32_t addr, uint32_t high) { return high == 0 && addr >= SCRATCH && addr < SCRATCH_END - 0x1000; }

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

void zones_init(void)
{
    for (uint32_t at = Z_DESC; at < Z_AVAIL; at += 16) make_desc(at, 16);
    for (uint32_t at = Z_READ; at < Z_WRITE; at += 4) {
        uint32_t v = rnd();
        for (int i = 0; i < 4; i++) ((volatile uint8_t *)at)[i] = readable_byte((uint8_t)(v >> (8 * i)));
    }
}

/* ---- virtio transports ---- */

struct device devices[DEVICES];
uint32_t device_count;

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
void op_queue(struct device *d)
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
void op_chain(struct device *d)
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
void op_register(struct device *d)
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

void find_devices(void)
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
void op_string_mmio(void)
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

void op_mmio(void)
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
