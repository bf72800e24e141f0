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
 *   exit    exit with code=N
 *   cpuid   KVM's CPUID leaves 0x40000000/1 and the APIC ID (exit 0x14)
 *   uart    COM1's THR-empty interrupt through IOAPIC pin 4 (exit 0x15)
 *   echo    COM1 receive interrupts: echoes host input up to a newline (exit 0x16)
 *   smp     starts the other vCPUs with INIT/SIPI and counts them (exit 0x17)
 *   vconsole  writes a line through virtio-console and waits for its completion
 *           interrupt on IOAPIC pin 7 (exit 0x18)
 *   vecho   receives one buffer of host input on virtio-console and sends back
 *           "vecho:" and what it got (exit 0x1a) */
#include "irq.h"
#include "lib.h"
#include "virtio.h"

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

static int action_cpuid(void)
{
    uint32_t a, b, c, d;
    cpuid(0x40000000, &a, &b, &c, &d);
    char signature[13] = {0};
    for (int i = 0; i < 4; i++) {
        signature[i] = (char)(b >> (8 * i));
        signature[4 + i] = (char)(c >> (8 * i));
        signature[8 + i] = (char)(d >> (8 * i));
    }
    put_str("kvm_signature=[");
    put_str(signature);
    put_str("]\n");
    print_kv("kvm_max_leaf", a);
    cpuid(0x40000001, &a, &b, &c, &d);
    print_kv("pv_eoi", (a >> 6) & 1);
    cpuid(1, &a, &b, &c, &d);
    print_kv("apic_id", b >> 24);
    print_kv("leaf1_ecx", c);
    return 0x14;
}

#define COM1_VECTOR 0x44

static volatile uint32_t com1_interrupts, echo_length;
static char echo_buffer[64];

static void com1_interrupt(uint32_t vector)
{
    (void)vector;
    com1_interrupts++;
    (void)inb(0x3fa); /* IIR: acknowledges a THR-empty interrupt */
    while (inb(0x3fd) & 1) {
        char c = (char)inb(0x3f8);
        if (echo_length < sizeof echo_buffer - 1) echo_buffer[echo_length++] = c;
    }
    lapic_eoi();
}

static void com1_interrupts_on(uint8_t ier)
{
    pic_mask_all();
    idt_init();
    idt_set(COM1_VECTOR, com1_interrupt);
    lapic_enable(0);
    ioapic_route(4, COM1_VECTOR);
    outb(0x3f9, ier);
}

static int action_uart(void)
{
    com1_interrupts_on(0x02);
    while (com1_interrupts == 0) wait_for_interrupt();
    outb(0x3f9, 0);
    print_kv("uart_thre_interrupts", com1_interrupts);
    return 0x15;
}

static int echo_has_newline(void)
{
    for (uint32_t i = 0; i < echo_length; i++)
        if (echo_buffer[i] == '\n') return 1;
    return echo_length >= sizeof echo_buffer - 1;
}

static int action_echo(void)
{
    com1_interrupts_on(0x01);
    put_str("echo: ready\n");
    while (!echo_has_newline()) wait_for_interrupt();
    outb(0x3f9, 0);
    put_str("echo=[");
    for (uint32_t i = 0; i < echo_length && echo_buffer[i] != '\n'; i++) put_char(echo_buffer[i]);
    put_str("]\n");
    print_kv("rx_interrupts", com1_interrupts);
    return 0x16;
}

extern const char ap_trampoline_start[], ap_trampoline_end[];
static volatile uint32_t aps_up;

void ap_main(void)
{
    __atomic_fetch_add(&aps_up, 1, __ATOMIC_SEQ_CST);
}

static void delay(uint32_t loops)
{
    for (volatile uint32_t i = 0; i < loops; i++) { }
}

static int action_smp(void)
{
    uint32_t cpus = (uint32_t)fw_cfg_read(0x05, 2);
    uint8_t *trampoline = (uint8_t *)0x8000;
    for (const char *p = ap_trampoline_start; p < ap_trampoline_end; p++) *trampoline++ = (uint8_t)*p;
    lapic_enable(0);
    lapic_write(APIC_ICR_HIGH, 0);
    lapic_write(APIC_ICR_LOW, 0x000c4500); /* INIT, all excluding self */
    delay(100);
    for (int i = 0; i < 2; i++) {
        lapic_write(APIC_ICR_HIGH, 0);
        lapic_write(APIC_ICR_LOW, 0x000c4600 | (0x8000 >> 12)); /* SIPI, vector 0x08 */
        delay(100);
    }
    for (uint32_t spins = 0; aps_up < cpus - 1 && spins < 200000; spins++) { }
    print_kv("smp cpus", cpus);
    print_kv("smp aps_up", aps_up);
    return 0x17;
}

#define VCONSOLE_VECTOR 0x47
#define VCONSOLE_GSI 7

static struct vq console_queue __attribute__((aligned(4096)));
static volatile uint32_t vconsole_interrupts, vconsole_status;

static void vconsole_interrupt(uint32_t vector)
{
    (void)vector;
    vconsole_interrupts++;
    vconsole_status = virtio_read32(VIRTIO_SLOT_CONSOLE, 0x060);
    *(volatile uint32_t *)(0xc0000000u + 0x1000u * VIRTIO_SLOT_CONSOLE + 0x064) = vconsole_status;
    lapic_eoi();
}

static int action_vconsole(void)
{
    static const char line[] = "hello from virtio-console\n";
    pic_mask_all();
    idt_init();
    idt_set(VCONSOLE_VECTOR, vconsole_interrupt);
    lapic_enable(0);
    ioapic_route(VCONSOLE_GSI, VCONSOLE_VECTOR);
    int status = virtio_init(&console_queue, VIRTIO_SLOT_CONSOLE, 3, 1, 0);
    if (status) {
        print_kv("vconsole init failed at step", (uint32_t)-status);
        return 0x19;
    }
    struct vbuf buffer = {(void *)line, sizeof line - 1, 0};
    virtio_request(&console_queue, 1, &buffer, 1);
    while (vconsole_interrupts == 0) wait_for_interrupt();
    print_kv("vconsole_interrupts", vconsole_interrupts);
    print_kv("vconsole_interrupt_status", vconsole_status);
    print_kv("vconsole_status_after_ack", virtio_read32(VIRTIO_SLOT_CONSOLE, 0x060));
    return 0x18;
}

static struct vq receive_queue __attribute__((aligned(4096)));

static int action_vecho(void)
{
    static char received[64];
    static char reply[80] = "vecho:";
    if (virtio_init(&receive_queue, VIRTIO_SLOT_CONSOLE, 3, 0, 0)) return 0x19;
    virtio_add_queue(&console_queue, VIRTIO_SLOT_CONSOLE, 1);
    put_str("vecho: ready\n");
    struct vbuf in = {received, sizeof received, 1};
    uint32_t got = virtio_request(&receive_queue, 0, &in, 1);
    uint32_t len = 6;
    for (uint32_t i = 0; i < got && len < sizeof reply; i++) reply[len++] = received[i];
    struct vbuf out = {reply, len, 0};
    virtio_request(&console_queue, 1, &out, 1);
    return 0x1a;
}

/* The ACPI PM timer (port 0x608, 3.579545 MHz): two reads around a delay must differ,
 * forwards. */
static int action_pmtimer(void)
{
    uint32_t first = inl(0x608);
    delay(2000);
    uint32_t second = inl(0x608);
    print_kv("pmtimer_first", first);
    print_kv("pmtimer_delta", second - first);
    return second != first ? 0 : 1;
}

/* The ACPI RSDP where the layout puts it (0xe0000): signature and OEM id. */
static int action_acpi(void)
{
    const char *rsdp = (const char *)0xe0000;
    char text[9] = {0};
    for (int i = 0; i < 8; i++) text[i] = rsdp[i];
    put_str("rsdp_signature=[");
    put_str(text);
    put_str("]\n");
    for (int i = 0; i < 6; i++) text[i] = rsdp[9 + i];
    text[6] = 0;
    put_str("rsdp_oem=[");
    put_str(text);
    put_str("]\n");
    print_kv("rsdp_revision", (uint8_t)rsdp[15]);
    return 0;
}

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
    if (value_is(action, "cf9reset")) outb(0xcf9, 0x06);
    if (value_is(action, "cf9spin")) { /* reset, then no exit at all: only the drain sees it */
        idle_ms(cmdline_u32(mbi, "quiet_ms", 0)); /* long enough: the posted zones go idle */
        outb(0xcf9, 0x06);
        for (;;) __asm__ volatile("");
    }
    if (value_is(action, "poweroff")) outw(0x604, (5 << 10) | (1 << 13)); /* S5, SLP_EN */
    if (value_is(action, "pmtimer")) return action_pmtimer();
    if (value_is(action, "acpi")) return action_acpi();
    if (value_is(action, "exit")) return (int)cmdline_u32(mbi, "code", 0);
    if (value_is(action, "cpuid")) return action_cpuid();
    if (value_is(action, "uart")) return action_uart();
    if (value_is(action, "echo")) return action_echo();
    if (value_is(action, "smp")) return action_smp();
    if (value_is(action, "vconsole")) return action_vconsole();
    if (value_is(action, "vecho")) return action_vecho();
    return action_info(magic, mbi);
}
