/* PCI configuration access for hushvm's test guests, bus 0 only: mechanism #1 (ports
 * 0xcf8/0xcfc) and ECAM (MMIO at 0xe0000000), BAR sizing and moves, the capability
 * walk, the command register. A function is named by its devfn (device << 3 | fn). */
#ifndef GUEST_PCI_H
#define GUEST_PCI_H
#include <stdint.h>

#define PCI_CF8 0 /* configuration mechanism #1 */
#define PCI_ECAM 1
#define PCI_ECAM_BASE 0xe0000000u

#define PCI_DEVFN(dev, fn) ((unsigned)(dev) << 3 | (unsigned)(fn))
#define PCI_DEV(devfn) ((devfn) >> 3)

#define PCI_VENDOR 0x00
#define PCI_DEVICE 0x02
#define PCI_COMMAND 0x04
#define PCI_STATUS 0x06
#define PCI_REVISION 0x08 /* and the class code in the upper three bytes */
#define PCI_HEADER_TYPE 0x0e
#define PCI_BAR0 0x10
#define PCI_CAP_POINTER 0x34

#define PCI_COMMAND_MEMORY (1u << 1)
#define PCI_COMMAND_MASTER (1u << 2)
#define PCI_STATUS_CAPS (1u << 4)

#define PCI_CAP_VENDOR 0x09
#define PCI_CAP_MSIX 0x11

/* Which mechanism pci_read and pci_write use (PCI_CF8 until changed). */
extern int pci_mechanism;

/* An access of `width` bytes (1, 2 or 4) at `reg`, which must not cross a dword. */
uint32_t pci_read_via(int mechanism, unsigned devfn, unsigned reg, int width);
void pci_write_via(int mechanism, unsigned devfn, unsigned reg, int width, uint32_t value);
static inline uint32_t pci_read(unsigned devfn, unsigned reg, int width)
{
    return pci_read_via(pci_mechanism, devfn, reg, width);
}
static inline void pci_write(unsigned devfn, unsigned reg, int width, uint32_t value)
{
    pci_write_via(pci_mechanism, devfn, reg, width, value);
}

/* The first function on bus 0 with these IDs, or -1. */
int pci_find(uint16_t vendor, uint16_t device);
/* The function after `devfn` (-1: from the start) that answers on bus 0, or -1. Looks at
 * functions 1-7 only of multi-function devices, as firmware does. */
int pci_next_function(int mechanism, int devfn);

/* The address BAR `bar` holds (both registers of a 64-bit BAR), type bits cleared. */
uint64_t pci_bar_address(unsigned devfn, int bar);
/* The BAR's size by the sizing protocol (all-ones, read the mask, restore), with memory
 * decoding off meanwhile; 0 if the BAR is not implemented. */
uint64_t pci_bar_size(unsigned devfn, int bar);
/* Programs the BAR with `address` (the upper register too for a 64-bit BAR). The caller
 * turns decoding off around it. */
void pci_bar_set(unsigned devfn, int bar, uint64_t address);

/* The offset of the first capability with `id` after offset `after` (0: from the
 * start), or 0. At most 48 steps, so a looped list cannot hang the guest. */
unsigned pci_find_cap(unsigned devfn, uint8_t id, unsigned after);

/* Sets `bits` in the command register; returns the old value. */
uint16_t pci_command_set(unsigned devfn, uint16_t bits);
uint16_t pci_command_clear(unsigned devfn, uint16_t bits);
#endif
