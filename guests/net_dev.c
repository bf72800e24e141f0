#include "net.h"
#include "irq.h"
#include "lib.h"
#include "virtio_pci.h"

#define DESC_WRITE 2
#define AVAIL_NO_INTERRUPT 1
#define USED_NO_NOTIFY 1
#define RX 0
#define TX 1
#define RX_BUF_PLAIN 2048 /* a whole frame and its header in one buffer */
#define RX_BUF_MERGED 1024
#define TX_BUF 2048
#define VECTOR_BASE 0x50 /* MSI-X entry n, or the virtio-mmio line (entry 0) */

struct netq {
    struct vring_desc desc[NETQ_SIZE] __attribute__((aligned(16)));
    struct {
        uint16_t flags, idx, ring[NETQ_SIZE];
        uint16_t used_event;
    } avail __attribute__((aligned(2)));
    struct {
        uint16_t flags, idx;
        struct { uint32_t id, len; } ring[NETQ_SIZE];
        uint16_t avail_event;
    } used __attribute__((aligned(4096)));
    uint32_t notify;       /* doorbell address */
    uint16_t index;        /* queue number, what the doorbell carries */
    uint16_t last_used;    /* next used entry to read */
    uint16_t notified_idx; /* avail.idx at the last doorbell */
    uint16_t in_flight;    /* TX: queued, not yet used */
} __attribute__((aligned(4096)));

static struct netq queues[2];
static uint8_t rx_buffers[NETQ_SIZE][RX_BUF_PLAIN] __attribute__((aligned(16)));
static uint8_t tx_buffers[NETQ_SIZE][TX_BUF] __attribute__((aligned(16)));
static struct netdev_options opts;
static struct virtio_pci pci;
static uint32_t rx_buffer_len;

struct netdev_stats netdev_stats;
uint32_t netdev_features;
uint8_t netdev_mac[6];

static inline void w8(uint32_t a, uint8_t v) { *(volatile uint8_t *)a = v; }
static inline void w16(uint32_t a, uint16_t v) { *(volatile uint16_t *)a = v; }
static inline void w32(uint32_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline uint8_t r8(uint32_t a) { return *(volatile uint8_t *)a; }
static inline uint32_t r32(uint32_t a) { return *(volatile uint32_t *)a; }
/* x86 keeps stores in order and loads in order; only the compiler needs fencing. A
 * store followed by a load of another location can pass, hence the mfence where the
 * driver publishes an index and then reads the device's event word (a locked add: i686 has no mfence). */
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void full_barrier(void) { __asm__ volatile("lock; addl $0, (%%esp)" ::: "memory", "cc"); }
static inline uint16_t used_idx(struct netq *q) { return *(volatile uint16_t *)&q->used.idx; }
static int has(int feature) { return (netdev_features >> feature) & 1; }

/* virtio 1.2, 2.7.10: notify if the device's event index lies in (old, new]. */
static int need_event(uint16_t event, uint16_t new_idx, uint16_t old_idx)
{
    return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old_idx);
}

static void interrupt(uint32_t vector)
{
    if (!opts.pci) {
        uint32_t status = r32(opts.mmio_base + 0x060);
        w32(opts.mmio_base + 0x064, status);
        netdev_stats.rx_interrupts++; /* one line for both queues: counted as RX */
    } else if (vector == VECTOR_BASE + 1) {
        netdev_stats.rx_interrupts++;
    } else if (vector == VECTOR_BASE + 2) {
        netdev_stats.tx_interrupts++;
    } else {
        netdev_stats.config_interrupts++;
    }
    lapic_eoi();
}

/* Interrupts for `q` off while the driver is busy (the device may ignore it). */
static void suppress(struct netq *q)
{
    if (has(RING_F_EVENT_IDX))
        q->avail.used_event = (uint16_t)(q->last_used + 0x8000);
    else
        q->avail.flags = AVAIL_NO_INTERRUPT;
}

/* An interrupt wanted once `ahead` more used entries come. */
static void arm(struct netq *q, uint16_t ahead)
{
    if (has(RING_F_EVENT_IDX))
        q->avail.used_event = (uint16_t)(q->last_used + ahead - 1);
    else
        q->avail.flags = 0;
    full_barrier();
}

static void kick(struct netq *q)
{
    full_barrier();
    uint16_t now = q->avail.idx, before = q->notified_idx;
    if (now == before) return;
    int wanted = has(RING_F_EVENT_IDX) ? need_event(q->used.avail_event, now, before)
                                       : !(q->used.flags & USED_NO_NOTIFY);
    q->notified_idx = now;
    if (!wanted) return;
    /* virtio-pci's notify is 16 bits; virtio-mmio takes 32-bit accesses only. */
    if (opts.pci)
        w16(q->notify, q->index);
    else
        w32(q->notify, q->index);
    netdev_stats.doorbells++;
}

static void post_rx(uint16_t id)
{
    struct netq *q = &queues[RX];
    q->desc[id].addr = (uint32_t)rx_buffers[id];
    q->desc[id].len = rx_buffer_len;
    q->desc[id].flags = DESC_WRITE;
    q->avail.ring[q->avail.idx % NETQ_SIZE] = id;
    barrier();
    q->avail.idx++;
}

static int setup_mmio_queue(struct netq *q, int index)
{
    uint32_t base = opts.mmio_base;
    w32(base + 0x030, (uint32_t)index);
    if (r32(base + 0x034) < NETQ_SIZE) return -1;
    w32(base + 0x038, NETQ_SIZE);
    w32(base + 0x080, (uint32_t)q->desc);
    w32(base + 0x084, 0);
    w32(base + 0x090, (uint32_t)&q->avail);
    w32(base + 0x094, 0);
    w32(base + 0x0a0, (uint32_t)&q->used);
    w32(base + 0x0a4, 0);
    w32(base + 0x044, 1);
    q->notify = base + 0x050;
    return 0;
}

static int open_mmio(uint32_t wanted)
{
    uint32_t base = opts.mmio_base;
    if (r32(base) != 0x74726976 || r32(base + 4) != 2 || r32(base + 8) != 1) return -1;
    w32(base + 0x070, 0);
    w32(base + 0x070, 1 | 2);
    w32(base + 0x014, 1);
    if (!(r32(base + 0x010) & 1)) return -2; /* VIRTIO_F_VERSION_1 */
    w32(base + 0x014, 0);
    netdev_features = r32(base + 0x010) & wanted;
    w32(base + 0x024, 0);
    w32(base + 0x020, netdev_features);
    w32(base + 0x024, 1);
    w32(base + 0x020, 1);
    w32(base + 0x070, 1 | 2 | 8);
    if (!(r32(base + 0x070) & 8)) return -3;
    if (setup_mmio_queue(&queues[RX], RX) || setup_mmio_queue(&queues[TX], TX)) return -4;
    for (int i = 0; i < 6; i++) netdev_mac[i] = r8(base + 0x100 + (uint32_t)i);
    idt_set(VECTOR_BASE, interrupt);
    ioapic_route(opts.mmio_gsi, VECTOR_BASE);
    w32(base + 0x070, 1 | 2 | 8 | 4);
    return 0;
}

static int setup_pci_queue(struct netq *q, int index, uint16_t vector)
{
    uint32_t c = pci.common;
    w16(c + VPCI_QUEUE_SELECT, (uint16_t)index);
    if (virtio_pci_read16(c + VPCI_QUEUE_SIZE) < NETQ_SIZE) return -1;
    w16(c + VPCI_QUEUE_SIZE, NETQ_SIZE);
    w32(c + VPCI_QUEUE_DESC, (uint32_t)q->desc);
    w32(c + VPCI_QUEUE_DESC + 4, 0);
    w32(c + VPCI_QUEUE_DRIVER, (uint32_t)&q->avail);
    w32(c + VPCI_QUEUE_DRIVER + 4, 0);
    w32(c + VPCI_QUEUE_DEVICE, (uint32_t)&q->used);
    w32(c + VPCI_QUEUE_DEVICE + 4, 0);
    w16(c + VPCI_QUEUE_MSIX_VECTOR, vector);
    if (virtio_pci_read16(c + VPCI_QUEUE_MSIX_VECTOR) != vector) return -2;
    uint16_t notify_off = virtio_pci_read16(c + VPCI_QUEUE_NOTIFY_OFF);
    w16(c + VPCI_QUEUE_ENABLE, 1);
    q->notify = pci.notify_base + (uint32_t)notify_off * pci.notify_multiplier;
    return 0;
}

static int open_pci(uint32_t wanted)
{
    int status = virtio_pci_open(&pci, 1, wanted);
    if (status) return status;
    w32(pci.common + VPCI_DEVICE_FEATURE_SELECT, 0);
    netdev_features = virtio_pci_read32(pci.common + VPCI_DEVICE_FEATURE) & wanted;
    for (int i = 0; i < 3; i++) idt_set((uint8_t)(VECTOR_BASE + i), interrupt);
    if (virtio_pci_msix(&pci, VECTOR_BASE, 0) < 3) return -10;
    if (setup_pci_queue(&queues[RX], RX, 1) || setup_pci_queue(&queues[TX], TX, 2)) return -11;
    if (!pci.device) return -12;
    for (int i = 0; i < 6; i++) netdev_mac[i] = r8(pci.device + (uint32_t)i);
    return virtio_pci_start(&pci) ? -13 : 0;
}

int netdev_open(const struct netdev_options *options)
{
    opts = *options;
    uint32_t wanted = 1u << NET_F_MAC;
    if (opts.mrg_rxbuf) wanted |= 1u << NET_F_MRG_RXBUF;
    if (opts.event_idx) wanted |= 1u << RING_F_EVENT_IDX;
    pic_mask_all();
    idt_init();
    lapic_enable(0);
    for (int q = 0; q < 2; q++) queues[q].index = (uint16_t)q;
    int status = opts.pci ? open_pci(wanted) : open_mmio(wanted);
    if (status) return status;
    if (!has(NET_F_MAC)) return -20;
    rx_buffer_len = has(NET_F_MRG_RXBUF) ? RX_BUF_MERGED : RX_BUF_PLAIN;
    for (uint16_t id = 0; id < NETQ_SIZE; id++) post_rx(id);
    suppress(&queues[TX]);
    netdev_flush();
    return 0;
}

/* The next used RX entry, or -1. */
static int next_rx(uint32_t *len)
{
    struct netq *q = &queues[RX];
    if (used_idx(q) == q->last_used) return -1;
    barrier();
    uint32_t id = q->used.ring[q->last_used % NETQ_SIZE].id;
    *len = q->used.ring[q->last_used % NETQ_SIZE].len;
    q->last_used++;
    if (id >= NETQ_SIZE || *len > rx_buffer_len) {
        netdev_stats.rx_errors++;
        return id < NETQ_SIZE ? (int)id : -1;
    }
    return (int)id;
}

uint32_t netdev_receive(uint8_t *frame)
{
    uint32_t len;
    int id = next_rx(&len);
    if (id < 0) return 0;
    uint16_t buffers = has(NET_F_MRG_RXBUF) ? *(uint16_t *)&rx_buffers[id][10] : 1;
    uint32_t total = 0, offset = NET_HDR_LEN;
    int ok = len >= NET_HDR_LEN && buffers >= 1;
    for (uint16_t n = 0;; n++) {
        uint32_t part = len > offset ? len - offset : 0;
        if (total + part > NET_FRAME_MAX) ok = 0;
        for (uint32_t i = 0; ok && i < part; i++) frame[total + i] = rx_buffers[id][offset + i];
        total += part;
        post_rx((uint16_t)id);
        if (n + 1 >= buffers) break;
        /* The rest of a merged frame: the device has used them already (2.7.4.1). */
        id = next_rx(&len);
        if (id < 0) { ok = 0; break; }
        offset = 0;
    }
    if (buffers > 1) netdev_stats.merged_frames++;
    if (!ok) {
        netdev_stats.rx_errors++;
        return 0;
    }
    netdev_stats.rx_frames++;
    return total;
}

static void reap_tx(void)
{
    struct netq *q = &queues[TX];
    while (used_idx(q) != q->last_used) {
        q->last_used++;
        q->in_flight--;
    }
}

uint32_t netdev_tx_pending(void)
{
    reap_tx();
    return queues[TX].in_flight;
}

void netdev_send(const uint8_t *frame, uint32_t len)
{
    struct netq *q = &queues[TX];
    if (len > NET_FRAME_MAX) len = NET_FRAME_MAX;
    reap_tx();
    while (q->in_flight == NETQ_SIZE) {
        netdev_flush();
        netdev_wait(1);
        reap_tx();
    }
    uint16_t id = q->avail.idx % NETQ_SIZE;
    uint8_t *buffer = tx_buffers[id];
    for (uint32_t i = 0; i < NET_HDR_LEN; i++) buffer[i] = 0;
    for (uint32_t i = 0; i < len; i++) buffer[NET_HDR_LEN + i] = frame[i];
    q->desc[id].addr = (uint32_t)buffer;
    q->desc[id].len = NET_HDR_LEN + len;
    q->desc[id].flags = 0;
    q->avail.ring[id] = id;
    barrier();
    q->avail.idx++;
    q->in_flight++;
    netdev_stats.tx_frames++;
}

void netdev_flush(void)
{
    kick(&queues[TX]);
    kick(&queues[RX]);
}

void netdev_wait(int for_transmit)
{
    struct netq *rx = &queues[RX], *tx = &queues[TX];
    if (!opts.interrupts) return;
    arm(rx, 1);
    if (for_transmit) arm(tx, (uint16_t)(tx->in_flight > 1 ? tx->in_flight / 2 : 1));
    int ready = used_idx(rx) != rx->last_used || (for_transmit && used_idx(tx) != tx->last_used);
    if (!ready) wait_for_interrupt();
    suppress(rx);
    suppress(tx);
}
