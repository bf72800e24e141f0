#include "lib.h"

#define COM1 0x3f8

/* No LSR polling: hushvm's and QEMU's UARTs always accept a byte, and each poll would
 * cost the benchmark an exit. */
void put_char(char c) { outb(COM1, (uint8_t)c); }

void put_str(const char *s) { while (*s) put_char(*s++); }

void put_dec(uint64_t v)
{
    char buf[21];
    int i = 20;
    buf[i] = 0;
    do {
        /* 64-bit division needs libgcc in 32-bit code; divide by 10 by hand. */
        uint64_t q = 0, r = 0;
        for (int bit = 63; bit >= 0; bit--) {
            r = (r << 1) | ((v >> bit) & 1);
            if (r >= 10) { r -= 10; q |= (uint64_t)1 << bit; }
        }
        buf[--i] = (char)('0' + r);
        v = q;
    } while (v);
    put_str(&buf[i]);
}

void put_dec_fixed(uint64_t v)
{
    char digits[21];
    int n = 0;
    do {
        uint64_t q = 0, r = 0;
        for (int bit = 63; bit >= 0; bit--) {
            r = (r << 1) | ((v >> bit) & 1);
            if (r >= 10) { r -= 10; q |= (uint64_t)1 << bit; }
        }
        digits[n++] = (char)('0' + r);
        v = q;
    } while (v);
    for (int pad = n; pad < 20; pad++) put_char('0');
    while (n) put_char(digits[--n]);
}

void put_field(const char *key, uint64_t value)
{
    put_char(' ');
    put_str(key);
    put_char('=');
    put_dec_fixed(value);
}

void put_hex(uint32_t v)
{
    put_str("0x");
    for (int shift = 28; shift >= 0; shift -= 4)
        put_char("0123456789abcdef"[(v >> shift) & 0xf]);
}

static int starts_with(const char *s, const char *prefix)
{
    while (*prefix)
        if (*s++ != *prefix++) return 0;
    return 1;
}

const char *cmdline_value(const struct mb_info *mbi, const char *key)
{
    if (!(mbi->flags & (1u << 2))) return 0;
    const char *s = (const char *)mbi->cmdline;
    while (*s) {
        while (*s == ' ') s++;
        if (starts_with(s, key)) {
            const char *v = s;
            for (const char *k = key; *k; k++) v++;
            if (*v == '=') return v + 1;
        }
        while (*s && *s != ' ') s++;
    }
    return 0;
}

uint32_t cmdline_u32(const struct mb_info *mbi, const char *key, uint32_t fallback)
{
    const char *v = cmdline_value(mbi, key);
    if (!v || *v < '0' || *v > '9') return fallback;
    uint32_t n = 0;
    while (*v >= '0' && *v <= '9') n = n * 10 + (uint32_t)(*v++ - '0');
    return n;
}

int value_is(const char *value, const char *word)
{
    if (!value) return 0;
    while (*word)
        if (*value++ != *word++) return 0;
    return *value == 0 || *value == ' ';
}

uint8_t cmos_read(uint8_t index) { outb(0x70, index); return inb(0x71); }

void cmos_write(uint8_t index, uint8_t value) { outb(0x70, index); outb(0x71, value); }

/* What an application processor runs after smp.S's start-up; guests that start APs
 * define their own. */
__attribute__((weak)) void ap_main(void) { }

/* Waits `ms` milliseconds by the ACPI PM timer (24 bits, 3.579545 MHz): every read exits,
 * nothing else happens meanwhile. */
void idle_ms(uint32_t ms)
{
    uint32_t ticks = ms * 3580, waited = 0, last = inl(0x608) & 0xffffff;
    while (waited < ticks) {
        uint32_t now = inl(0x608) & 0xffffff;
        waited += (now - last) & 0xffffff;
        last = now;
    }
}
