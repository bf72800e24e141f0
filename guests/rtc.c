/* Workload "rtc": the access pattern of a Windows guest that uses the RTC as its tick.
 * Each iteration writes a CMOS index to port 0x70 and reads port 0x71. The guest first
 * fills 64 NVRAM bytes with a known pattern, so every read is checked; a wrong value
 * (for instance a read that used a stale index) makes the guest exit with status 2.
 * Command line: iterations=N (default 1000). Prints "rtc: iterations=N tsc=T errors=E". */
#include "lib.h"

#define NVRAM_FIRST 0x40
#define NVRAM_COUNT 64

static uint8_t expected[128];

static uint8_t pattern(uint32_t i) { return (uint8_t)(i * 37u + 11u); }

/* Kept in assembly so that the loop is the same few instructions under any compiler:
 * every guest instruction is emulated on hosts without VMX/SVM. */
static uint32_t run_loop(uint32_t iterations)
{
    uint32_t errors = 0, index = NVRAM_FIRST, scratch;
    if (iterations == 0) return 0;
    __asm__ volatile(
        "1:\n\t"
        "mov %[index], %[scratch]\n\t"
        "outb %b[scratch], $0x70\n\t"
        "inb $0x71, %b[scratch]\n\t"
        "cmpb (%[table], %[index]), %b[scratch]\n\t"
        "je 2f\n\t"
        "inc %[errors]\n"
        "2:\n\t"
        "inc %[index]\n\t"
        "and $0x7f, %[index]\n\t"
        "or $0x40, %[index]\n\t"
        "dec %[count]\n\t"
        "jnz 1b\n\t"
        : [errors] "+r"(errors), [index] "+r"(index), [count] "+c"(iterations),
          [scratch] "=&a"(scratch)
        : [table] "r"(expected)
        : "memory", "cc");
    return errors;
}

int guest_main(uint32_t magic, const struct mb_info *mbi)
{
    if (magic != MB_BOOT_MAGIC) return 3;
    uint32_t iterations = cmdline_u32(mbi, "iterations", 1000);
    for (uint32_t i = 0; i < NVRAM_COUNT; i++) {
        expected[NVRAM_FIRST + i] = pattern(i);
        cmos_write((uint8_t)(NVRAM_FIRST + i), pattern(i));
    }
    uint64_t start = rdtsc();
    uint32_t errors = run_loop(iterations);
    uint64_t end = rdtsc();
    put_str("rtc:");
    put_field("iterations", iterations);
    put_field("tsc", end - start);
    put_field("errors", errors);
    put_char('\n');
    return errors ? 2 : 0;
}
