//! What each thread kind may call, as seccompiler rules: a syscall with no rule is
//! allowed with any arguments; one with rules is allowed when one of them matches.

use std::collections::BTreeMap;

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use crate::kvm::requests;

/// Syscall number -> rules (empty: any arguments).
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// Every thread, for the Rust runtime and glibc once the thread runs: the allocator,
/// locks, the clock's fallback when the vDSO cannot serve it, the kick signal's return,
/// thread exit, and the SIGSYS report itself (`write`, `exit_group`).
const COMMON: &[libc::c_long] = &[
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_getrandom,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_close,
    libc::SYS_write,
    libc::SYS_read,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// A vCPU thread's own calls beyond [`COMMON`]: a device served inline reads and writes
/// its backing file (`pread64`, `pwrite64`, `fdatasync`), and KVM's statistics are read
/// with `pread64`; the first exited write to a bounded posted zone arms the bounded
/// drain's timer (`timerfd_settime`).
const VCPU: &[libc::c_long] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fdatasync,
    libc::SYS_timerfd_settime,
    // virtio-net served inline: frames to and from the tap.
    libc::SYS_readv,
    libc::SYS_writev,
];

/// The event loop's calls beyond [`COMMON`]: epoll, its timers, the same device files as
/// a vCPU (doorbells are served here), and the stop path (kicking a vCPU is
/// `pthread_kill`: `getpid` + `tgkill`; waiting for it is `nanosleep` and `futex`).
const EVENT_LOOP: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_timerfd_settime,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fdatasync,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
];

/// The API thread's calls beyond [`COMMON`] (and the metrics thread's, which shares its
/// filter): the socket server's epoll and accepts (mio), the files a configuration names
/// (checked at PUT, read at InstanceStart: `openat`, `statx`, `lseek`), the log file taking
/// over standard error (`dup2`), and pausing a running VM (kicking a vCPU, as the event
/// loop's stop path; the metrics thread's sleep). No `clone`, `execve` or `socket`.
const API: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_writev,
    libc::SYS_openat,
    libc::SYS_statx,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_lseek,
    libc::SYS_dup2,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
];

/// The builder thread's calls once the machine runs, beyond [`COMMON`]: joining and
/// ending the machine (the stop kick: `getpid`, `tgkill`; `nanosleep`), the end of a run
/// (syncing the disk and the trace: `fdatasync`, `fsync`), and the reports it writes
/// (`--profile-json`, metrics: `openat`, `statx`, `lseek`). No `ioctl`, `clone`, `socket`.
const MAIN: &[libc::c_long] = &[
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_openat,
    libc::SYS_statx,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_lseek,
    libc::SYS_writev,
    // The stop's last offer of held output waits for its destination's room.
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
];

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).expect("argument index below 6")
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("a rule has conditions")
}

fn allow_any(rules: &mut Rules, syscalls: &[libc::c_long]) {
    for syscall in syscalls {
        rules.insert(*syscall, Vec::new());
    }
}

/// `mmap` and `mprotect` for the allocator (glibc's thread arenas map, then grow with
/// `mprotect`), never with `PROT_EXEC`: no thread needs new code once the guest runs.
fn allow_memory(rules: &mut Rules) {
    let exec = u64::from(libc::PROT_EXEC as u32);
    let no_exec = || vec![rule(vec![condition(2, SeccompCmpOp::MaskedEq(exec), 0)])];
    rules.insert(libc::SYS_mmap, no_exec());
    rules.insert(libc::SYS_mprotect, no_exec());
}

/// The rules every thread shares; `fcntl` only as `F_GETFD`, which Rust's debug builds
/// issue when they close a file (to assert that it was open).
fn common() -> Rules {
    let mut rules = Rules::new();
    allow_any(&mut rules, COMMON);
    allow_memory(&mut rules);
    let getfd = u64::from(libc::F_GETFD as u32);
    rules.insert(
        libc::SYS_fcntl,
        vec![rule(vec![condition(1, SeccompCmpOp::Eq, getfd)])],
    );
    rules
}

/// The ioctls beyond KVM's that a thread serving devices issues: virtio-net's
/// activation sets the tap's offloads (TUNSETOFFLOAD) on whichever thread the driver's
/// status write reaches.
const DEVICE_IOCTLS: &[requests::Request] = &[("TUNSETOFFLOAD", libc::TUNSETOFFLOAD as u32)];

/// A vCPU thread: [`COMMON`], [`VCPU`], and `ioctl` for the requests
/// [`requests::vcpu_thread`] and [`DEVICE_IOCTLS`] list only (argument 1, compared as
/// 32 bits).
pub fn vcpu() -> Rules {
    let mut rules = common();
    allow_any(&mut rules, VCPU);
    let mut allowed = requests::vcpu_thread().to_vec();
    allowed.extend_from_slice(DEVICE_IOCTLS);
    rules.insert(libc::SYS_ioctl, ioctls(&allowed));
    rules
}

/// The event-loop thread: [`COMMON`], [`EVENT_LOOP`], and `ioctl` for
/// [`requests::event_loop_thread`] (unregistering an idle bounded zone) and
/// [`DEVICE_IOCTLS`] only.
pub fn event_loop() -> Rules {
    let mut rules = common();
    allow_any(&mut rules, EVENT_LOOP);
    let mut allowed = requests::event_loop_thread().to_vec();
    allowed.extend_from_slice(DEVICE_IOCTLS);
    rules.insert(libc::SYS_ioctl, ioctls(&allowed));
    rules
}

/// The API (and metrics) thread: [`COMMON`], [`API`], `ioctl` only as `FIONBIO` (a
/// socket made non-blocking) and `fcntl` only to read or set a descriptor's flags.
pub fn api() -> Rules {
    let mut rules = common();
    allow_any(&mut rules, API);
    rules.insert(
        libc::SYS_ioctl,
        vec![rule(vec![condition(1, SeccompCmpOp::Eq, libc::FIONBIO)])],
    );
    let fcntl = [libc::F_GETFD, libc::F_GETFL, libc::F_SETFL, libc::F_SETFD];
    rules.insert(
        libc::SYS_fcntl,
        fcntl
            .iter()
            .map(|cmd| rule(vec![condition(1, SeccompCmpOp::Eq, u64::from(*cmd as u32))]))
            .collect(),
    );
    rules
}

/// The builder thread once the machine runs: [`COMMON`] and [`MAIN`].
pub fn main_thread() -> Rules {
    let mut rules = common();
    allow_any(&mut rules, MAIN);
    rules
}

/// What a machine with a vsock device adds to both threads (either serves its queues):
/// Unix sockets only (`socket` with `AF_UNIX`), connecting to a host listener, accepting
/// host programs, reading and writing streams (std's are `recv` and `send` with
/// `MSG_NOSIGNAL`, i.e. `recvfrom` and `sendto`), half-closing them, watching them (`epoll_ctl`; the event loop
/// already may) and making them non-blocking (std's `set_nonblocking` is
/// `ioctl(FIONBIO)`).
pub fn add_host_sockets(rules: &mut Rules) {
    let unix = u64::from(libc::AF_UNIX as u32);
    rules.insert(
        libc::SYS_socket,
        vec![rule(vec![condition(0, SeccompCmpOp::Eq, unix)])],
    );
    allow_any(
        rules,
        &[
            libc::SYS_connect,
            libc::SYS_accept4,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_shutdown,
            libc::SYS_epoll_ctl,
        ],
    );
    let fionbio = rule(vec![condition(
        1,
        SeccompCmpOp::Eq,
        u64::from(libc::FIONBIO as u32),
    )]);
    rules.entry(libc::SYS_ioctl).or_default().push(fionbio);
}

/// One rule per request: argument 1, compared as 32 bits.
fn ioctls(requests: &[requests::Request]) -> Vec<SeccompRule> {
    requests
        .iter()
        .map(|(_, request)| rule(vec![condition(1, SeccompCmpOp::Eq, u64::from(*request))]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_may_issue_only_its_own_kvm_ioctls() {
        assert_eq!(
            event_loop()[&libc::SYS_ioctl].len(),
            requests::event_loop_thread().len() + DEVICE_IOCTLS.len()
        );
        assert_eq!(
            vcpu()[&libc::SYS_ioctl].len(),
            requests::vcpu_thread().len() + DEVICE_IOCTLS.len()
        );
    }

    #[test]
    fn neither_may_start_processes_threads_or_open_files() {
        for rules in [vcpu(), event_loop()] {
            for forbidden in [
                libc::SYS_execve,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_fork,
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_socket,
                libc::SYS_ptrace,
                libc::SYS_getppid,
            ] {
                assert!(!rules.contains_key(&forbidden), "syscall {forbidden}");
            }
        }
    }

    #[test]
    fn the_main_thread_may_not_start_anything_nor_issue_ioctls_once_sealed() {
        let rules = main_thread();
        for forbidden in [
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_socket,
            libc::SYS_ioctl,
            libc::SYS_ptrace,
        ] {
            assert!(!rules.contains_key(&forbidden), "syscall {forbidden}");
        }
    }

    #[test]
    fn the_api_thread_may_not_start_processes_or_threads_or_make_sockets() {
        let rules = api();
        for forbidden in [
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_fork,
            libc::SYS_socket,
            libc::SYS_bind,
            libc::SYS_connect,
            libc::SYS_ptrace,
        ] {
            assert!(!rules.contains_key(&forbidden), "syscall {forbidden}");
        }
        assert_eq!(rules[&libc::SYS_ioctl].len(), 1);
    }
}
