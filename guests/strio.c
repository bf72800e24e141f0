/* Workload "strio": moves a buffer through hushvm's data port (0x1f0, ATA PIO style) and
 * checks it. mode=rep (default): one `rep outsb` out and one `rep insw` back per round;
 * mode=loop: an outb/inb per byte. Command line: rounds=N (64), bytes=B (4096, at most
 * 16384). Prints "strio: rounds bytes errors tsc". */
#include "lib.h"

#define DATA 0x1f0
#define COMMAND 0x1f7
#define MAX_BYTES 16384

static uint8_t out[MAX_BYTES] __attribute__((aligned(4096)));
static uint8_t in[MAX_BYTES] __attribute__((aligned(4096)));

int guest_main(uint32_t magic, const struct mb_info *mbi)
{
    if (magic != MB_BOOT_MAGIC) return 3;
    uint32_t rounds = cmdline_u32(mbi, "rounds", 64);
    uint32_t bytes = cmdline_u32(mbi, "bytes", 4096) & ~1u;
    if (bytes > MAX_BYTES) bytes = MAX_BYTES;
    int loop = value_is(cmdline_value(mbi, "mode"), "loop");
    for (uint32_t i = 0; i < bytes; i++) out[i] = (uint8_t)(i * 13u + 5u);
    outb(COMMAND, 1);
    uint32_t errors = 0;
    uint64_t start = rdtsc();
    for (uint32_t round = 0; round < rounds; round++) {
        out[0] = (uint8_t)round;
        if (loop) {
            for (uint32_t i = 0; i < bytes; i++) outb(DATA, out[i]);
            for (uint32_t i = 0; i < bytes; i++) in[i] = inb(DATA);
        } else {
            uint32_t count = bytes, words = bytes / 2;
            const void *src = out;
            void *dst = in;
            __asm__ volatile("cld; rep outsb" : "+S"(src), "+c"(count) : "d"(DATA) : "memory");
            __asm__ volatile("cld; rep insw" : "+D"(dst), "+c"(words) : "d"(DATA) : "memory");
        }
        errors += in[0] != (uint8_t)round;
        errors += in[bytes - 1] != out[bytes - 1];
        errors += in[bytes / 2] != out[bytes / 2];
    }
    uint64_t end = rdtsc();
    put_str("strio:");
    put_field("rounds", rounds);
    put_field("bytes", bytes);
    put_field("errors", errors);
    put_field("tsc", end - start);
    put_char('\n');
    return errors ? 2 : 0;
}
