/* Raw Linux x86-64 system calls and the few constants the test /init needs.
 *
 * Hand-written instead of glibc or musl: their string and memory functions use SSE,
 * and the development host's KVM completes almost no instruction outside plain integer
 * code (HOST.md). Built with -mgeneral-regs-only, so the compiler cannot add any. */
#ifndef LINUX_INIT_SYS_H
#define LINUX_INIT_SYS_H

typedef unsigned long u64;
typedef long s64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

#define SYS_read 0
#define SYS_write 1
#define SYS_close 3
#define SYS_ioctl 16
#define SYS_pread64 17
#define SYS_pwrite64 18
#define SYS_nanosleep 35
#define SYS_dup2 33
#define SYS_fsync 74
#define SYS_sync 162
#define SYS_mount 165
#define SYS_reboot 169
#define SYS_getdents64 217
#define SYS_clock_gettime 228
#define SYS_openat 257
#define SYS_readlinkat 267
#define SYS_finit_module 313

#define AT_FDCWD (-100)
#define O_RDONLY 0
#define O_WRONLY 1
#define O_RDWR 2
#define O_NOCTTY 0400
#define O_NONBLOCK 04000
#define O_DIRECT 040000
#define O_DIRECTORY 0200000
#define O_CLOEXEC 02000000

#define EAGAIN 11
#define EEXIST 17
#define EINTR 4

#define CLOCK_REALTIME 0
#define CLOCK_MONOTONIC 1
#define CLOCK_BOOTTIME 7

#define BLKFLSBUF 0x1261
#define TCGETS 0x5401
#define TCSETS 0x5402
#define TIOCOUTQ 0x5411
#define TIOCGSERIAL 0x541e
#define PORT_16550A 4
#define TERMIOS_OPOST 1
#define IOCTL_VM_SOCKETS_GET_LOCAL_CID 0x7b9

#define REBOOT_MAGIC1 0xfee1dead
#define REBOOT_MAGIC2 672274793
#define REBOOT_CMD_POWER_OFF 0x4321fedc
#define REBOOT_CMD_RESTART 0x01234567
#define REBOOT_CMD_HALT 0xcdef0123

static inline s64 syscall6(s64 n, s64 a, s64 b, s64 c, s64 d, s64 e, s64 f)
{
    register s64 r10 __asm__("r10") = d;
    register s64 r8 __asm__("r8") = e;
    register s64 r9 __asm__("r9") = f;
    s64 ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

#define SC(n, a, b, c, d, e, f) \
    syscall6((n), (s64)(a), (s64)(b), (s64)(c), (s64)(d), (s64)(e), (s64)(f))

static inline s64 sys_open(const char *path, int flags) { return SC(SYS_openat, AT_FDCWD, path, flags, 0, 0, 0); }
static inline s64 sys_read(int fd, void *buf, u64 n) { return SC(SYS_read, fd, buf, n, 0, 0, 0); }
static inline s64 sys_write(int fd, const void *buf, u64 n) { return SC(SYS_write, fd, buf, n, 0, 0, 0); }
static inline s64 sys_pread(int fd, void *buf, u64 n, u64 off) { return SC(SYS_pread64, fd, buf, n, off, 0, 0); }
static inline s64 sys_pwrite(int fd, const void *buf, u64 n, u64 off) { return SC(SYS_pwrite64, fd, buf, n, off, 0, 0); }
static inline s64 sys_close(int fd) { return SC(SYS_close, fd, 0, 0, 0, 0, 0); }
static inline s64 sys_ioctl(int fd, u64 req, void *arg) { return SC(SYS_ioctl, fd, req, arg, 0, 0, 0); }
static inline s64 sys_fsync(int fd) { return SC(SYS_fsync, fd, 0, 0, 0, 0, 0); }
static inline s64 sys_dup2(int from, int to) { return SC(SYS_dup2, from, to, 0, 0, 0, 0); }
static inline s64 sys_getdents64(int fd, void *buf, u64 n) { return SC(SYS_getdents64, fd, buf, n, 0, 0, 0); }
static inline s64 sys_readlink(const char *path, char *buf, u64 n) { return SC(SYS_readlinkat, AT_FDCWD, path, buf, n, 0, 0); }
static inline s64 sys_finit_module(int fd, const char *args) { return SC(SYS_finit_module, fd, args, 0, 0, 0, 0); }
static inline s64 sys_mount(const char *src, const char *dst, const char *type) { return SC(SYS_mount, src, dst, type, 0, 0, 0); }
static inline void sys_sync(void) { SC(SYS_sync, 0, 0, 0, 0, 0, 0); }
static inline s64 sys_reboot(u64 cmd) { return SC(SYS_reboot, REBOOT_MAGIC1, REBOOT_MAGIC2, cmd, 0, 0, 0); }

#endif
