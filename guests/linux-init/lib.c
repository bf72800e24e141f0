/* The test /init's library: see lib.h. Plain integer code only. */
#include "lib.h"

u32 checks_run, checks_failed;

void *memset(void *d, int c, u64 n)
{
    u8 *p = d;
    while (n--)
        *p++ = (u8)c;
    return d;
}

void *memcpy(void *d, const void *s, u64 n)
{
    u8 *p = d;
    const u8 *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

u64 slen(const char *s)
{
    u64 n = 0;
    while (s[n])
        n++;
    return n;
}

int mem_eq(const void *a, const void *b, u64 n)
{
    const u8 *p = a, *q = b;
    for (u64 i = 0; i < n; i++)
        if (p[i] != q[i])
            return 0;
    return 1;
}

int str_eq(const char *a, const char *b)
{
    u64 n = slen(a);
    return n == slen(b) && mem_eq(a, b, n);
}

int starts_with(const char *s, const char *prefix)
{
    u64 n = slen(prefix);
    return slen(s) >= n && mem_eq(s, prefix, n);
}

const char *base_name(const char *s)
{
    const char *base = s;
    for (; *s; s++)
        if (*s == '/')
            base = s + 1;
    return base;
}

void buf_mem(struct buf *b, const char *s, u64 n)
{
    for (u64 i = 0; i < n && b->len + 1 < b->cap; i++)
        b->text[b->len++] = s[i];
    b->text[b->len] = 0;
}

void buf_str(struct buf *b, const char *s) { buf_mem(b, s, slen(s)); }

void buf_dec(struct buf *b, u64 v)
{
    char digits[20];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        buf_mem(b, &digits[--n], 1);
}

void buf_hex(struct buf *b, u64 v, int digits)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = digits - 1; i >= 0; i--)
        buf_mem(b, &hex[(v >> (i * 4)) & 15], 1);
}

void buf_key(struct buf *b, const char *key)
{
    buf_str(b, " ");
    buf_str(b, key);
    buf_str(b, "=");
}

const char *buf_cstr(struct buf *b)
{
    b->text[b->len] = 0;
    return b->text;
}

void say(const char *line)
{
    BUF(out, 1024);
    buf_str(&out, line);
    /* One line is one line: what a file held never breaks it. */
    for (u32 i = 0; i < out.len; i++)
        if (out.text[i] == '\n' || out.text[i] == '\r')
            out.text[i] = ' ';
    out.text[out.len++] = '\n';
    sys_write(1, out.text, out.len);
}

void check_line(const char *name, int ok, struct buf *detail)
{
    BUF(line, 1024);
    buf_str(&line, "HUSHVM-CHECK ");
    buf_str(&line, name);
    buf_str(&line, ok ? " ok" : " fail");
    if (detail)
        buf_str(&line, buf_cstr(detail));
    checks_run++;
    if (!ok)
        checks_failed++;
    say(buf_cstr(&line));
}

s64 read_text(const char *path, char *out, u64 cap)
{
    s64 fd = sys_open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fd;
    u64 len = 0;
    while (len + 1 < cap) {
        s64 n = sys_read((int)fd, out + len, cap - 1 - len);
        if (n == -EINTR)
            continue;
        if (n <= 0) {
            if (n < 0 && len == 0) {
                sys_close((int)fd);
                return n;
            }
            break;
        }
        len += (u64)n;
    }
    sys_close((int)fd);
    while (len && (out[len - 1] == '\n' || out[len - 1] == '\r'))
        len--;
    out[len] = 0;
    return (s64)len;
}

s64 link_base(const char *path, char *out, u64 cap)
{
    char target[256];
    s64 n = sys_readlink(path, target, sizeof target - 1);
    if (n < 0)
        return n;
    target[n] = 0;
    const char *base = base_name(target);
    u64 len = slen(base);
    if (len + 1 > cap)
        len = cap - 1;
    memcpy(out, base, len);
    out[len] = 0;
    return (s64)len;
}

/* struct linux_dirent64's fixed part. */
struct dirent64 {
    u64 ino;
    s64 off;
    u16 reclen;
    u8 type;
    char name[];
};

s64 each_entry(const char *dir, int (*fn)(const char *name, void *ctx), void *ctx)
{
    static u64 space[512]; /* 4 KiB, 8-byte aligned as the records are */
    s64 fd = sys_open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return fd;
    s64 count = 0;
    for (;;) {
        s64 n = sys_getdents64((int)fd, space, sizeof space);
        if (n <= 0)
            break;
        for (s64 at = 0; at < n;) {
            struct dirent64 *d = (struct dirent64 *)((char *)space + at);
            at += d->reclen;
            if (str_eq(d->name, ".") || str_eq(d->name, ".."))
                continue;
            count++;
            if (fn && fn(d->name, ctx)) {
                sys_close((int)fd);
                return count;
            }
        }
    }
    sys_close((int)fd);
    return count;
}

struct timespec {
    s64 sec, nsec;
};

u64 clock_ns(int clock)
{
    struct timespec t = {0, 0};
    SC(SYS_clock_gettime, clock, &t, 0, 0, 0, 0);
    return (u64)t.sec * 1000000000ul + (u64)t.nsec;
}

u64 now_ms(void) { return clock_ns(CLOCK_MONOTONIC) / 1000000; }

void sleep_ms(u64 ms)
{
    struct timespec t = {(s64)(ms / 1000), (s64)(ms % 1000) * 1000000};
    SC(SYS_nanosleep, &t, 0, 0, 0, 0, 0);
}

u64 wait_limit_ms(void) { return cmdline_number("hushvm.wait", 30) * 1000; }

static char cmdline[4096];

void cmdline_load(void)
{
    if (read_text("/proc/cmdline", cmdline, sizeof cmdline) < 0)
        cmdline[0] = 0;
}

const char *cmdline_value(const char *key, u32 *len)
{
    u64 key_len = slen(key);
    for (const char *p = cmdline; *p;) {
        while (*p == ' ')
            p++;
        const char *word = p;
        while (*p && *p != ' ')
            p++;
        if ((u64)(p - word) > key_len && mem_eq(word, key, key_len) && word[key_len] == '=') {
            *len = (u32)(p - word - (s64)key_len - 1);
            return word + key_len + 1;
        }
    }
    return 0;
}

u32 list_count_of(const char *list, u32 len, const char *word)
{
    u64 word_len = slen(word);
    u32 count = 0;
    for (u32 i = 0; i < len;) {
        u32 start = i;
        while (i < len && list[i] != ',')
            i++;
        count += i - start == word_len && mem_eq(list + start, word, word_len);
        i++;
    }
    return count;
}

/* Module names compare as the kernel's do: '-' and '_' are the same character. */
static char dash_is_underscore(char c) { return c == '-' ? '_' : c; }

void cmdline_module_args(const char *module, struct buf *out)
{
    u64 name_len = slen(module);
    for (const char *p = cmdline; *p;) {
        while (*p == ' ')
            p++;
        const char *word = p;
        while (*p && *p != ' ')
            p++;
        u64 i = 0;
        while (i < name_len && word + i < p &&
               dash_is_underscore(word[i]) == dash_is_underscore(module[i]))
            i++;
        if (i == name_len && word + i + 1 < p && word[i] == '.') {
            buf_str(out, out->len ? " " : "");
            buf_mem(out, word + i + 1, (u64)(p - word) - i - 1);
        }
    }
}

int list_has(const char *list, u32 len, const char *word) { return list_count_of(list, len, word) > 0; }

u32 list_count(const char *list, u32 len)
{
    u32 count = len ? 1 : 0;
    for (u32 i = 0; i < len; i++)
        count += list[i] == ',';
    return count;
}

u64 cmdline_number(const char *key, u64 fallback)
{
    u32 len;
    const char *value = cmdline_value(key, &len);
    if (!value || !len)
        return fallback;
    u64 v = 0;
    for (u32 i = 0; i < len; i++) {
        if (value[i] < '0' || value[i] > '9')
            return fallback;
        v = v * 10 + (u64)(value[i] - '0');
    }
    return v;
}

u64 boot_stamp(void)
{
    u64 x = clock_ns(CLOCK_REALTIME) ^ (clock_ns(CLOCK_MONOTONIC) << 21);
    /* A 64-bit mix (splitmix64's finaliser) so that close clocks give distant stamps. */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ul;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebul;
    return x ^ (x >> 31);
}
