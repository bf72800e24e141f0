#include "irq.h"
#include "lib.h"

#define LAPIC_BASE 0xfee00000u
#define IOAPIC_BASE 0xfec00000u
#define MSR_APIC_BASE 0x1b
#define MSR_KVM_PV_EOI_EN 0x4b564d04
#define KVM_FEATURE_PV_EOI (1u << 6)

struct idt_entry {
    uint16_t offset_low, selector;
    uint8_t zero, flags;
    uint16_t offset_high;
} __attribute__((packed));

static struct idt_entry idt[256] __attribute__((aligned(8)));
static irq_handler handlers[256];
static int use_x2apic;
static volatile uint32_t pv_eoi_word __attribute__((aligned(4)));
static int pv_eoi_on;

/* Called by the assembly stubs in stubs.S with the vector number. */
void interrupt_dispatch(uint32_t vector)
{
    if (handlers[vector & 0xff]) handlers[vector & 0xff](vector);
}

extern const uint32_t interrupt_stubs[256];

void idt_init(void)
{
    for (int v = 0; v < 256; v++) {
        uint32_t stub = interrupt_stubs[v];
        idt[v] = (struct idt_entry){(uint16_t)stub, 0x08, 0, 0x8e, (uint16_t)(stub >> 16)};
    }
    struct { uint16_t limit; uint32_t base; } __attribute__((packed)) idtr = {sizeof idt - 1, (uint32_t)idt};
    /* Our own GDT too: Multiboot leaves GDTR undefined, and interrupts reload CS. */
    static const uint64_t gdt[3] = {0, 0x00cf9a000000ffffull, 0x00cf92000000ffffull};
    struct { uint16_t limit; uint32_t base; } __attribute__((packed)) gdtr = {sizeof gdt - 1, (uint32_t)gdt};
    __asm__ volatile("lgdt %0\n\t"
                     "ljmp $0x08, $1f\n"
                     "1:\n\t"
                     "mov $0x10, %%ax\n\t"
                     "mov %%ax, %%ds\n\tmov %%ax, %%es\n\tmov %%ax, %%ss\n\t"
                     "lidt %1" : : "m"(gdtr), "m"(idtr) : "eax", "memory");
}

void idt_set(uint8_t vector, irq_handler handler) { handlers[vector] = handler; }

int x2apic_supported(void)
{
    uint32_t a, b, c, d;
    cpuid(1, &a, &b, &c, &d);
    return (c >> 21) & 1;
}

void lapic_write(uint32_t reg, uint32_t value)
{
    if (use_x2apic)
        wrmsr(0x800 + reg / 16, value);
    else
        *(volatile uint32_t *)(LAPIC_BASE + reg) = value;
}

uint32_t lapic_read(uint32_t reg)
{
    if (use_x2apic) return (uint32_t)rdmsr(0x800 + reg / 16);
    return *(volatile uint32_t *)(LAPIC_BASE + reg);
}

void lapic_enable(int x2apic)
{
    use_x2apic = x2apic;
    uint64_t base = rdmsr(MSR_APIC_BASE) | (1u << 11);
    if (x2apic) base |= 1u << 10;
    wrmsr(MSR_APIC_BASE, base);
    lapic_write(APIC_SVR, 0x1ff); /* enabled, spurious vector 0xff */
}

void lapic_eoi(void) { lapic_write(APIC_EOI, 0); }

void pic_mask_all(void)
{
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}

static void ioapic_write(uint32_t reg, uint32_t value)
{
    *(volatile uint32_t *)IOAPIC_BASE = reg;
    *(volatile uint32_t *)(IOAPIC_BASE + 0x10) = value;
}

void ioapic_route(uint8_t irq, uint8_t vector)
{
    ioapic_write(0x10 + 2 * irq + 1, 0);      /* destination: APIC 0 */
    ioapic_write(0x10 + 2 * irq, vector);     /* fixed, physical, edge, high, unmasked */
}

void ioapic_route_level(uint8_t pin, uint8_t vector)
{
    ioapic_write(0x10 + 2 * pin + 1, 0);
    ioapic_write(0x10 + 2 * pin, (1u << 15) | vector); /* level, high, unmasked */
}

int pv_eoi_enable(void)
{
    uint32_t a, b, c, d;
    cpuid(0x40000000, &a, &b, &c, &d);
    if (b != 0x4b4d564b || c != 0x564b4d56 || d != 0x4d) return 0; /* "KVMKVMKVM\0\0\0" */
    cpuid(0x40000001, &a, &b, &c, &d);
    if (!(a & KVM_FEATURE_PV_EOI)) return 0;
    pv_eoi_word = 0;
    wrmsr(MSR_KVM_PV_EOI_EN, (uint32_t)&pv_eoi_word | 1);
    pv_eoi_on = 1;
    return 1;
}

int pv_eoi_or_write(void)
{
    if (pv_eoi_on) {
        uint8_t was_set;
        __asm__ volatile("btrl $0, %0\n\tsetc %1" : "+m"(pv_eoi_word), "=q"(was_set) : : "memory", "cc");
        if (was_set) return 1;
    }
    lapic_eoi();
    return 0;
}
