/* The virtio 1.x PCI transport (modern only, virtio 1.2 section 4.1) for the queues of
 * virtio.h: once a queue is set up here, virtio_prepare / virtio_submit /
 * virtio_request drive it exactly as they drive a virtio-mmio queue. */
#ifndef GUEST_VIRTIO_PCI_H
#define GUEST_VIRTIO_PCI_H
#include <stdint.h>
#include "virtio.h"

#define VIRTIO_PCI_VENDOR 0x1af4
#define VIRTIO_PCI_DEVICE(virtio_id) (0x1040 + (virtio_id))
#define VIRTIO_MSI_NO_VECTOR 0xffff

/* Offsets in the common configuration (struct virtio_pci_common_cfg). */
#define VPCI_DEVICE_FEATURE_SELECT 0x00
#define VPCI_DEVICE_FEATURE 0x04
#define VPCI_DRIVER_FEATURE_SELECT 0x08
#define VPCI_DRIVER_FEATURE 0x0c
#define VPCI_MSIX_CONFIG 0x10
#define VPCI_NUM_QUEUES 0x12
#define VPCI_DEVICE_STATUS 0x14
#define VPCI_QUEUE_SELECT 0x16
#define VPCI_QUEUE_SIZE 0x18
#define VPCI_QUEUE_MSIX_VECTOR 0x1a
#define VPCI_QUEUE_ENABLE 0x1c
#define VPCI_QUEUE_NOTIFY_OFF 0x1e
#define VPCI_QUEUE_DESC 0x20
#define VPCI_QUEUE_DRIVER 0x28
#define VPCI_QUEUE_DEVICE 0x30

/* One virtio-pci function: where its structures are, as its capabilities say. */
struct virtio_pci {
    int devfn;
    uint32_t common, isr, device; /* MMIO addresses (BAR + offset) */
    uint32_t notify_base, notify_multiplier;
    uint16_t msix_cap;            /* 0: no MSI-X capability */
    uint16_t msix_vectors;        /* table entries */
    uint32_t msix_table;          /* its MMIO address */
};

/* Where the virtio capability of `cfg_type` (1 common, 2 notify, 3 ISR, 4 device) of
 * function `devfn` points: its BAR's address plus its offset, or 0 if there is none. */
uint32_t virtio_pci_cap_address(int devfn, uint8_t cfg_type);
/* Finds the device (vendor 0x1af4, device 0x1040 + virtio_id), maps its structures,
 * enables memory decoding and bus mastering, resets it and negotiates VERSION_1 plus
 * what `features` (low word) asks and the device offers, up to FEATURES_OK. Returns 0,
 * or a negative step number where it failed. */
int virtio_pci_open(struct virtio_pci *d, uint16_t virtio_id, uint32_t features);
/* MSI-X: entry n of the table raises IDT vector first_vector + n on APIC `apic_id`
 * (fixed, edge), every entry unmasked, then MSI-X enabled; configuration changes get
 * entry 0. Returns the number of entries, or -1 without MSI-X, -2 if the device refused
 * msix_config. */
int virtio_pci_msix(struct virtio_pci *d, uint8_t first_vector, uint8_t apic_id);
/* Sets up queue `queue` in `q`, raising MSI-X entry `msix_vector` on completions
 * (VIRTIO_MSI_NO_VECTOR: none). Returns 0, -1 for a missing or too small queue, -2 if
 * the device refused the vector. */
int virtio_pci_queue(struct virtio_pci *d, struct vq *q, int queue, uint16_t msix_vector);
/* DRIVER_OK: returns 0, or -1 if the device did not take it. */
int virtio_pci_start(struct virtio_pci *d);
/* All of it for one queue without interrupts (the doorbell workload). */
int virtio_init_pci(struct virtio_pci *d, struct vq *q, uint16_t virtio_id, int queue);

static inline uint32_t virtio_pci_read32(uint32_t addr) { return *(volatile uint32_t *)addr; }
static inline uint16_t virtio_pci_read16(uint32_t addr) { return *(volatile uint16_t *)addr; }
#endif
