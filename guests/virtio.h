/* A minimal virtio driver for hushvm's test guests: one split queue of 16 entries,
 * requests submitted one at a time and completed by polling the used ring. The queue
 * code is the transport's business only at set-up (virtio_init here for virtio-mmio,
 * virtio_pci.h for virtio-pci) and at the doorbell, which struct vq describes.
 * virtio-mmio devices sit at hushvm's fixed slots: 0 block (0xc0000000), 1 entropy,
 * 2 console. */
#ifndef GUEST_VIRTIO_H
#define GUEST_VIRTIO_H
#include <stdint.h>

#define VIRTIO_SLOT_BLOCK 0
#define VIRTIO_SLOT_RNG 1
#define VIRTIO_SLOT_CONSOLE 2
#define VQ_SIZE 16

struct vring_desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct vq {
    struct vring_desc desc[VQ_SIZE] __attribute__((aligned(16)));
    struct { uint16_t flags, idx; uint16_t ring[VQ_SIZE]; } avail __attribute__((aligned(2)));
    struct { uint16_t flags, idx; struct { uint32_t id, len; } ring[VQ_SIZE]; } used __attribute__((aligned(4096)));
    uint32_t base;          /* virtio-mmio: the slot; virtio-pci: the common configuration */
    uint32_t notify;        /* the doorbell's MMIO address (QueueNotify, or virtio-pci's) */
    uint16_t doorbell_port; /* nonzero: ring this I/O port instead of `notify` */
    uint16_t last_used;
    uint8_t notify_width;   /* bytes of the MMIO doorbell write: 4 (virtio-mmio), 2 (pci) */
};
struct vbuf { void *addr; uint32_t len; int device_writes; };

/* Resets and brings up the device in `slot` (expecting `device_id`), queue `queue`;
 * pio_doorbell != 0 rings the device's I/O-port doorbell instead of QueueNotify.
 * Returns 0, or a negative step number where it failed. */
int virtio_init(struct vq *q, int slot, uint32_t device_id, int queue, int pio_doorbell);
/* Sets up another queue of a device virtio_init brought up. */
void virtio_add_queue(struct vq *q, int slot, int queue);
/* Writes one chain into descriptors 0.. and points every avail slot at it. */
void virtio_prepare(struct vq *q, const struct vbuf *bufs, int count);
/* Makes the prepared chain available again, rings the doorbell and waits for the device;
 * returns the used length. The hot path: an index increment, a doorbell, a poll. */
uint32_t virtio_submit(struct vq *q, int queue);
/* Both: one request. */
uint32_t virtio_request(struct vq *q, int queue, const struct vbuf *bufs, int count);
/* 1 if a device answers in `slot`. */
int virtio_present(int slot, uint32_t device_id);
uint32_t virtio_read32(int slot, uint32_t offset);
#endif
