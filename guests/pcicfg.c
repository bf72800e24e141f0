/* Workload "pcicfg": PCI configuration reads as Linux makes them through mechanism #1.
 * Each iteration writes a host bridge register's address to 0xcf8 and reads 0xcfc,
 * checking the value: the vendor/device dword (1b36:0008) and the revision/class dword
 * (06/00/00) in turn, so a read that used a stale address (the previous one) is an
 * error. Command line: reads=N (1000). Prints "pcicfg: reads=N errors=E tsc=T"; exit
 * status 0 when every read was right, 2 when not. The address write is what hushvm can
 * post (coalesce); the read always exits. */
#include "lib.h"

#define HOST_BRIDGE_ID 0x00081b36u
#define HOST_BRIDGE_CLASS 0x06000000u
#define HOST_BRIDGE_ADDRESS 0x80000000u /* enable, bus 0, 00.0, register 0 */
#define CLASS_REGISTER 0x08

/* In assembly so the loop is the same few instructions under any compiler: every guest
 * instruction is emulated on hosts without VMX/SVM. */
static uint32_t run_loop(uint32_t reads)
{
    uint32_t errors = 0, scratch, port;
    uint32_t address = HOST_BRIDGE_ADDRESS, expected = HOST_BRIDGE_ID;
    if (reads == 0) return 0;
    /* Ports above 0xff take their number in DX. */
    __asm__ volatile(
        "1:\n\t"
        "mov $0xcf8, %[port]\n\t"
        "mov %[address], %[scratch]\n\t"
        "outl %[scratch], %w[port]\n\t"
        "mov $0xcfc, %[port]\n\t"
        "inl %w[port], %[scratch]\n\t"
        "cmp %[expected], %[scratch]\n\t"
        "je 2f\n\t"
        "inc %[errors]\n"
        "2:\n\t"
        "xor %[flip_address], %[address]\n\t"
        "xor %[flip_expected], %[expected]\n\t"
        "dec %[count]\n\t"
        "jnz 1b\n\t"
        : [errors] "+r"(errors), [count] "+c"(reads), [scratch] "=&a"(scratch),
          [port] "=&d"(port), [address] "+r"(address), [expected] "+r"(expected)
        : [flip_address] "i"(CLASS_REGISTER), [flip_expected] "i"(HOST_BRIDGE_ID ^ HOST_BRIDGE_CLASS)
        : "memory", "cc");
    return errors;
}

int guest_main(uint32_t magic, const struct mb_info *mbi)
{
    if (magic != MB_BOOT_MAGIC) return 3;
    uint32_t reads = cmdline_u32(mbi, "reads", 1000);
    uint64_t start = rdtsc();
    uint32_t errors = run_loop(reads);
    uint64_t end = rdtsc();
    put_str("pcicfg:");
    put_field("reads", reads);
    put_field("errors", errors);
    put_field("tsc", end - start);
    put_char('\n');
    return errors ? 2 : 0;
}
