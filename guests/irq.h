/* Interrupts for hushvm's test guests: an IDT, the local APIC (xAPIC by MMIO or x2APIC
 * by MSR), the IOAPIC, the 8259 masks, CPUID/MSRs, and KVM's PV EOI (seed 002). */
#ifndef GUEST_IRQ_H
#define GUEST_IRQ_H
#include <stdint.h>

typedef void (*irq_handler)(uint32_t vector);

void idt_init(void);
void idt_set(uint8_t vector, irq_handler handler);

static inline void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}
static inline uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((uint64_t)hi << 32) | lo;
}
static inline void wrmsr(uint32_t msr, uint64_t value)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)value), "d"((uint32_t)(value >> 32)));
}
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
/* Enable interrupts and wait for one, atomically (sti's shadow covers hlt). */
static inline void wait_for_interrupt(void) { __asm__ volatile("sti; hlt; cli" ::: "memory"); }

/* Local APIC register offsets (xAPIC MMIO; x2APIC MSR = 0x800 + offset / 16). */
#define APIC_ID 0x20
#define APIC_EOI 0xb0
#define APIC_SVR 0xf0
#define APIC_ICR_LOW 0x300
#define APIC_ICR_HIGH 0x310
#define APIC_LVT_TIMER 0x320
#define APIC_TIMER_INITIAL 0x380
#define APIC_TIMER_DIVIDE 0x3e0
#define APIC_LVT_MASKED (1u << 16)
#define APIC_TIMER_PERIODIC (1u << 17)

int x2apic_supported(void);
void lapic_enable(int x2apic);
void lapic_write(uint32_t reg, uint32_t value);
uint32_t lapic_read(uint32_t reg);
void lapic_eoi(void);

void pic_mask_all(void);
/* Routes ISA interrupt `irq` (edge, active high) to `vector` on APIC 0. */
void ioapic_route(uint8_t irq, uint8_t vector);
/* Routes IOAPIC pin `pin` as a level-triggered, active-high line (a PCI INTx as KVM's
 * resampled irqfd drives it) to `vector` on APIC 0. */
void ioapic_route_level(uint8_t pin, uint8_t vector);

/* PV EOI: returns 1 if the host advertises it (KVM signature and feature bit 6) and the
 * per-CPU word was registered with MSR 0x4b564d04. */
int pv_eoi_enable(void);
/* The guest half of seed 002: test-and-clear the word's bit 0 in one instruction; if it
 * was set, the host will do the EOI and the guest skips it. Returns 1 when skipped. */
int pv_eoi_or_write(void);
#endif
