#include "pci.h"
#include "lib.h"

#define CONFIG_ADDRESS 0xcf8
#define CONFIG_DATA 0xcfc

int pci_mechanism = PCI_CF8;

/* Mechanism #1: a dword write selects the register (enable bit, bus 0), then the data
 * port is read or written at the byte the access starts on. */
static uint16_t cf8_select(unsigned devfn, unsigned reg)
{
    outl(CONFIG_ADDRESS, 0x80000000u | (devfn & 0xff) << 8 | (reg & 0xfc));
    return (uint16_t)(CONFIG_DATA + (reg & 3));
}

static volatile void *ecam(unsigned devfn, unsigned reg)
{
    return (volatile void *)(PCI_ECAM_BASE + ((devfn & 0xff) << 12) + (reg & 0xfff));
}

uint32_t pci_read_via(int mechanism, unsigned devfn, unsigned reg, int width)
{
    if (mechanism == PCI_ECAM) {
        volatile void *at = ecam(devfn, reg);
        if (width == 1) return *(volatile uint8_t *)at;
        if (width == 2) return *(volatile uint16_t *)at;
        return *(volatile uint32_t *)at;
    }
    uint16_t port = cf8_select(devfn, reg);
    if (width == 1) return inb(port);
    if (width == 2) return inw(port);
    return inl(port);
}

void pci_write_via(int mechanism, unsigned devfn, unsigned reg, int width, uint32_t value)
{
    if (mechanism == PCI_ECAM) {
        volatile void *at = ecam(devfn, reg);
        if (width == 1)
            *(volatile uint8_t *)at = (uint8_t)value;
        else if (width == 2)
            *(volatile uint16_t *)at = (uint16_t)value;
        else
            *(volatile uint32_t *)at = value;
        return;
    }
    uint16_t port = cf8_select(devfn, reg);
    if (width == 1)
        outb(port, (uint8_t)value);
    else if (width == 2)
        outw(port, (uint16_t)value);
    else
        outl(port, value);
}

int pci_next_function(int mechanism, int devfn)
{
    for (int next = devfn + 1; next < 256; next++) {
        /* Functions 1-7 exist only on a multi-function device: skip them otherwise. */
        if ((next & 7) != 0) {
            uint32_t header = pci_read_via(mechanism, (unsigned)next & ~7u, PCI_HEADER_TYPE, 1);
            if (header == 0xff || !(header & 0x80)) {
                next |= 7;
                continue;
            }
        }
        if ((pci_read_via(mechanism, (unsigned)next, PCI_VENDOR, 4) & 0xffff) != 0xffff) return next;
    }
    return -1;
}

int pci_find(uint16_t vendor, uint16_t device)
{
    uint32_t wanted = (uint32_t)device << 16 | vendor;
    for (int f = pci_next_function(pci_mechanism, -1); f >= 0; f = pci_next_function(pci_mechanism, f))
        if (pci_read((unsigned)f, PCI_VENDOR, 4) == wanted) return f;
    return -1;
}

static int bar_is_64(uint32_t low) { return (low & 7) == 4; }

uint64_t pci_bar_address(unsigned devfn, int bar)
{
    unsigned reg = PCI_BAR0 + 4 * (unsigned)bar;
    uint32_t low = pci_read(devfn, reg, 4);
    if (low & 1) return low & ~3u;
    uint64_t address = low & ~0xfu;
    if (bar_is_64(low)) address |= (uint64_t)pci_read(devfn, reg + 4, 4) << 32;
    return address;
}

/* The mask register `reg` reads after the all-ones write; the register is restored. */
static uint32_t size_mask(unsigned devfn, unsigned reg)
{
    uint32_t original = pci_read(devfn, reg, 4);
    pci_write(devfn, reg, 4, 0xffffffffu);
    uint32_t mask = pci_read(devfn, reg, 4);
    pci_write(devfn, reg, 4, original);
    return mask;
}

uint64_t pci_bar_size(unsigned devfn, int bar)
{
    unsigned reg = PCI_BAR0 + 4 * (unsigned)bar;
    /* Linux turns decoding off while the BAR holds the mask, which is not an address. */
    uint16_t command = pci_command_clear(devfn, PCI_COMMAND_MEMORY | 1);
    uint32_t low = size_mask(devfn, reg);
    uint64_t size = 0;
    if (low & 1)
        size = (uint32_t)(~(low & ~3u) + 1) & 0xffff; /* I/O: 16-bit decode */
    else if (bar_is_64(low))
        size = ~((uint64_t)size_mask(devfn, reg + 4) << 32 | (low & ~0xfu)) + 1;
    else if (low)
        size = (uint32_t)(~(low & ~0xfu) + 1);
    pci_write(devfn, PCI_COMMAND, 2, command);
    return size;
}

void pci_bar_set(unsigned devfn, int bar, uint64_t address)
{
    unsigned reg = PCI_BAR0 + 4 * (unsigned)bar;
    uint32_t low = pci_read(devfn, reg, 4);
    pci_write(devfn, reg, 4, (uint32_t)address | (low & ((low & 1) ? 3u : 0xfu)));
    if (!(low & 1) && bar_is_64(low)) pci_write(devfn, reg + 4, 4, (uint32_t)(address >> 32));
}

unsigned pci_find_cap(unsigned devfn, uint8_t id, unsigned after)
{
    if (!(pci_read(devfn, PCI_STATUS, 2) & PCI_STATUS_CAPS)) return 0;
    unsigned at = pci_read(devfn, PCI_CAP_POINTER, 1) & 0xfc;
    int passed = after == 0;
    for (int steps = 0; at >= 0x40 && steps < 48; steps++) {
        uint32_t head = pci_read(devfn, at, 2);
        if (passed && (head & 0xff) == id) return at;
        if (at == after) passed = 1;
        at = (head >> 8) & 0xfc;
    }
    return 0;
}

uint16_t pci_command_set(unsigned devfn, uint16_t bits)
{
    uint16_t command = (uint16_t)pci_read(devfn, PCI_COMMAND, 2);
    pci_write(devfn, PCI_COMMAND, 2, command | bits);
    return command;
}

uint16_t pci_command_clear(unsigned devfn, uint16_t bits)
{
    uint16_t command = (uint16_t)pci_read(devfn, PCI_COMMAND, 2);
    pci_write(devfn, PCI_COMMAND, 2, command & (uint16_t)~bits);
    return command;
}
