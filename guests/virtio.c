#include "virtio.h"
#include "lib.h"

#define VIRTIO_BASE 0xc0000000u
#define SLOT_BASE(slot) (VIRTIO_BASE + 0x1000u * (uint32_t)(slot))
#define PIO_DOORBELL(slot) (0xb00 + 4 * (slot))
#define NEXT 1
#define WRITE 2

static inline void mmio_write(uint32_t addr, uint32_t value) { *(volatile uint32_t *)addr = value; }
static inline uint32_t mmio_read(uint32_t addr) { return *(volatile uint32_t *)addr; }


uint32_t virtio_read32(int slot, uint32_t offset) { return mmio_read(SLOT_BASE(slot) + offset); }

int virtio_present(int slot, uint32_t device_id)
{
    return virtio_read32(slot, 0x000) == 0x74726976 && virtio_read32(slot, 0x004) == 2 &&
           virtio_read32(slot, 0x008) == device_id;
}

void virtio_add_queue(struct vq *q, int slot, int queue)
{
    uint32_t base = SLOT_BASE(slot);
    mmio_write(base + 0x030, (uint32_t)queue);
    mmio_write(base + 0x038, VQ_SIZE);
    mmio_write(base + 0x080, (uint32_t)q->desc);
    mmio_write(base + 0x084, 0);
    mmio_write(base + 0x090, (uint32_t)&q->avail);
    mmio_write(base + 0x094, 0);
    mmio_write(base + 0x0a0, (uint32_t)&q->used);
    mmio_write(base + 0x0a4, 0);
    mmio_write(base + 0x044, 1);
    q->base = base;
    q->notify = base + 0x050;
    q->notify_width = 4;
    q->doorbell_port = 0;
    q->last_used = q->used.idx;
}

int virtio_init(struct vq *q, int slot, uint32_t device_id, int queue, int pio_doorbell)
{
    uint32_t base = SLOT_BASE(slot);
    if (!virtio_present(slot, device_id)) return -1;
    mmio_write(base + 0x070, 0);
    mmio_write(base + 0x070, 1 | 2);
    mmio_write(base + 0x014, 1);
    if (!(mmio_read(base + 0x010) & 1)) return -2; /* VIRTIO_F_VERSION_1 */
    mmio_write(base + 0x024, 0);
    mmio_write(base + 0x020, 0);
    mmio_write(base + 0x024, 1);
    mmio_write(base + 0x020, 1);
    mmio_write(base + 0x070, 1 | 2 | 8);
    if (!(mmio_read(base + 0x070) & 8)) return -3;
    mmio_write(base + 0x030, (uint32_t)queue);
    if (mmio_read(base + 0x034) < VQ_SIZE) return -4;
    virtio_add_queue(q, slot, queue);
    mmio_write(base + 0x070, 1 | 2 | 8 | 4);
    q->doorbell_port = pio_doorbell ? (uint16_t)PIO_DOORBELL(slot) : 0;
    return 0;
}

void virtio_prepare(struct vq *q, const struct vbuf *bufs, int count)
{
    for (int i = 0; i < count; i++) {
        q->desc[i].addr = (uint32_t)bufs[i].addr;
        q->desc[i].len = bufs[i].len;
        q->desc[i].flags = (uint16_t)((bufs[i].device_writes ? WRITE : 0) | (i + 1 < count ? NEXT : 0));
        q->desc[i].next = (uint16_t)(i + 1);
    }
    for (int i = 0; i < VQ_SIZE; i++) q->avail.ring[i] = 0;
}

uint32_t virtio_submit(struct vq *q, int queue)
{
    /* x86 keeps stores in order; the compiler barrier keeps the index last. */
    __asm__ volatile("" ::: "memory");
    q->avail.idx++;
    __asm__ volatile("" ::: "memory");
    if (q->doorbell_port)
        outw(q->doorbell_port, (uint16_t)queue);
    else if (q->notify_width == 2) /* virtio-pci: the queue index, 16 bits */
        *(volatile uint16_t *)q->notify = (uint16_t)queue;
    else
        mmio_write(q->notify, (uint32_t)queue);
    uint16_t seen = q->last_used;
    while (*(volatile uint16_t *)&q->used.idx == seen) { }
    q->last_used = (uint16_t)(seen + 1);
    return q->used.ring[seen % VQ_SIZE].len;
}

uint32_t virtio_request(struct vq *q, int queue, const struct vbuf *bufs, int count)
{
    virtio_prepare(q, bufs, count);
    return virtio_submit(q, queue);
}
