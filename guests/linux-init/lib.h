/* The test /init's own small library: text buffers, console lines, files, time and the
 * kernel command line (see sys.h for why there is no libc). */
#ifndef LINUX_INIT_LIB_H
#define LINUX_INIT_LIB_H
#include "sys.h"

/* Text that grows up to its capacity and is cut there (a check's detail, a path). */
struct buf {
    char *text;
    u32 len, cap;
};
#define BUF(name, size)          \
    char name##_text[size];      \
    struct buf name = {name##_text, 0, size}

void buf_mem(struct buf *b, const char *s, u64 n);
void buf_str(struct buf *b, const char *s);
void buf_dec(struct buf *b, u64 v);
void buf_hex(struct buf *b, u64 v, int digits);
/* " key=" then the value, the usual start of a detail field. */
void buf_key(struct buf *b, const char *key);
const char *buf_cstr(struct buf *b);

u64 slen(const char *s);
int mem_eq(const void *a, const void *b, u64 n);
int str_eq(const char *a, const char *b);
int starts_with(const char *s, const char *prefix);
/* The part of s after its last '/'. */
const char *base_name(const char *s);
void *memset(void *d, int c, u64 n);
void *memcpy(void *d, const void *s, u64 n);

/* One line on the console (fd 1), written in one write so it arrives whole. */
void say(const char *line);
/* `HUSHVM-CHECK <name> ok|fail<detail>`: detail starts with a space (buf_key). Counts
 * the checks and the failures for the closing HUSHVM-DONE line. */
void check_line(const char *name, int ok, struct buf *detail);
extern u32 checks_run, checks_failed;

/* Reads up to cap-1 bytes of a file, NUL-terminated, with trailing newlines cut;
 * returns the length or a negative errno. */
s64 read_text(const char *path, char *out, u64 cap);
/* The base name of a symlink's target, NUL-terminated; negative errno on failure. */
s64 link_base(const char *path, char *out, u64 cap);
/* Calls fn on each entry of a directory other than . and ..; returns the number of
 * entries or a negative errno. fn returns nonzero to stop. */
s64 each_entry(const char *dir, int (*fn)(const char *name, void *ctx), void *ctx);

u64 clock_ns(int clock);
u64 now_ms(void);
void sleep_ms(u64 ms);
/* How long a bounded wait may last (hushvm.wait=SECONDS, default 30). */
u64 wait_limit_ms(void);

/* Reads /proc/cmdline once; then the value of `key=` (its length in *len), or 0. */
void cmdline_load(void);
const char *cmdline_value(const char *key, u32 *len);
/* What modprobe would pass module `module` from the command line: each `module.x=y`
 * word (module names compared with '-' and '_' alike) as `x=y`, space-separated. */
void cmdline_module_args(const char *module, struct buf *out);
/* True if word is one of the comma-separated items of list[0..len). */
int list_has(const char *list, u32 len, const char *word);
/* How many of the comma-separated items of list[0..len) are word. */
u32 list_count_of(const char *list, u32 len, const char *word);
/* The number of comma-separated items in list[0..len). */
u32 list_count(const char *list, u32 len);
/* Decimal value of `key=` or fallback. */
u64 cmdline_number(const char *key, u64 fallback);

/* A 64-bit value that differs from boot to boot, for written data a reader must find. */
u64 boot_stamp(void);

#endif
