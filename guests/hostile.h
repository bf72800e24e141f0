/* What the hostile guest's files share (hostile.c says what the guest does): the
 * address map it attacks, the random source and access helpers of hostile.c, the PCI
 * functions that hostile_pci.c finds and attacks, the virtio devices that
 * hostile_virtio.c finds and attacks, and each file's operations. */
#ifndef GUEST_HOSTILE_H
#define GUEST_HOSTILE_H
#include <stdint.h>

#define MIB (1024u * 1024u)
#define SCRATCH (8 * MIB)
#define SCRATCH_END (16 * MIB)
#define STRING_BUFFER (SCRATCH_END - 0x20000)
#define VIRTIO_MMIO 0xc0000000u
#define PCI_WINDOW 0xc1000000u
#define ECAM 0xe0000000u
#define IOAPIC 0xfec00000u
#define LAPIC 0xfee00000u
#define QUEUES 3
#define DEVICES 6

/* hostile.c: the command line's zones=, the top of RAM. */
extern uint32_t zones, ram_top;

/* hostile.c: the random source (a xorshift generator seeded from seed=). */
uint32_t rnd(void);
uint32_t below(uint32_t n);
int chance(uint32_t n);
uint32_t value(void);

/* hostile.c: accesses of 1, 2 or 4 bytes to a port; of 1, 2, 4 or 8 bytes to MMIO. */
void port_out(uint16_t port, int size, uint32_t v);
uint32_t port_in(uint16_t port, int size);
void mmio_write(uint32_t addr, int size, uint32_t v);
uint32_t mmio_read(uint32_t addr, int size);

/* hostile_pci.c: the virtio PCI functions found at start. */
struct function {
    uint32_t bdf, bar0, msix_cap, window_cap;
};
extern struct function functions[8];
extern uint32_t function_count;

uint32_t cfg_read(uint32_t bdf, uint32_t offset);
void cfg_write(uint32_t bdf, uint32_t offset, int size, uint32_t v);
void pci_scan(void);
uint32_t bar_now(const struct function *f);
void pci_repair(void);
void op_pci_config(void);
void op_ecam(void);

/* hostile_virtio.c: the virtio devices found at start, on either transport. */
struct queue { uint32_t desc, desc_high, avail, avail_high, used, used_high; uint16_t size, idx; };
struct device {
    int pci;               /* 0: a virtio-mmio slot; 1: a PCI function */
    uint32_t slot;         /* virtio-mmio slot, or index into functions[] */
    uint32_t last;         /* the queue set up last: chains go there most often */
    struct queue queues[QUEUES];
};
extern struct device devices[DEVICES];
extern uint32_t device_count;

int in_scratch(uint32_t addr, uint32_t high);
void zones_init(void);
void find_devices(void);
void op_queue(struct device *d);
void op_chain(struct device *d);
void op_register(struct device *d);
void op_string_mmio(void);
void op_mmio(void);

#endif
