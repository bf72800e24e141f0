/* Workload "eoi" (seed 002): the LAPIC timer in periodic mode drives N interrupts. If the
 * host advertises PV EOI, the guest registers its per-CPU word with MSR 0x4b564d04 at
 * start-up, and the handler test-and-clears bit 0 and skips the EOI write when it was
 * set. Command line: interrupts=N (1000), mode=xapic|x2apic (xapic: EOI by MMIO write
 * to 0xfee000b0; x2apic: by WRMSR 0x80b), period=LAPIC-timer-count (200000 at divide 1),
 * wait=hlt|spin (how the guest waits between interrupts; default hlt).
 * Prints "eoi: mode=M interrupts=N pv_eoi=P skipped=S written=W tsc=T". */
#include "irq.h"
#include "lib.h"

#define TIMER_VECTOR 0x40

static volatile uint32_t interrupts, skipped, written;

static void timer_interrupt(uint32_t vector)
{
    (void)vector;
    interrupts++;
    if (pv_eoi_or_write())
        skipped++;
    else
        written++;
}

int guest_main(uint32_t magic, const struct mb_info *mbi)
{
    if (magic != MB_BOOT_MAGIC) return 3;
    uint32_t wanted = cmdline_u32(mbi, "interrupts", 1000);
    uint32_t period = cmdline_u32(mbi, "period", 200000);
    int x2apic = value_is(cmdline_value(mbi, "mode"), "x2apic");
    if (x2apic && !x2apic_supported()) {
        put_str("eoi: x2apic not supported\n");
        return 4;
    }
    pic_mask_all();
    idt_init();
    idt_set(TIMER_VECTOR, timer_interrupt);
    lapic_enable(x2apic);
    int pv = pv_eoi_enable();
    uint64_t start = rdtsc();
    lapic_write(APIC_TIMER_DIVIDE, 0xb); /* divide by 1 */
    lapic_write(APIC_LVT_TIMER, TIMER_VECTOR | APIC_TIMER_PERIODIC);
    lapic_write(APIC_TIMER_INITIAL, period);
    if (value_is(cmdline_value(mbi, "wait"), "spin")) {
        sti();
        while (interrupts < wanted) { }
        cli();
    } else {
        while (interrupts < wanted) wait_for_interrupt();
    }
    lapic_write(APIC_LVT_TIMER, APIC_LVT_MASKED);
    lapic_write(APIC_TIMER_INITIAL, 0);
    uint64_t end = rdtsc();
    put_str("eoi: mode=");
    put_str(x2apic ? "x2apic" : "xapic");
    put_field("interrupts", interrupts);
    put_field("pv_eoi", pv);
    put_field("skipped", skipped);
    put_field("written", written);
    put_field("tsc", end - start);
    put_char('\n');
    return 0;
}
