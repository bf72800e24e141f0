#include "virtio_pci.h"
#include "pci.h"

#define STATUS_ACKNOWLEDGE 1
#define STATUS_DRIVER 2
#define STATUS_DRIVER_OK 4
#define STATUS_FEATURES_OK 8

/* Offsets in struct virtio_pci_cap (from the capability's ID byte). */
#define CAP_CFG_TYPE 3
#define CAP_BAR 4
#define CAP_OFFSET 8
#define CAP_NOTIFY_MULTIPLIER 16

static inline void w8(uint32_t addr, uint8_t v) { *(volatile uint8_t *)addr = v; }
static inline void w16(uint32_t addr, uint16_t v) { *(volatile uint16_t *)addr = v; }
static inline void w32(uint32_t addr, uint32_t v) { *(volatile uint32_t *)addr = v; }
static inline uint8_t r8(uint32_t addr) { return *(volatile uint8_t *)addr; }

/* The first vendor capability of `cfg_type`, as the spec asks drivers to use. */
static unsigned find_virtio_cap(int devfn, uint8_t cfg_type)
{
    for (unsigned at = pci_find_cap((unsigned)devfn, PCI_CAP_VENDOR, 0); at;
         at = pci_find_cap((unsigned)devfn, PCI_CAP_VENDOR, at))
        if (pci_read((unsigned)devfn, at + CAP_CFG_TYPE, 1) == cfg_type) return at;
    return 0;
}

uint32_t virtio_pci_cap_address(int devfn, uint8_t cfg_type)
{
    unsigned at = find_virtio_cap(devfn, cfg_type);
    if (!at) return 0;
    int bar = (int)pci_read((unsigned)devfn, at + CAP_BAR, 1);
    if (bar > 5) return 0;
    /* 32-bit guest without paging: the BAR must lie below 4 GiB, as hushvm puts it. */
    return (uint32_t)pci_bar_address((unsigned)devfn, bar) + pci_read((unsigned)devfn, at + CAP_OFFSET, 4);
}

int virtio_pci_open(struct virtio_pci *d, uint16_t virtio_id, uint32_t features)
{
    int devfn = pci_find(VIRTIO_PCI_VENDOR, (uint16_t)VIRTIO_PCI_DEVICE(virtio_id));
    if (devfn < 0) return -1;
    d->devfn = devfn;
    d->common = virtio_pci_cap_address(devfn, 1);
    d->notify_base = virtio_pci_cap_address(devfn, 2);
    d->isr = virtio_pci_cap_address(devfn, 3);
    d->device = virtio_pci_cap_address(devfn, 4);
    unsigned notify_cap = find_virtio_cap(devfn, 2);
    if (!d->common || !d->notify_base || !notify_cap) return -2;
    d->notify_multiplier = pci_read((unsigned)devfn, notify_cap + CAP_NOTIFY_MULTIPLIER, 4);
    d->msix_cap = (uint16_t)pci_find_cap((unsigned)devfn, PCI_CAP_MSIX, 0);
    d->msix_vectors = 0;
    d->msix_table = 0;
    /* Firmware leaves decoding off (hushvm does too); the driver turns it on. */
    pci_command_set((unsigned)devfn, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);

    uint32_t c = d->common;
    w8(c + VPCI_DEVICE_STATUS, 0);
    w8(c + VPCI_DEVICE_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    w32(c + VPCI_DEVICE_FEATURE_SELECT, 1);
    if (!(virtio_pci_read32(c + VPCI_DEVICE_FEATURE) & 1)) return -3; /* VIRTIO_F_VERSION_1 */
    w32(c + VPCI_DEVICE_FEATURE_SELECT, 0);
    uint32_t offered = virtio_pci_read32(c + VPCI_DEVICE_FEATURE);
    w32(c + VPCI_DRIVER_FEATURE_SELECT, 0);
    w32(c + VPCI_DRIVER_FEATURE, offered & features);
    w32(c + VPCI_DRIVER_FEATURE_SELECT, 1);
    w32(c + VPCI_DRIVER_FEATURE, 1);
    w8(c + VPCI_DEVICE_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    if (!(r8(c + VPCI_DEVICE_STATUS) & STATUS_FEATURES_OK)) return -4;
    return 0;
}

int virtio_pci_msix(struct virtio_pci *d, uint8_t first_vector, uint8_t apic_id)
{
    if (!d->msix_cap) return -1;
    unsigned cap = d->msix_cap, devfn = (unsigned)d->devfn;
    uint16_t control = (uint16_t)pci_read(devfn, cap + 2, 2);
    uint32_t table = pci_read(devfn, cap + 4, 4);
    d->msix_vectors = (uint16_t)((control & 0x7ff) + 1);
    d->msix_table = (uint32_t)pci_bar_address(devfn, (int)(table & 7)) + (table & ~7u);
    for (unsigned n = 0; n < d->msix_vectors; n++) {
        uint32_t entry = d->msix_table + 16 * n;
        w32(entry + 0, 0xfee00000u | (uint32_t)apic_id << 12); /* physical, no redirection */
        w32(entry + 4, 0);
        w32(entry + 8, (uint32_t)(first_vector + n));          /* fixed, edge */
        w32(entry + 12, 0);                                    /* unmasked */
    }
    /* Enable, and clear the function mask. */
    pci_write(devfn, cap + 2, 2, (control & ~(1u << 14)) | (1u << 15));
    w16(d->common + VPCI_MSIX_CONFIG, 0);
    if (virtio_pci_read16(d->common + VPCI_MSIX_CONFIG) != 0) return -2;
    return d->msix_vectors;
}

int virtio_pci_queue(struct virtio_pci *d, struct vq *q, int queue, uint16_t msix_vector)
{
    uint32_t c = d->common;
    w16(c + VPCI_QUEUE_SELECT, (uint16_t)queue);
    if (virtio_pci_read16(c + VPCI_QUEUE_SIZE) < VQ_SIZE) return -1;
    w16(c + VPCI_QUEUE_SIZE, VQ_SIZE);
    /* 64-bit fields as two dwords, low first; a 32-bit guest's addresses fit the low. */
    w32(c + VPCI_QUEUE_DESC, (uint32_t)q->desc);
    w32(c + VPCI_QUEUE_DESC + 4, 0);
    w32(c + VPCI_QUEUE_DRIVER, (uint32_t)&q->avail);
    w32(c + VPCI_QUEUE_DRIVER + 4, 0);
    w32(c + VPCI_QUEUE_DEVICE, (uint32_t)&q->used);
    w32(c + VPCI_QUEUE_DEVICE + 4, 0);
    w16(c + VPCI_QUEUE_MSIX_VECTOR, msix_vector);
    if (virtio_pci_read16(c + VPCI_QUEUE_MSIX_VECTOR) != msix_vector) return -2;
    uint16_t notify_off = virtio_pci_read16(c + VPCI_QUEUE_NOTIFY_OFF);
    w16(c + VPCI_QUEUE_ENABLE, 1);
    q->base = c;
    q->notify = d->notify_base + (uint32_t)notify_off * d->notify_multiplier;
    q->notify_width = 2;
    q->doorbell_port = 0;
    q->last_used = q->used.idx;
    return 0;
}

int virtio_pci_start(struct virtio_pci *d)
{
    uint8_t ready = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
    w8(d->common + VPCI_DEVICE_STATUS, ready);
    return r8(d->common + VPCI_DEVICE_STATUS) == ready ? 0 : -1;
}

int virtio_init_pci(struct virtio_pci *d, struct vq *q, uint16_t virtio_id, int queue)
{
    int status = virtio_pci_open(d, virtio_id, 0);
    if (status) return status;
    if (virtio_pci_queue(d, q, queue, VIRTIO_MSI_NO_VECTOR)) return -5;
    return virtio_pci_start(d) ? -6 : 0;
}
