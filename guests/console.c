/* Workload "console" (issue 11): a guest printing through COM1 the way Linux's 8250
 * driver does. Command line: bytes=N (default 1024), pattern=slow|fifo|irq:
 *   slow  wait for THRE, write one byte (serial8250_console_putchar: 2 exits a byte);
 *   fifo  FIFOs on; wait for THRE, write up to 16 bytes (serial8250_console_fifo_write);
 *   irq   FIFOs on; the THR-empty interrupt's handler writes up to 16 bytes (the tty
 *         layer's interrupt-driven transmit).
 * gap_ms=M (default 0): after half the payload, M milliseconds with no output (by the
 * ACPI PM timer), then the rest: the host's bounded drain goes idle in between.
 * The payload is "console-begin\n", then N bytes, byte i being '\n' when i % 64 == 63
 * and 'A' + i % 26 otherwise, then "\nconsole: bytes=N tsc=T errors=E\n"; the host
 * checks the payload byte for byte. */
#include "irq.h"
#include "lib.h"

#define COM1 0x3f8
#define LSR_THRE 0x20
#define FIFO_DEPTH 16
#define COM1_VECTOR 0x44

static volatile uint32_t sent, wanted, interrupts;

static char payload(uint32_t i) { return i % 64 == 63 ? '\n' : (char)('A' + i % 26); }

static void wait_thre(void) { while (!(inb(COM1 + 5) & LSR_THRE)) { } }

static void send_slow(void)
{
    for (; sent < wanted; sent++) {
        wait_thre();
        outb(COM1, (uint8_t)payload(sent));
    }
}

/* Up to a FIFO's worth, as the THR-empty handler and the FIFO console write do. */
static void send_burst(void)
{
    for (uint32_t n = 0; n < FIFO_DEPTH && sent < wanted; n++, sent++)
        outb(COM1, (uint8_t)payload(sent));
}

static void send_fifo(void)
{
    while (sent < wanted) {
        wait_thre();
        send_burst();
    }
}

static void com1_interrupt(uint32_t vector)
{
    (void)vector;
    interrupts++;
    if ((inb(COM1 + 2) & 0x0f) == 0x02) send_burst(); /* IIR: THR empty */
    if (sent >= wanted) outb(COM1 + 1, 0);            /* done: THRE interrupt off */
    lapic_eoi();
}

static void send_irq(void)
{
    pic_mask_all();
    idt_init();
    idt_set(COM1_VECTOR, com1_interrupt);
    lapic_enable(0);
    ioapic_route(4, COM1_VECTOR);
    outb(COM1 + 1, 0x02); /* ETBEI: THR empty now, so the first interrupt comes at once */
    while (sent < wanted) wait_for_interrupt();
}

static void send(int irq, int fifo)
{
    if (irq)
        send_irq();
    else if (fifo)
        send_fifo();
    else
        send_slow();
}

int guest_main(uint32_t magic, const struct mb_info *mbi)
{
    if (magic != MB_BOOT_MAGIC) return 3;
    wanted = cmdline_u32(mbi, "bytes", 1024);
    const char *pattern = cmdline_value(mbi, "pattern");
    put_str("console-begin\n");
    int irq = value_is(pattern, "irq"), fifo = irq || value_is(pattern, "fifo");
    if (fifo) outb(COM1 + 2, 0x07); /* FCR: FIFOs on, cleared */
    uint32_t gap = cmdline_u32(mbi, "gap_ms", 0), total = wanted;
    uint64_t start = rdtsc();
    if (gap) {
        wanted = total / 2;
        send(irq, fifo);
        idle_ms(gap);
        wanted = total;
    }
    send(irq, fifo);
    uint64_t end = rdtsc();
    wait_thre();
    put_str("\nconsole:");
    put_field("bytes", wanted);
    put_field("tsc", end - start);
    put_field("interrupts", interrupts);
    put_field("errors", sent == wanted ? 0 : 1);
    put_char('\n');
    return sent == wanted ? 0 : 2;
}
