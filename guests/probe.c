/* Guest "probe": what hushvm's integration tests look at. The command line picks an
 * action (action=NAME); each prints what it saw on COM1 and returns an exit code.
 *   info    Multiboot information, fw_cfg, unclaimed port and MMIO reads (exit 0x10)
 *   rtc     RTC registers in BCD/24h, binary/24h and BCD/12h form (exit 0x11)
 *   nvram   a long mix of index and data writes and reads; prints a checksum (exit 0x12)
 *   triple  a triple fault: ud2 with an empty IDT (no exit code: the VM shuts down)
 *   int3    int3 with an empty IDT: a triple fault, or on hosts whose KVM emulates
 *           guest code, an emulation failure (KVM_EXIT_INTERNAL_ERROR)
 *   hang    cli; hlt (never exits)
 *   spin    an endless loop without exits
 *   reset   i8042 command 0xFE
 *   exit    exit with code=N */
#include "lib.h"

static void print_kv(const char *key, uint32_t value)
{
    put_str(key);
    put_char('=');
    put_dec(value);
    put_char('\n');
}

static uint64_t fw_cfg_read(uint16_t key, int size)
{
    uint64_t value = 0;
    outw(0x510, key);
    for (int i = 0; i < size; i++) value |= (uint64_t)inb(0x511) << (8 * i);
    return value;
}

static int action_info(uint32_t magic, const struct mb_info *mbi)
{
    put_str("magic=");
    put_hex(magic);
    put_str("\nflags=");
    put_hex(mbi->flags);
    put_char('\n');
    print_kv("mem_lower", mbi->mem_lower);
    print_kv("mem_upper", mbi->mem_upper);
    put_str("cmdline=[");
    put_str((const char *)mbi->cmdline);
    put_str("]\nloader=[");
    put_str((const char *)mbi->boot_loader_name);
    put_str("]\n");
    const struct mb_mmap_entry *e = (const void *)mbi->mmap_addr;
    const uint8_t *end = (const uint8_t *)mbi->mmap_addr + mbi->mmap_length;
    for (; (const uint8_t *)e < end; e = (const void *)((const uint8_t *)e + e->size + 4)) {
        put_str("mmap ");
        put_hex((uint32_t)e->base);
        put_char(' ');
        put_hex((uint32_t)e->length);
        put_char(' ');
        put_dec(e->type);
        put_char('\n');
    }
    print_kv("mods", mbi->mods_count);
    const struct mb_module *m = (const void *)mbi->mods_addr;
    for (uint32_t i = 0; i < mbi->mods_count; i++) {
        put_str("mod=[");
        put_str((const char *)m[i].string);
        put_str("] size=");
        put_dec(m[i].end - m[i].start);
        put_str(" aligned=");
        put_dec((m[i].start & 0xfff) == 0);
        put_str(" first=");
        put_dec(*(const uint8_t *)m[i].start);
        put_char('\n');
    }
    char sig[5] = {0};
    outw(0x510, 0);
    for (int i = 0; i < 4; i++) sig[i] = (char)inb(0x511);
    put_str("fw_cfg signature=");
    put_str(sig);
    put_char('\n');
    print_kv("fw_cfg id", (uint32_t)fw_cfg_read(0x01, 4));
    print_kv("fw_cfg ram_mib", (uint32_t)(fw_cfg_read(0x03, 8) >> 20));
    print_kv("fw_cfg cpus", (uint32_t)fw_cfg_read(0x05, 2));
    print_kv("fw_cfg max_ram", (uint32_t)fw_cfg_read(0x11, 8));
    outb(0x80, 0x42);
    put_str("unclaimed_pio=");
    put_hex(inl(0x1234));
    put_str("\nunclaimed_mmio=");
    put_hex(*(volatile uint32_t *)0xd0000000u);
    *(volatile uint32_t *)0xd0000000u = 1;
    put_char('\n');
    return 0x10;
}

static void print_time(const char *label)
{
    static const uint8_t regs[] = {0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32};
    put_str(label);
    for (unsigned i = 0; i < sizeof regs; i++) {
        put_char(' ');
        put_hex(cmos_read(regs[i]));
    }
    put_char('\n');
}

static int action_rtc(void)
{
    while (cmos_read(0x0a) & 0x80) { } /* wait out an update in progress */
    print_time("bcd24");
    cmos_write(0x0b, 0x06);
    print_time("bin24");
    cmos_write(0x0b, 0x00);
    print_time("bcd12");
    print_kv("reg_a", cmos_read(0x0a));
    print_kv("reg_d", cmos_read(0x0d));
    cmos_write(0x0b, 0x02);
    return 0x11;
}

static int action_nvram(void)
{
    uint32_t sum = 0;
    for (uint32_t round = 1; round <= 3; round++) {
        for (uint32_t i = 0x0e; i < 0x80; i++) cmos_write((uint8_t)(i | (round == 2 ? 0x80 : 0)), (uint8_t)(i * round + 7));
        for (uint32_t i = 0x0e; i < 0x80; i++) sum = sum * 31 + cmos_read((uint8_t)i);
    }
    print_kv("nvram checksum", sum);
    return 0x12;
}

static const struct { uint16_t limit; uint32_t base; } __attribute__((packed)) empty_idt = {0, 0};

static void triple_fault(void) { __asm__ volatile("lidt %0\n\tud2" : : "m"(empty_idt)); }

static void int3_without_idt(void) { __asm__ volatile("lidt %0\n\tint3" : : "m"(empty_idt)); }

int guest_main(uint32_t magic, const struct mb_info *mbi)
{
    const char *action = cmdline_value(mbi, "action");
    put_str("probe: start\n");
    if (value_is(action, "rtc")) return action_rtc();
    if (value_is(action, "nvram")) return action_nvram();
    if (value_is(action, "triple")) triple_fault();
    if (value_is(action, "int3")) int3_without_idt();
    if (value_is(action, "hang")) __asm__ volatile("cli\n\thlt");
    if (value_is(action, "spin")) for (;;) __asm__ volatile("");
    if (value_is(action, "reset")) outb(0x64, 0xfe);
    if (value_is(action, "exit")) return (int)cmdline_u32(mbi, "code", 0);
    return action_info(magic, mbi);
}
