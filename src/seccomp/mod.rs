//! Seccomp filters, one per thread kind (Firecracker's model, built in code with rust-vmm's
//! `seccompiler` rather than from JSON), each installed by its thread before the guest
//! runs its first instruction:
//!
//! - **vcpu**: every vCPU thread, as the first thing its closure does, before `KVM_RUN`;
//! - **event loop**: the thread that runs the event loop, as its first action, and
//!   before any vCPU thread is started;
//! - **api**: Firecracker mode's API thread and metrics thread (`crate::api`), first thing;
//! - **main**: the thread that built the machine, right after it started the machine's
//!   threads, when its caller asked for it (`VmControl::filter_builder_thread`: `hushvm
//!   run` and Firecracker mode, which build one machine and then only wait, report, exit).
//!
//! Filters are per thread (no TSYNC): the thread that builds the machine is unfiltered
//! while it builds (opens `/dev/kvm`, maps memory, spawns threads), and stays so in a
//! process that builds again (`hushvm bench` and the tests run many machines in one
//! process); `hushvm run` and Firecracker mode filter it once the machine runs.
//!
//! What each filter allows ([`lists`]): every thread the allocator (`brk`, `mmap` and
//! `mprotect` without `PROT_EXEC`, `munmap`, `mremap`, `madvise`), `futex`,
//! `sched_yield`, `clock_gettime`, `getrandom`, `rt_sigreturn` (the kick signal),
//! `rt_sigprocmask` and `sigaltstack` (thread exit), `close`, `read`, `write`, `exit`,
//! `exit_group`. These take any arguments: their fds and addresses are the thread's own
//! and a filter cannot tell them apart. vCPU threads add `pread64`, `pwrite64`,
//! `fdatasync` (a device served inline; KVM's statistics), `timerfd_settime` (arming the
//! bounded drain) and `ioctl` for six KVM requests only
//! ([`crate::kvm::requests::vcpu_thread`]: `KVM_RUN`, `KVM_GET_REGS`, `KVM_GET_SREGS`,
//! `KVM_IOEVENTFD`, `KVM_SET_GSI_ROUTING`, `KVM_REGISTER_COALESCED_MMIO`). The event
//! loop adds `epoll_wait`/`epoll_pwait`/`epoll_ctl`, `timerfd_settime`, the same file
//! calls, the stop path's `getpid`, `tgkill`, `nanosleep`/`clock_nanosleep`, and `ioctl`
//! for `KVM_UNREGISTER_COALESCED_MMIO` only.
//!
//! A denied syscall ([`SeccompAction`]): with `kill` (the default) a SIGSYS whose handler
//! reports the thread and syscall number and exits with [`VIOLATION_STATUS`]
//! ([`report`]); with `log` the kernel logs it (SECCOMP_RET_LOG) and lets it run; `off`
//! installs nothing.
//!
//! The vCPU filter answers `ioctl(vcpu_fd, KVM_RUN, 0)`, the one syscall on the exit
//! path, before any other rule ([`fast_path`]): 9 classic-BPF instructions instead of the
//! 26 that seccompiler's syscall-number order costs (counted by `bpf_tests.rs`). The other
//! calls a thread makes often (`read`, `write`, `futex`, `epoll_wait`) take any arguments,
//! so the kernel's per-syscall cache allows them without running the filter at all.

#[cfg(test)]
mod bpf_tests;
mod fast_path;
mod lists;
mod report;

use std::fmt;
use std::str::FromStr;

use seccompiler::{BpfProgram, SeccompFilter, TargetArch};
use thiserror::Error;

pub use report::VIOLATION_STATUS;

/// Makes every vCPU thread call `getppid` (outside its list) right after installing its
/// filter: the hook `tests/seccomp.rs` uses to see a violation reported.
pub const SELFTEST_VARIABLE: &str = "HUSHVM_SECCOMP_SELFTEST";

/// What a filter does with a syscall outside its list (`--seccomp`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SeccompAction {
    /// Report the thread and syscall, then end the process (SECCOMP_RET_TRAP + SIGSYS).
    #[default]
    Kill,
    /// Let it run; the kernel logs it (SECCOMP_RET_LOG).
    Log,
    /// No filters.
    Off,
}

impl FromStr for SeccompAction {
    type Err = SeccompError;

    fn from_str(text: &str) -> Result<Self, SeccompError> {
        match text {
            "kill" => Ok(Self::Kill),
            "log" => Ok(Self::Log),
            "off" => Ok(Self::Off),
            other => Err(SeccompError::UnknownAction(other.to_string())),
        }
    }
}

impl fmt::Display for SeccompAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kill => "kill",
            Self::Log => "log",
            Self::Off => "off",
        })
    }
}

/// The kinds of thread that run while the guest does, each with its filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Vcpu,
    EventLoop,
    /// The Firecracker API server's thread, and its metrics thread (`crate::api`).
    Api,
    /// The thread that built the machine, once it only waits for it, reports and exits
    /// (`VmControl::filter_builder_thread`).
    Main,
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Vcpu => "vcpu",
            Self::EventLoop => "event loop",
            Self::Api => "api",
            Self::Main => "main",
        })
    }
}

/// Filters could not be built or installed.
#[derive(Debug, Error)]
pub enum SeccompError {
    #[error("--seccomp {0:?}: expected kill, log or off")]
    UnknownAction(String),
    #[error("cannot build the {kind} seccomp filter")]
    Build {
        kind: ThreadKind,
        #[source]
        source: seccompiler::Error,
    },
    #[error("cannot install the {kind} seccomp filter")]
    Install {
        kind: ThreadKind,
        #[source]
        source: seccompiler::Error,
    },
    #[error("cannot build the vCPU filter's KVM_RUN fast path")]
    FastPath(#[source] seccompiler::Error),
    #[error("seccompiler's vCPU program does not start with the architecture check and a load of the syscall number, so the KVM_RUN fast path cannot follow it")]
    UnexpectedShape,
    #[error("cannot install the SIGSYS handler that reports seccomp violations")]
    Handler(#[source] vmm_sys_util::errno::Error),
}

/// The program for `kind` under `action` (`None` for `off`): seccompiler's, with the
/// `KVM_RUN` fast path in front of a vCPU's rules.
pub fn program(
    kind: ThreadKind,
    action: SeccompAction,
) -> Result<Option<BpfProgram>, SeccompError> {
    program_for(kind, action, false)
}

/// [`program`], with `host_sockets` adding what a vsock device's Unix sockets need.
pub fn program_for(
    kind: ThreadKind,
    action: SeccompAction,
    host_sockets: bool,
) -> Result<Option<BpfProgram>, SeccompError> {
    let compiled = compiled(kind, action, host_sockets)?;
    match (kind, compiled) {
        (ThreadKind::Vcpu, Some(program)) => Ok(Some(fast_path::with_hot_call(
            program,
            fast_path::HotCall::kvm_run(),
        )?)),
        (_, compiled) => Ok(compiled),
    }
}

/// seccompiler's program for `kind`'s rules under `action`, as it compiles them.
fn compiled(
    kind: ThreadKind,
    action: SeccompAction,
    host_sockets: bool,
) -> Result<Option<BpfProgram>, SeccompError> {
    let mismatch = match action {
        SeccompAction::Kill => seccompiler::SeccompAction::Trap,
        SeccompAction::Log => seccompiler::SeccompAction::Log,
        SeccompAction::Off => return Ok(None),
    };
    let mut rules = match kind {
        ThreadKind::Vcpu => lists::vcpu(),
        ThreadKind::EventLoop => lists::event_loop(),
        ThreadKind::Api => lists::api(),
        ThreadKind::Main => lists::main_thread(),
    };
    if host_sockets {
        lists::add_host_sockets(&mut rules);
    }
    let build = |error: seccompiler::BackendError| SeccompError::Build {
        kind,
        source: error.into(),
    };
    let filter = SeccompFilter::new(
        rules,
        mismatch,
        seccompiler::SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(build)?;
    Ok(Some(BpfProgram::try_from(filter).map_err(build)?))
}

/// Every thread kind's program, compiled once per machine before any thread starts.
#[derive(Debug, Clone)]
pub struct Filters {
    vcpu: Option<BpfProgram>,
    event_loop: Option<BpfProgram>,
    api: Option<BpfProgram>,
    main: Option<BpfProgram>,
    selftest: bool,
}

impl Filters {
    /// Compiles the programs for `action` and, for `kill`, installs the SIGSYS handler.
    pub fn new(action: SeccompAction) -> Result<Self, SeccompError> {
        Self::for_machine(action, false)
    }

    /// [`Filters::new`] for a machine whose devices have host sockets (vsock) or not.
    pub fn for_machine(action: SeccompAction, host_sockets: bool) -> Result<Self, SeccompError> {
        if action == SeccompAction::Kill {
            report::install_handler().map_err(SeccompError::Handler)?;
        }
        Ok(Self {
            vcpu: program_for(ThreadKind::Vcpu, action, host_sockets)?,
            event_loop: program_for(ThreadKind::EventLoop, action, host_sockets)?,
            api: program(ThreadKind::Api, action)?,
            main: program(ThreadKind::Main, action)?,
            selftest: std::env::var_os(SELFTEST_VARIABLE).is_some_and(|v| v == "1"),
        })
    }

    /// Installs `kind`'s filter on the calling thread, called `name` in reports.
    pub fn install(&self, kind: ThreadKind, name: &str) -> Result<(), SeccompError> {
        let program = match kind {
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::EventLoop => &self.event_loop,
            ThreadKind::Api => &self.api,
            ThreadKind::Main => &self.main,
        };
        let Some(program) = program else {
            return Ok(());
        };
        report::set_thread_name(name);
        seccompiler::apply_filter(program)
            .map_err(|source| SeccompError::Install { kind, source })?;
        if self.selftest && kind == ThreadKind::Vcpu {
            // A syscall no filter allows: the process must now be reported and stopped.
            let _ = std::os::unix::process::parent_id();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles_under_every_action() {
        for kind in [
            ThreadKind::Vcpu,
            ThreadKind::EventLoop,
            ThreadKind::Api,
            ThreadKind::Main,
        ] {
            for action in [SeccompAction::Kill, SeccompAction::Log] {
                let program = program(kind, action).expect("compiles");
                assert!(program.is_some_and(|p| !p.is_empty()), "{kind} {action}");
            }
            assert!(program(kind, SeccompAction::Off).unwrap().is_none());
        }
    }

    #[test]
    fn the_action_parses_and_prints() {
        for action in [SeccompAction::Kill, SeccompAction::Log, SeccompAction::Off] {
            assert_eq!(action.to_string().parse::<SeccompAction>().unwrap(), action);
        }
        assert_eq!(SeccompAction::default(), SeccompAction::Kill);
        let error = "trap".parse::<SeccompAction>().unwrap_err().to_string();
        assert_eq!(error, "--seccomp \"trap\": expected kill, log or off");
    }
}
