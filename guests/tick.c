/* Workload "tick" (seed 000's Windows 7 pattern): the RTC periodic interrupt at 1024 Hz
 * is the system tick. The handler writes 0x0c to port 0x70 and reads 0x71 (register C)
 * to acknowledge, then EOIs, with the PV EOI protocol when the host offers it.
 * Command line: ticks=N (256). Prints "tick: ticks=N interrupts=I skipped=S written=W
 * handler_tsc=H tsc=T", where I counts every handler run (it must equal what the host
 * injected) and H sums the TSC ticks spent in the handler. */
#include "irq.h"
#include "lib.h"

#define RTC_VECTOR 0x48
#define RTC_IRQ 8

static volatile uint32_t interrupts, skipped, written;
static volatile uint64_t handler_tsc;

static void rtc_interrupt(uint32_t vector)
{
    (void)vector;
    uint64_t start = rdtsc();
    outb(0x70, 0x0c);
    (void)inb(0x71);
    interrupts++;
    if (pv_eoi_or_write())
        skipped++;
    else
        written++;
    handler_tsc += rdtsc() - start;
}

int guest_main(uint32_t magic, const struct mb_info *mbi)
{
    if (magic != MB_BOOT_MAGIC) return 3;
    uint32_t wanted = cmdline_u32(mbi, "ticks", 256);
    pic_mask_all();
    idt_init();
    idt_set(RTC_VECTOR, rtc_interrupt);
    lapic_enable(0);
    int pv = pv_eoi_enable();
    ioapic_route(RTC_IRQ, RTC_VECTOR);
    cmos_write(0x0a, 0x26);                    /* divider on, 1024 Hz */
    (void)cmos_read(0x0c);
    uint64_t start = rdtsc();
    cmos_write(0x0b, cmos_read(0x0b) | 0x40); /* PIE */
    while (interrupts < wanted) wait_for_interrupt();
    cmos_write(0x0b, cmos_read(0x0b) & ~0x40);
    uint64_t end = rdtsc();
    /* An edge sent before PIE went off is still delivered: let it in, then stop. */
    sti();
    for (volatile int i = 0; i < 100; i++) { }
    cli();
    put_str("tick:");
    put_field("ticks", wanted);
    put_field("interrupts", interrupts);
    put_field("pv_eoi", pv);
    put_field("skipped", skipped);
    put_field("written", written);
    put_field("handler_tsc", handler_tsc);
    put_field("tsc", end - start);
    put_char('\n');
    return 0;
}
