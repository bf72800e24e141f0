/* The other devices through Linux's own drivers: virtio-rng, virtio-console, the
 * 16550A on ttyS0, the online CPUs, virtio-net and vsock (presence), and what they
 * share: a virtio device's transport and its interrupt count. */
#include "checks.h"

const char *transport_of_driver(const char *driver)
{
    if (str_eq(driver, "virtio-pci"))
        return "pci";
    if (str_eq(driver, "virtio-mmio"))
        return "mmio";
    return driver;
}

struct first_virtio {
    char name[32];
};

static int take_virtio(const char *name, void *ctx)
{
    struct first_virtio *f = ctx;
    if (!starts_with(name, "virtio") || slen(name) >= sizeof f->name)
        return 0;
    memcpy(f->name, name, slen(name) + 1);
    return 1;
}

int virtio_transport(const char *driver, char *transport, u64 cap, char *device, u64 dcap)
{
    BUF(path, 256);
    buf_str(&path, "/sys/bus/virtio/drivers/");
    buf_str(&path, driver);
    struct first_virtio f = {{0}};
    if (each_entry(buf_cstr(&path), take_virtio, &f) < 0 || !f.name[0])
        return -1;
    buf_str(&path, "/");
    buf_str(&path, f.name);
    buf_str(&path, "/../driver");
    char parent[64];
    if (link_base(buf_cstr(&path), parent, sizeof parent) < 0)
        return -1;
    const char *kind = transport_of_driver(parent);
    u64 n = slen(kind) < cap ? slen(kind) : cap - 1;
    memcpy(transport, kind, n);
    transport[n] = 0;
    n = slen(f.name) < dcap ? slen(f.name) : dcap - 1;
    memcpy(device, f.name, n);
    device[n] = 0;
    return 0;
}

/* Adds " transport=... device=..." for virtio driver `driver`; 0 if none is bound. */
static int add_transport(const char *driver, struct buf *detail, char *device, u64 dcap)
{
    char transport[32];
    int found = virtio_transport(driver, transport, sizeof transport, device, dcap) == 0;
    buf_key(detail, "transport");
    buf_str(detail, found ? transport : "none");
    if (found) {
        buf_key(detail, "device");
        buf_str(detail, device);
    }
    return found;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* True if `name` occurs in text[0..n) as a word of its own or before a '-' (a vector's
 * name) or a ',' (a shared line). */
static int names_device(const char *text, u64 n, const char *name)
{
    u64 len = slen(name);
    for (u64 i = 0; i + len <= n; i++) {
        int starts = i == 0 || text[i - 1] == ' ';
        char next = i + len < n ? text[i + len] : ' ';
        if (starts && mem_eq(text + i, name, len) && (next == ' ' || next == '-' || next == ','))
            return 1;
    }
    return 0;
}

u64 interrupts_of(const char *device, u64 *through_msi)
{
    static char table[32768];
    s64 n = read_text("/proc/interrupts", table, sizeof table);
    u64 total = 0;
    *through_msi = 0;
    for (s64 at = 0; at < n;) {
        s64 end = at;
        while (end < n && table[end] != '\n')
            end++;
        s64 p = at;
        while (p < end && table[p] != ':')
            p++;
        u64 sum = 0;
        for (p++;;) {
            while (p < end && table[p] == ' ')
                p++;
            if (p >= end || !is_digit(table[p]))
                break;
            u64 v = 0;
            while (p < end && is_digit(table[p]))
                v = v * 10 + (u64)(table[p++] - '0');
            sum += v;
        }
        if (p < end && names_device(table + p, (u64)(end - p), device)) {
            total += sum;
            /* The chip column: PCI-MSI-..., PCI-MSIX-... (or IR-PCI-MSI...). */
            for (s64 q = p; q + 8 <= end; q++)
                if (mem_eq(table + q, "PCI-MSI", 7)) {
                    *through_msi += sum;
                    break;
                }
        }
        at = end + 1;
    }
    return total;
}

void check_rng(void)
{
    BUF(detail, 256);
    char current[64], device[32];
    u64 deadline = now_ms() + wait_limit_ms();
    while ((read_text("/sys/class/misc/hw_random/rng_current", current, sizeof current) <= 0 ||
            str_eq(current, "none")) &&
           now_ms() < deadline)
        sleep_ms(50);
    buf_key(&detail, "current");
    buf_str(&detail, current[0] ? current : "none");
    int ok = starts_with(current, "virtio");
    ok = add_transport("virtio_rng", &detail, device, sizeof device) && ok;
    u8 bytes[32];
    u64 got = 0;
    s64 fd = sys_open("/dev/hwrng", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    while (fd >= 0 && got < sizeof bytes && now_ms() < deadline) {
        s64 n = sys_read((int)fd, bytes + got, sizeof bytes - got);
        if (n > 0)
            got += (u64)n;
        else if (n == -EAGAIN || n == -EINTR || n == 0)
            sleep_ms(20);
        else
            break;
    }
    if (fd >= 0)
        sys_close((int)fd);
    int varied = 0;
    for (u64 i = 1; i < got; i++)
        varied |= bytes[i] != bytes[0];
    buf_key(&detail, "bytes");
    buf_dec(&detail, got);
    buf_key(&detail, "first");
    for (u64 i = 0; i < got && i < 8; i++)
        buf_hex(&detail, bytes[i], 2);
    check_line("rng", ok && got == sizeof bytes && varied, &detail);
}

static int take_vport(const char *name, void *ctx)
{
    struct first_virtio *f = ctx;
    if (!starts_with(name, "vport") || slen(name) + 5 >= sizeof f->name)
        return 0;
    memcpy(f->name, "/dev/", 5);
    memcpy(f->name + 5, name, slen(name) + 1);
    return 1;
}

/* /dev/hvc0 (a console port) or else the first /dev/vport*; -errno if neither opens. */
static s64 open_console_port(char *path, u64 cap, u64 deadline)
{
    for (;;) {
        struct first_virtio f = {{0}};
        memcpy(f.name, "/dev/hvc0", 10);
        s64 fd = sys_open(f.name, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) {
            f.name[0] = 0;
            each_entry("/dev", take_vport, &f);
            if (f.name[0])
                fd = sys_open(f.name, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
        }
        if (fd >= 0 || now_ms() >= deadline) {
            memcpy(path, f.name[0] ? f.name : "none", cap < 32 ? cap : 32);
            path[cap - 1] = 0;
            return fd;
        }
        sleep_ms(50);
    }
}

void check_console(void)
{
    BUF(detail, 256);
    char path[32], device[32];
    u64 deadline = now_ms() + wait_limit_ms();
    s64 fd = open_console_port(path, sizeof path, deadline);
    buf_key(&detail, "dev");
    buf_str(&detail, path);
    int ok = add_transport("virtio_console", &detail, device, sizeof device);
    if (fd < 0) {
        buf_key(&detail, "open_errno");
        buf_dec(&detail, (u64)-fd);
        check_line("console", 0, &detail);
        return;
    }
    /* The line arrives as written: no "\r\n" for "\n" (a vport is no tty: no effect). */
    u32 termios[9];
    if (sys_ioctl((int)fd, TCGETS, termios) == 0) {
        termios[1] &= ~(u32)TERMIOS_OPOST;
        sys_ioctl((int)fd, TCSETS, termios);
    }
    u64 stamp = boot_stamp();
    BUF(line, 64);
    buf_str(&line, "HUSHVM-VIRTIO-CONSOLE ");
    buf_hex(&line, stamp, 16);
    buf_str(&line, "\n");
    u64 sent = 0;
    while (sent < line.len && now_ms() < deadline) {
        s64 n = sys_write((int)fd, line.text + sent, line.len - sent);
        if (n > 0)
            sent += (u64)n;
        else if (n == -EAGAIN || n == -EINTR || n == 0)
            sleep_ms(20);
        else
            break;
    }
    int queued = 0;
    while (sys_ioctl((int)fd, TIOCOUTQ, &queued) == 0 && queued > 0 && now_ms() < deadline)
        sleep_ms(20);
    sys_close((int)fd);
    buf_key(&detail, "sent");
    buf_hex(&detail, stamp, 16);
    buf_key(&detail, "bytes");
    buf_dec(&detail, sent);
    buf_key(&detail, "queued");
    buf_dec(&detail, (u64)(queued > 0 ? queued : 0));
    check_line("console", ok && sent == line.len && queued <= 0, &detail);
}

/* Copies the word of `line` that starts with `key` (e.g. "uart:") into the detail. */
static int serial_field(const char *line, const char *key, const char *want, struct buf *detail)
{
    u64 key_len = slen(key);
    for (const char *p = line; *p; p++) {
        if ((p == line || p[-1] == ' ') && mem_eq(p, key, key_len)) {
            const char *end = p;
            while (*end && *end != ' ')
                end++;
            buf_str(detail, " ");
            buf_mem(detail, p, (u64)(end - p));
            return (u64)(end - p) == slen(want) && mem_eq(p, want, slen(want));
        }
    }
    return 0;
}

void check_serial(void)
{
    static char table[4096];
    BUF(detail, 256);
    int ok = 0;
    s64 n = read_text("/proc/tty/driver/serial", table, sizeof table);
    for (s64 at = 0; at < n;) {
        s64 end = at;
        while (end < n && table[end] != '\n')
            end++;
        table[end] = 0;
        if (starts_with(table + at, "0: ")) {
            ok = serial_field(table + at, "uart:", "uart:16550A", &detail);
            ok = serial_field(table + at, "port:", "port:000003F8", &detail) && ok;
            /* Linux's own IRQ number, not necessarily the GSI: shown, not required. */
            serial_field(table + at, "irq:", "", &detail);
        }
        at = end + 1;
    }
    /* struct serial_struct: int type, int line, unsigned port, int irq, ... (72 bytes). */
    int serial[18] = {0};
    s64 fd = sys_open("/dev/ttyS0", O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    s64 got = fd >= 0 ? sys_ioctl((int)fd, TIOCGSERIAL, serial) : fd;
    if (fd >= 0)
        sys_close((int)fd);
    buf_key(&detail, "tiocgserial_type");
    if (got == 0)
        buf_dec(&detail, (u64)serial[0]);
    else
        buf_str(&detail, "error");
    check_line("serial", ok && got == 0 && serial[0] == PORT_16550A, &detail);
}

void check_cpus(void)
{
    BUF(detail, 128);
    BUF(expected, 32);
    char online[64];
    u64 cpus = cmdline_number("hushvm.cpus", 0);
    if (cpus == 1)
        buf_str(&expected, "0");
    else if (cpus > 1) {
        buf_str(&expected, "0-");
        buf_dec(&expected, cpus - 1);
    } else
        buf_str(&expected, "unset(hushvm.cpus=N)");
    if (read_text("/sys/devices/system/cpu/online", online, sizeof online) < 0)
        memcpy(online, "unreadable", 11);
    buf_key(&detail, "online");
    buf_str(&detail, online);
    buf_key(&detail, "expected");
    buf_str(&detail, buf_cstr(&expected));
    check_line("cpus", cpus > 0 && str_eq(online, buf_cstr(&expected)), &detail);
}

struct virtio_netdev {
    char name[32];
};

static int take_virtio_netdev(const char *name, void *ctx)
{
    struct virtio_netdev *nd = ctx;
    BUF(path, 128);
    char driver[32];
    buf_str(&path, "/sys/class/net/");
    buf_str(&path, name);
    buf_str(&path, "/device/driver");
    if (slen(name) >= sizeof nd->name || link_base(buf_cstr(&path), driver, sizeof driver) < 0 ||
        !str_eq(driver, "virtio_net"))
        return 0;
    memcpy(nd->name, name, slen(name) + 1);
    return 1;
}

void check_net(void)
{
    BUF(detail, 256);
    char device[32];
    struct virtio_netdev nd = {{0}};
    u64 deadline = now_ms() + wait_limit_ms();
    while (each_entry("/sys/class/net", take_virtio_netdev, &nd) >= 0 && !nd.name[0] &&
           now_ms() < deadline)
        sleep_ms(50);
    int ok = add_transport("virtio_net", &detail, device, sizeof device);
    buf_key(&detail, "interface");
    buf_str(&detail, nd.name[0] ? nd.name : "none");
    if (nd.name[0]) {
        BUF(path, 128);
        char mac[32];
        buf_str(&path, "/sys/class/net/");
        buf_str(&path, nd.name);
        buf_str(&path, "/address");
        if (read_text(buf_cstr(&path), mac, sizeof mac) > 0) {
            buf_key(&detail, "mac");
            buf_str(&detail, mac);
        }
    }
    check_line("net", ok && nd.name[0], &detail);
}

void check_vsock(void)
{
    BUF(detail, 256);
    char device[32];
    u64 deadline = now_ms() + wait_limit_ms();
    s64 fd;
    while ((fd = sys_open("/dev/vsock", O_RDONLY | O_CLOEXEC)) < 0 && now_ms() < deadline)
        sleep_ms(50);
    int ok = add_transport("vmw_vsock_virtio_transport", &detail, device, sizeof device);
    u32 cid = 0;
    s64 got = fd >= 0 ? sys_ioctl((int)fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid) : fd;
    if (fd >= 0)
        sys_close((int)fd);
    buf_key(&detail, "cid");
    if (got == 0)
        buf_dec(&detail, cid);
    else
        buf_str(&detail, "error");
    /* CIDs 0-2 are the hypervisor's and the host's; a guest has 3 or more. */
    check_line("vsock", ok && got == 0 && cid >= 3 && cid != 0xffffffffu, &detail);
}
