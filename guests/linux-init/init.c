/* hushvm's test /init (PID 1 in the initramfs of scripts/make-initramfs.sh): mounts
 * proc, sysfs and devtmpfs, loads the virtio modules with finit_module, checks the
 * devices through Linux's own drivers, one `HUSHVM-CHECK <name> ok|fail <detail>` line
 * each on the console, then powers off or reboots.
 *
 * The kernel command line chooses (the kernel passes dotted words to no process, so
 * they are read from /proc/cmdline):
 *   hushvm.checks=blk,rng,console,serial,cpus,net,vsock   (default: blk)
 *   hushvm.blk=pci,mmio     the transports of the disks expected (default: any one)
 *   hushvm.cpus=N           the CPUs expected online (for the cpus check)
 *   hushvm.modules=all      load every module, not only those the checks need
 *   hushvm.wait=SECONDS     the longest any wait for a device lasts (default 30)
 *   MODULE.PARAM=VALUE      passed to that module when it loads, as modprobe does
 *   hushvm.end=poweroff|reboot|halt   (default poweroff; reboot=pci makes Linux use
 *                           0xcf9)
 * Every wait is bounded, so a missing device is a `fail` line, never a hang. */
#include "checks.h"

/* The module files that only one check needs; the others (virtio core, transports)
 * are always loaded. */
static const char *const MODULE_CHECKS[][2] = {
    {"virtio_blk.ko", "blk"},
    {"virtio-rng.ko", "rng"},
    {"virtio_console.ko", "console"},
    {"failover.ko", "net"},
    {"net_failover.ko", "net"},
    {"virtio_net.ko", "net"},
    {"vsock.ko", "vsock"},
    {"vmw_vsock_virtio_transport_common.ko", "vsock"},
    {"vmw_vsock_virtio_transport.ko", "vsock"},
};

static const struct {
    const char *name;
    void (*run)(void);
} CHECKS[] = {
    {"blk", check_blk},         {"rng", check_rng},   {"console", check_console},
    {"serial", check_serial},   {"cpus", check_cpus}, {"net", check_net},
    {"vsock", check_vsock},
};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static const char *selected;
static u32 selected_len;

static int wanted_module(const char *file)
{
    u32 len;
    const char *modules = cmdline_value("hushvm.modules", &len);
    if (modules && list_has(modules, len, "all"))
        return 1;
    for (u32 i = 0; i < COUNT(MODULE_CHECKS); i++)
        if (str_eq(file, MODULE_CHECKS[i][0]))
            return list_has(selected, selected_len, MODULE_CHECKS[i][1]);
    return 1;
}

/* Loads one module with the parameters the command line gives it (`virtio_pci.x=y`,
 * as modprobe passes them: the kernel itself reads such words only for built-in
 * code); prints `HUSHVM-MODULE <file> <result> ms=N [args=...]`; 0 on success. */
static int load_module(const char *file)
{
    BUF(path, 128);
    BUF(line, 512);
    BUF(name, 64);
    BUF(args, 256);
    buf_str(&path, "/lib/modules/");
    buf_str(&path, file);
    buf_str(&name, file);
    if (name.len > 3 && str_eq(name.text + name.len - 3, ".ko"))
        name.text[name.len -= 3] = 0;
    cmdline_module_args(buf_cstr(&name), &args);
    u64 started = now_ms();
    s64 fd = sys_open(buf_cstr(&path), O_RDONLY | O_CLOEXEC);
    s64 err = fd < 0 ? fd : sys_finit_module((int)fd, buf_cstr(&args));
    if (fd >= 0)
        sys_close((int)fd);
    buf_str(&line, "HUSHVM-MODULE ");
    buf_str(&line, file);
    /* Built in or loaded already is not an error here. */
    buf_str(&line, err == 0 ? " loaded" : err == -EEXIST ? " present" : " errno=");
    if (err && err != -EEXIST)
        buf_dec(&line, (u64)-err);
    buf_key(&line, "ms");
    buf_dec(&line, now_ms() - started);
    if (args.len) {
        buf_key(&line, "args");
        buf_str(&line, buf_cstr(&args));
    }
    say(buf_cstr(&line));
    return err == 0 || err == -EEXIST ? 0 : -1;
}

/* The modules of /lib/modules/modules.order (dependency order), as the checks need. */
static void load_modules(void)
{
    static char order[4096];
    BUF(detail, 256);
    s64 n = read_text("/lib/modules/modules.order", order, sizeof order);
    u32 loaded = 0, skipped = 0, failed = 0;
    u64 started = now_ms();
    for (s64 at = 0; at < n;) {
        s64 end = at;
        while (end < n && order[end] != '\n')
            end++;
        order[end] = 0;
        const char *file = order + at;
        at = end + 1;
        if (!file[0] || file[0] == '#')
            continue;
        if (!wanted_module(file)) {
            skipped++;
            continue;
        }
        if (load_module(file)) {
            failed++;
            buf_key(&detail, "failed");
            buf_str(&detail, file);
        } else {
            loaded++;
        }
    }
    buf_key(&detail, "loaded");
    buf_dec(&detail, loaded);
    buf_key(&detail, "skipped");
    buf_dec(&detail, skipped);
    buf_key(&detail, "ms");
    buf_dec(&detail, now_ms() - started);
    check_line("modules", n >= 0 && failed == 0, &detail);
}

static void mount_filesystems(void)
{
    /* The kernel gives init /dev/console from the initramfs when the node is there;
     * once devtmpfs is mounted, the console is opened anew in any case. */
    s64 proc = sys_mount("proc", "/proc", "proc");
    s64 sys = sys_mount("sysfs", "/sys", "sysfs");
    s64 dev = sys_mount("devtmpfs", "/dev", "devtmpfs");
    s64 console = sys_open("/dev/console", O_RDWR | O_NOCTTY);
    if (console >= 0) {
        for (int fd = 0; fd < 3; fd++)
            sys_dup2((int)console, fd);
        if (console > 2)
            sys_close((int)console);
    }
    BUF(line, 128);
    buf_str(&line, "HUSHVM-INIT-OK boottime_ms=");
    buf_dec(&line, clock_ns(CLOCK_BOOTTIME) / 1000000);
    say(buf_cstr(&line));
    BUF(detail, 128);
    buf_key(&detail, "proc");
    buf_dec(&detail, (u64)-proc);
    buf_key(&detail, "sysfs");
    buf_dec(&detail, (u64)-sys);
    buf_key(&detail, "devtmpfs");
    buf_dec(&detail, (u64)-dev);
    check_line("mounts", proc == 0 && sys == 0 && dev == 0, &detail);
}

static void run_checks(void)
{
    for (u32 i = 0; i < COUNT(CHECKS); i++)
        if (list_has(selected, selected_len, CHECKS[i].name))
            CHECKS[i].run();
    /* A name that is no check is a failure, not silence. */
    for (u32 i = 0; i < selected_len;) {
        u32 start = i;
        while (i < selected_len && selected[i] != ',')
            i++;
        BUF(name, 32);
        buf_mem(&name, selected + start, i - start);
        i++;
        int known = 0;
        for (u32 c = 0; c < COUNT(CHECKS); c++)
            known |= str_eq(buf_cstr(&name), CHECKS[c].name);
        if (!known && name.len) {
            BUF(detail, 64);
            buf_str(&detail, " unknown-check");
            check_line(buf_cstr(&name), 0, &detail);
        }
    }
}

/* Powers off, reboots or halts as hushvm.end= says; never returns (PID 1 may not). */
static void end(void)
{
    u32 len;
    const char *how = cmdline_value("hushvm.end", &len);
    u64 cmd = REBOOT_CMD_POWER_OFF;
    const char *word = "poweroff";
    if (how && list_has(how, len, "reboot")) {
        cmd = REBOOT_CMD_RESTART;
        word = "reboot";
    } else if (how && list_has(how, len, "halt")) {
        cmd = REBOOT_CMD_HALT;
        word = "halt";
    }
    BUF(line, 128);
    buf_str(&line, "HUSHVM-DONE checks=");
    buf_dec(&line, checks_run);
    buf_str(&line, " failed=");
    buf_dec(&line, checks_failed);
    buf_str(&line, " end=");
    buf_str(&line, word);
    buf_str(&line, " boottime_ms=");
    buf_dec(&line, clock_ns(CLOCK_BOOTTIME) / 1000000);
    say(buf_cstr(&line));
    /* The tty sends in the background and reboot does not wait for it: wait (bounded)
     * until the console's queue is empty, so the last line is not cut. */
    int queued = 0;
    u64 deadline = now_ms() + 5000;
    while (sys_ioctl(1, TIOCOUTQ, &queued) == 0 && queued > 0 && now_ms() < deadline)
        sleep_ms(10);
    sys_sync();
    s64 err = sys_reboot(cmd);
    line.len = 0;
    buf_str(&line, "HUSHVM-END-FAILED errno=");
    buf_dec(&line, (u64)-err);
    say(buf_cstr(&line));
    for (;;)
        sleep_ms(1000000);
}

void start_c(void)
{
    mount_filesystems();
    cmdline_load();
    selected = cmdline_value("hushvm.checks", &selected_len);
    if (!selected) {
        selected = "blk";
        selected_len = 3;
    }
    load_modules();
    run_checks();
    end();
}

/* The process entry: no libc start-up, no arguments needed. */
__asm__(".globl _start\n"
        "_start:\n"
        "    xor %ebp, %ebp\n"
        "    and $-16, %rsp\n"
        "    call start_c\n"
        "    hlt\n");
