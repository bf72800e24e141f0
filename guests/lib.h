/* A freestanding library for hushvm's test guests: port I/O, COM1 output, Multiboot
 * information and command-line arguments. */
#ifndef GUEST_LIB_H
#define GUEST_LIB_H
#include <stdint.h>

#define MB_BOOT_MAGIC 0x2BADB002u

struct mb_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline;
    uint32_t mods_count, mods_addr, syms[4];
    uint32_t mmap_length, mmap_addr;
    uint32_t drives_length, drives_addr, config_table, boot_loader_name;
};
struct mb_module { uint32_t start, end, string, reserved; };
struct mb_mmap_entry { uint32_t size; uint64_t base, length; uint32_t type; } __attribute__((packed));

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint64_t rdtsc(void) { uint32_t lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((uint64_t)hi << 32) | lo; }

void put_char(char c);
void put_str(const char *s);
void put_dec(uint64_t v);
/* Twenty digits, zero-padded: result lines keep one length whatever the counts, so a
 * benchmark's 0-iteration run subtracts their output exactly. */
void put_dec_fixed(uint64_t v);
/* " key=" and the value, fixed width: one field of a result line. */
void put_field(const char *key, uint64_t value);
void put_hex(uint32_t v);
/* The value of "key=" in the Multiboot command line, or 0. */
const char *cmdline_value(const struct mb_info *mbi, const char *key);
uint32_t cmdline_u32(const struct mb_info *mbi, const char *key, uint32_t fallback);
void idle_ms(uint32_t ms);
int value_is(const char *value, const char *word);
uint8_t cmos_read(uint8_t index);
void cmos_write(uint8_t index, uint8_t value);
#endif
