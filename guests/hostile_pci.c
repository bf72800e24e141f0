/* The hostile guest's attacks on PCI (hostile.c says what the guest does): the virtio
 * functions found through 0xCF8/0xCFC at start, configuration accesses through
 * 0xCF8/0xCFC and through ECAM (BAR moves, MSI-X capability, the pci_cfg window), the
 * zones=1 checks that keep BAR writes to those hushvm would make, and the repair that
 * puts every function back. */
#include "hostile.h"
#include "lib.h"

/* ---- PCI ---- */

struct function functions[8];
uint32_t function_count;

uint32_t cfg_read(uint32_t bdf, uint32_t offset)
{
    outl(0xcf8, 0x80000000u | bdf << 8 | (offset & 0xfc));
    return inl(0xcfc);
}
void cfg_write(uint32_t bdf, uint32_t offset, int size, uint32_t v)
{
    outl(0xcf8, 0x80000000u | bdf << 8 | (offset & 0xfc));
    port_out((uint16_t)(0xcfc + (offset & 3)), size, v);
}

void pci_scan(void)
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
uint32_t bar_now(const struct function *f)
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
void pci_repair(void)
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

void op_pci_config(void)
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
void op_ecam(void)
{
    uint32_t bdf = function_count && chance(2) ? functions[below(function_count)].bdf : below(0x10000);
    uint32_t offset = below(0x1000), addr = ECAM + (bdf << 12) + offset;
    int size = 1 << below(3);
    addr &= ~(uint32_t)(size > 4 ? 3 : size - 1);
    if (chance(2) || (zones && offset < 0x100)) mmio_read(addr, size);
    else mmio_write(addr, size, value());
}
