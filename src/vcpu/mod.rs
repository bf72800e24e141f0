//! The vCPU run loop: a small state machine around `KVM_RUN`.
//!
//! ```text
//! loop: stop asked? -> KVM_RUN -> start timer -> ExitContext::handle -> record time
//!         ^                                          |
//!         +-------- Continue / Interrupted ----------+--> Stop(VmStop)
//! ```

mod exit;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::thread::JoinHandle;

use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::access::DeviceAccess;
use vm_memory::GuestMemoryMmap;

use crate::bus::StopRequest;
use crate::exit::{VmExit, SUBERROR_EMULATION};
use crate::kvm::Vcpu;
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
    RunFailed(String),
    /// KVM's emulator failed on an instruction hushvm does not complete either (or could
    /// not complete: its operand was unmapped); the message names its bytes and RIP.
    Uncompleted(String),
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
            GuestFault::RunFailed(error) => write!(f, "{error}"),
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

/// Runs `vcpu` until the VM stops or `stop` is set.
pub fn run(
    vcpu: &mut Vcpu,
    access: &DeviceAccess,
    stop: &AtomicBool,
    timed: bool,
    fallback: EmulationFallback<'_>,
) -> VcpuReport {
    let mut profile = ExitProfile::default();
    let mut warnings = RateLimiter::default();
    let clock = ExitClock::get();
    let id = vcpu.id();
    let outcome = loop {
        if stop.load(Ordering::Acquire) {
            break VmStop::Requested;
        }
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(error) => break VmStop::Fault(GuestFault::RunFailed(error.to_string())),
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
                    let why = error_chain(&error);
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
        let elapsed = started.map(|s| clock.since(s)).unwrap_or_default();
        profile.record(key, elapsed);
        if let ExitOutcome::Stop(stop) = outcome {
            break stop;
        }
    };
    let registers = matches!(outcome, VmStop::Fault(_)).then(|| vcpu.dump_registers());
    VcpuReport {
        stop: outcome,
        registers,
        profile,
    }
}

/// An error and its sources, one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

extern "C" fn ignore_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal that knocks a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> libc::c_int {
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

/// Knocks the vCPU thread out of `KVM_RUN`, so that it sees its stop flag.
pub fn kick<T>(thread: &JoinHandle<T>) {
    let _ = thread.kill(kick_signal());
}
