//! The vCPU run loop: a small state machine around `KVM_RUN`.
//!
//! ```text
//! loop: stop asked? -> KVM_RUN -> start timer -> ExitContext::handle -> record time
//!         ^                                          |
//!         +---------------- Continue ----------------+--> Stop(VmStop)
//!         +--- Interrupted: park while paused -------+
//! ```
//!
//! A pause or a stop gets the vCPU out of `KVM_RUN` through `immediate_exit` and the kick
//! signal (`kvm::RunFlag`); the loop parks only after such an interrupted run, so the
//! exit before it has been completed by KVM (an IN's data is in the guest's register).

mod exit;

use std::fmt;
use std::sync::{Arc, Once};

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::access::DeviceAccess;
use vm_memory::GuestMemoryMmap;

use crate::bus::StopRequest;
use crate::exit::{VmExit, SUBERROR_EMULATION};
use crate::kvm::{KvmError, Vcpu};
use crate::profile::{ExitClock, ExitKey, ExitProfile};
use crate::ratelimit::RateLimiter;

pub use exit::{ExitContext, ExitOutcome};

/// Something the guest did that ends the VM abnormally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestFault {
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    TripleFault,
    /// KVM could not handle something (often an instruction its emulator lacks).
    InternalError { suberror: u32 },
    /// VM entry failed.
    FailEntry { reason: u64 },
    /// A HLT reached userspace.
    Halted,
    /// A system event exit.
    SystemEvent { kind: u32 },
    /// An exit reason hushvm does not handle.
    UnexpectedExit { reason: u32 },
    /// `KVM_RUN` itself failed.
    RunFailed(RunError),
    /// KVM's emulator failed on an instruction hushvm does not complete either (or could
    /// not complete: its operand was unmapped); the message names its bytes and RIP.
    Uncompleted(String),
}

/// Why `KVM_RUN` failed, shared by the clones of a stop (the first reason is kept and
/// reported); equal only to itself.
#[derive(Debug, Clone)]
pub struct RunError(pub Arc<KvmError>);

impl PartialEq for RunError {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for RunError {}

/// A fault's cause, for the message that reports it (see [`crate::errors::chain`]).
impl std::error::Error for GuestFault {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GuestFault::RunFailed(RunError(error)) => Some(&**error),
            _ => None,
        }
    }
}

impl fmt::Display for GuestFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestFault::TripleFault => write!(f, "the guest shut down (triple fault)"),
            GuestFault::InternalError { suberror } => {
                write!(
                    f,
                    "KVM internal error (suberror {suberror}: {})",
                    suberror_name(*suberror)
                )
            }
            GuestFault::FailEntry { reason } => write!(f, "VM entry failed (reason {reason:#x})"),
            GuestFault::Halted => write!(f, "the guest halted with nothing to wake it"),
            GuestFault::SystemEvent { kind } => write!(f, "system event {kind}"),
            GuestFault::UnexpectedExit { reason } => {
                write!(f, "unhandled KVM exit reason {reason}")
            }
            GuestFault::RunFailed(_) => write!(f, "the vCPU cannot run"),
            GuestFault::Uncompleted(why) => write!(
                f,
                "KVM internal error (suberror 1: instruction emulation failed); {why}"
            ),
        }
    }
}

fn suberror_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "instruction emulation failed",
        2 => "simultaneous exceptions",
        3 => "delivery event",
        4 => "unexpected exit reason",
        _ => "unknown",
    }
}

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmStop {
    /// The guest asked: an exit value, a reset, a power-off.
    Guest(StopRequest),
    /// `--timeout` ran out.
    Timeout,
    /// This vCPU was asked to stop (another vCPU stopped the VM, or the timeout ran
    /// out); never the VM's own reason.
    Requested,
    /// The guest crashed or KVM failed.
    Fault(GuestFault),
    /// hushvm received this signal (SIGINT, SIGTERM, SIGHUP) and stopped the VM as a
    /// power-off would.
    Signal(i32),
}

/// Status for a guest crash or KVM failure.
pub const FAULT_STATUS: i32 = 2;
/// Status for a timeout, as `timeout(1)` uses.
pub const TIMEOUT_STATUS: i32 = 124;

impl VmStop {
    /// The process exit status: QEMU's `(v << 1) | 1` for isa-debug-exit, 0 for a reset,
    /// 124 for a timeout, 2 for a crash, 128 + n for signal n (as a shell reports a
    /// process that signal killed: 130 for SIGINT, 143 for SIGTERM).
    pub fn exit_status(&self) -> i32 {
        match self {
            VmStop::Guest(StopRequest::Exit(value)) => ((value << 1) | 1) as i32,
            VmStop::Guest(StopRequest::Reset | StopRequest::PowerOff) => 0,
            VmStop::Timeout | VmStop::Requested => TIMEOUT_STATUS,
            VmStop::Fault(_) => FAULT_STATUS,
            VmStop::Signal(signal) => 128 + signal,
        }
    }
}

/// How a vCPU thread ended.
#[derive(Debug)]
pub struct VcpuReport {
    /// Why.
    pub stop: VmStop,
    /// The registers, when the stop was a fault.
    pub registers: Option<String>,
    /// Its exit profile.
    pub profile: ExitProfile,
}

/// Where the run loop completes the instructions KVM's emulator fails on (`crate::insn`):
/// the guest's RAM, for their memory operands. `None`: such a failure stops the VM.
pub type EmulationFallback<'a> = Option<&'a GuestMemoryMmap>;

/// What the run loop asks its machine between exits (the machine's stop and pause
/// state; a test's stand-in).
pub trait VcpuRequests {
    /// True once the VM is stopping: the loop ends before its next `KVM_RUN`.
    fn stopping(&self) -> bool;
    /// `KVM_RUN` was interrupted: blocks while the VM is paused, counted as parked, and
    /// returns at resume or stop. While parked, `vcpu` saves its state when a snapshot
    /// asks for it.
    fn park_while_paused(&self, vcpu: &Vcpu);
}

/// Runs `vcpu` until the VM stops or `requests` says it is stopping.
pub fn run(
    vcpu: &mut Vcpu,
    access: &DeviceAccess,
    requests: &dyn VcpuRequests,
    timed: bool,
    fallback: EmulationFallback<'_>,
) -> VcpuReport {
    let mut profile = ExitProfile::default();
    let mut warnings = RateLimiter::default();
    let clock = ExitClock::get();
    let id = vcpu.id();
    let outcome = loop {
        if requests.stopping() {
            break VmStop::Requested;
        }
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(error) => break VmStop::Fault(GuestFault::RunFailed(RunError(Arc::new(error)))),
        };
        let started = timed.then(|| clock.now());
        let key = ExitKey::of(&exit);
        if let (
            Some(ram),
            VmExit::InternalError {
                suberror: SUBERROR_EMULATION,
                instruction,
            },
        ) = (fallback, &exit)
        {
            let instruction = *instruction;
            match vcpu.complete_instruction(instruction, ram) {
                Ok(name) => {
                    profile.count_completed(name);
                    continue;
                }
                Err(error) => {
                    let why = crate::errors::chain(&error);
                    break VmStop::Fault(GuestFault::Uncompleted(why));
                }
            }
        }
        let mut context = ExitContext {
            access,
            profile: &mut profile,
            warnings: &mut warnings,
            vcpu: id,
        };
        let outcome = context.handle(exit);
        let elapsed = started.map_or(0, |s| clock.ns_since(s));
        profile.record_ns(key, elapsed);
        match outcome {
            ExitOutcome::Stop(stop) => break stop,
            ExitOutcome::Interrupted => requests.park_while_paused(vcpu),
            ExitOutcome::Continue => {}
        }
    };
    let registers = matches!(outcome, VmStop::Fault(_)).then(|| vcpu.dump_registers());
    VcpuReport {
        stop: outcome,
        registers,
        profile,
    }
}

extern "C" fn ignore_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal that knocks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the (empty) handler for the kick signal, once per process. Without a
/// handler the signal would kill the process; with one, `KVM_RUN` returns EINTR.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = register_signal_handler(kick_signal(), ignore_signal);
    });
    result
}
