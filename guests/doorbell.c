/* Workload "doorbell" (seed 003): rings a virtqueue doorbell N times, each time with one
 * small request (4 bytes from virtio-rng) that the device completes. Command line:
 * requests=N (1000), doorbell=mmio|pio (how the guest rings: QueueNotify, or hushvm's
 * I/O-port doorbell), transport=mmio|pci (pci: the device is virtio-pci, found on bus 0,
 * and the guest rings its notify address; doorbell= is then ignored). Prints
 * "doorbell: requests completed errors tsc". */
#include "lib.h"
#include "virtio.h"
#include "virtio_pci.h"

static struct vq queue __attribute__((aligned(4096)));
static struct virtio_pci device;
static uint8_t buffer[4];
static uint32_t completed, errors;

/* Makes the prepared chain available again (x86 keeps stores in order; the compiler
 * barriers keep the index write where it is). */
static inline void publish(struct vq *q)
{
    __asm__ volatile("" ::: "memory");
    q->avail.idx++;
    __asm__ volatile("" ::: "memory");
}

/* Waits for the device to use the chain and counts the result. */
static inline void complete(struct vq *q)
{
    uint16_t seen = q->last_used;
    while (*(volatile uint16_t *)&q->used.idx == seen) { }
    q->last_used = (uint16_t)(seen + 1);
    if (q->used.ring[seen % VQ_SIZE].len == sizeof buffer)
        completed++;
    else
        errors++;
}

/* The request loop, one copy per doorbell kind: the kind is fixed before the loop, as a
 * driver fixes its notify routine at probe time, so every kind runs the same
 * instructions but the doorbell write itself (every guest instruction is emulated on
 * the hosts this is measured on, so a branch per request would show in the result). */
static void run_requests(struct vq *q, uint32_t wanted)
{
    if (q->doorbell_port) {
        uint16_t port = q->doorbell_port;
        for (uint32_t i = 0; i < wanted; i++) {
            publish(q);
            outw(port, 0);
            complete(q);
        }
    } else if (q->notify_width == 2) { /* virtio-pci: the queue index, 16 bits */
        volatile uint16_t *notify = (volatile uint16_t *)q->notify;
        for (uint32_t i = 0; i < wanted; i++) {
            publish(q);
            *notify = 0;
            complete(q);
        }
    } else {
        volatile uint32_t *notify = (volatile uint32_t *)q->notify;
        for (uint32_t i = 0; i < wanted; i++) {
            publish(q);
            *notify = 0;
            complete(q);
        }
    }
}

int guest_main(uint32_t magic, const struct mb_info *mbi)
{
    if (magic != MB_BOOT_MAGIC) return 3;
    uint32_t wanted = cmdline_u32(mbi, "requests", 1000);
    int pio = value_is(cmdline_value(mbi, "doorbell"), "pio");
    int status = value_is(cmdline_value(mbi, "transport"), "pci")
                     ? virtio_init_pci(&device, &queue, 4, 0)
                     : virtio_init(&queue, VIRTIO_SLOT_RNG, 4, 0, pio);
    if (status) {
        put_str("doorbell: no virtio-rng\n");
        return 4;
    }
    struct vbuf request = {buffer, sizeof buffer, 1};
    virtio_prepare(&queue, &request, 1);
    uint64_t start = rdtsc();
    run_requests(&queue, wanted);
    uint64_t end = rdtsc();
    put_str("doorbell:");
    put_field("requests", wanted);
    put_field("completed", completed);
    put_field("errors", errors);
    put_field("tsc", end - start);
    put_char('\n');
    return errors ? 2 : 0;
}
