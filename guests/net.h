/* A virtio-net driver for hushvm's test guests (net_dev.c), used by the "net" workload
 * (net.c). Queue pair 0 only: receive queue 0, transmit queue 1, NETQ_SIZE entries
 * each, with rings of its own (struct vq of virtio.h has no room for EVENT_IDX's
 * used_event / avail_event words). Either transport: virtio-pci (the device found by
 * its IDs, MSI-X entry 1 for RX and 2 for TX) or virtio-mmio (a slot's window, its
 * line on the IOAPIC, edge-triggered as hushvm's irqfd lines are).
 * Negotiates VIRTIO_F_VERSION_1 and VIRTIO_NET_F_MAC always; VIRTIO_NET_F_MRG_RXBUF
 * and VIRTIO_RING_F_EVENT_IDX when asked and offered. */
#ifndef GUEST_NET_H
#define GUEST_NET_H
#include <stdint.h>

#define NETQ_SIZE 32
#define NET_HDR_LEN 12     /* struct virtio_net_hdr_v1, num_buffers included */
#define NET_FRAME_MAX 1514 /* Ethernet, no FCS, no VLAN tag */

#define NET_F_MAC 5
#define NET_F_MRG_RXBUF 15
#define NET_F_STATUS 16
#define RING_F_EVENT_IDX 29

struct netdev_options {
    int pci;            /* 1: virtio-pci; 0: virtio-mmio at mmio_base */
    uint32_t mmio_base; /* virtio-mmio: the device's window */
    uint8_t mmio_gsi;   /* virtio-mmio: its IOAPIC pin */
    int mrg_rxbuf;      /* ask for VIRTIO_NET_F_MRG_RXBUF (RX buffers of 1 KiB, merged) */
    int event_idx;      /* ask for VIRTIO_RING_F_EVENT_IDX */
    int interrupts;     /* 1: sleep (hlt) until an interrupt when idle; 0: poll */
};

struct netdev_stats {
    uint32_t rx_frames, tx_frames;
    uint32_t rx_interrupts, tx_interrupts, config_interrupts;
    uint32_t doorbells;      /* notifications written (both queues) */
    uint32_t merged_frames;  /* frames that arrived in more than one buffer */
    uint32_t rx_errors;      /* malformed used entries, oversized frames */
};

extern struct netdev_stats netdev_stats;
extern uint32_t netdev_features; /* what was negotiated (low word) */
extern uint8_t netdev_mac[6];

/* Brings the device up with both queues, every RX buffer posted. Returns 0, or a
 * negative step number where it failed. */
int netdev_open(const struct netdev_options *options);
/* Copies the next received frame (without its header) to `frame` (NET_FRAME_MAX bytes)
 * and gives its buffers back; returns its length, or 0 if none is waiting. */
uint32_t netdev_receive(uint8_t *frame);
/* Queues one frame for transmission, waiting for room if the ring is full. The device
 * is told only by netdev_flush (one doorbell per batch, if it asked for one). */
void netdev_send(const uint8_t *frame, uint32_t len);
/* Rings the doorbells the device wants for what was queued (TX frames, RX buffers). */
void netdev_flush(void);
/* Idle: with interrupts, asks for one on the next completion (RX, or TX if
 * `for_transmit`), rechecks, and halts until it comes; without, returns at once. */
void netdev_wait(int for_transmit);
/* Frames handed to netdev_send that the device has not yet completed. */
uint32_t netdev_tx_pending(void);
#endif
