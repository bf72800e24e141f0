/* Workload "blk": the guest drives virtio-blk. It checks the disk's ID, writes N 4 KiB
 * blocks (pattern=seq: consecutive; pattern=rand: a scattered permutation), flushes,
 * reads them all back and checks every byte. Command line: requests=N (256),
 * pattern=seq|rand, doorbell=mmio|pio, hold=1 (after the flush completes, print
 * "blk: flushed" and spin: the host may then be killed, and the data must be on disk).
 * Prints "blk: requests errors capacity tsc", where requests counts every virtio request
 * made (2N + 2). */
#include "lib.h"
#include "virtio.h"

#define BLOCK 4096
#define SECTORS_PER_BLOCK (BLOCK / 512)

static struct vq queue __attribute__((aligned(4096)));
static uint8_t data[BLOCK] __attribute__((aligned(4096)));
static struct { uint32_t type, reserved; uint64_t sector; } header;
static volatile uint8_t status;

/* Block contents: a fixed base pattern, with the block's number stamped at the start of
 * each 256-byte stretch. Cheap to make and to check (16 words), and any mix-up between
 * blocks shows; the host-side tests check every byte. */
#define STAMPS 16
#define STAMP_STRIDE (BLOCK / STAMPS)

static uint8_t base_pattern(uint32_t i) { return (uint8_t)(i * 7u + 1u); }

static void stamp(uint32_t block)
{
    for (uint32_t k = 0; k < STAMPS; k++) *(uint32_t *)&data[k * STAMP_STRIDE] = block;
}

static uint32_t check(uint32_t block)
{
    uint32_t errors = 0;
    for (uint32_t k = 0; k < STAMPS; k++) {
        errors += *(uint32_t *)&data[k * STAMP_STRIDE] != block;
        errors += data[k * STAMP_STRIDE + 4 + k] != base_pattern(k * STAMP_STRIDE + 4 + k);
    }
    return errors;
}

static int request(uint32_t type, uint64_t sector, void *buffer, uint32_t len, int device_writes)
{
    header.type = type;
    header.sector = sector;
    status = 0xff;
    struct vbuf bufs[3] = {{&header, sizeof header, 0}, {buffer, len, device_writes}, {(void *)&status, 1, 1}};
    if (len) {
        virtio_request(&queue, 0, bufs, 3);
    } else {
        bufs[1] = bufs[2];
        virtio_request(&queue, 0, bufs, 2);
    }
    return status;
}

int guest_main(uint32_t magic, const struct mb_info *mbi)
{
    if (magic != MB_BOOT_MAGIC) return 3;
    uint32_t wanted = cmdline_u32(mbi, "requests", 256);
    int random = value_is(cmdline_value(mbi, "pattern"), "rand");
    if (virtio_init(&queue, VIRTIO_SLOT_BLOCK, 2, 0, value_is(cmdline_value(mbi, "doorbell"), "pio"))) {
        put_str("blk: no virtio-blk\n");
        return 4;
    }
    uint32_t capacity = virtio_read32(VIRTIO_SLOT_BLOCK, 0x100); /* sectors, low word */
    uint32_t blocks = capacity / SECTORS_PER_BLOCK, slots = 1;
    while (slots * 2 <= blocks) slots *= 2;
    if (wanted > slots) wanted = slots;
    uint32_t errors = 0, requests = 0;
    char id[21] = {0};
    errors += request(8, 0, id, 20, 1) != 0;
    requests++;
    const char *expected = "hushvm-disk0";
    for (int i = 0; expected[i]; i++) errors += id[i] != expected[i];
    for (uint32_t i = 0; i < BLOCK; i++) data[i] = base_pattern(i);
    uint64_t start = rdtsc();
    for (int phase = 0; phase < 2; phase++) {
        for (uint32_t n = 0; n < wanted; n++) {
            /* An odd stride walks every slot once: no block is written twice. */
            uint32_t block = random ? (n * 2654435761u) % slots : n;
            if (phase == 0) {
                stamp(block);
                errors += request(1, (uint64_t)block * SECTORS_PER_BLOCK, data, BLOCK, 0) != 0;
            } else {
                stamp(0xffffffffu);
                errors += request(0, (uint64_t)block * SECTORS_PER_BLOCK, data, BLOCK, 1) != 0;
                errors += check(block);
            }
            requests++;
        }
        if (phase == 0) {
            errors += request(4, 0, 0, 0, 0) != 0;
            requests++;
            if (cmdline_u32(mbi, "hold", 0)) {
                put_str(errors ? "blk: flush failed\n" : "blk: flushed\n");
                for (;;) { }
            }
        }
    }
    uint64_t end = rdtsc();
    put_str("blk:");
    put_field("requests", requests);
    put_field("errors", errors);
    put_field("capacity", capacity);
    put_field("tsc", end - start);
    put_char('\n');
    return errors ? 2 : 0;
}
