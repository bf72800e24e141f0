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
 * Prints "hostile: seed=N ops=M ... done" and exits with status 0 (hushvm's 1).
 *
 * This file holds the random source, the access helpers, the attacks on ports and the
 * main loop; hostile_pci.c the attacks on PCI, hostile_virtio.c those on virtio and the
 * rest of the device hole; hostile.h what they share. */
#include "hostile.h"
#include "irq.h"
#include "lib.h"

static uint32_t state;
uint32_t zones, ram_top;

uint32_t rnd(void)
{
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    return state;
}
uint32_t below(uint32_t n) { return n ? rnd() % n : 0; }
int chance(uint32_t n) { return below(n) == 0; }

/* Values that hit edges more often than uniform ones do. */
uint32_t value(void)
{
    static const uint32_t edges[] = {0, 1, 2, 0xff, 0xffff, 0xffffffff, 0x80000000, 0x7fffffff, 0x10, 0x1000};
    return chance(3) ? edges[below(sizeof edges / sizeof edges[0])] : rnd();
}

/* outl and inw come from lib.h. */

void port_out(uint16_t port, int size, uint32_t v)
{
    if (size == 1) outb(port, (uint8_t)v);
    else if (size == 2) outw(port, (uint16_t)v);
    else outl(port, v);
}
uint32_t port_in(uint16_t port, int size)
{
    return size == 1 ? inb(port) : size == 2 ? inw(port) : inl(port);
}

void mmio_write(uint32_t addr, int size, uint32_t v)
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
uint32_t mmio_read(uint32_t addr, int size)
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

/* ---- The main loop ---- */

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
