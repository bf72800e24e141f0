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
    uint32_t completed = 0, errors = 0;
    virtio_prepare(&queue, &request, 1);
    uint64_t start = rdtsc();
    for (uint32_t i = 0; i < wanted; i++) {
        if (virtio_submit(&queue, 0) == sizeof buffer)
            completed++;
        else
            errors++;
    }
    uint64_t end = rdtsc();
    put_str("doorbell:");
    put_field("requests", wanted);
    put_field("completed", completed);
    put_field("errors", errors);
    put_field("tsc", end - start);
    put_char('\n');
    return errors ? 2 : 0;
}
