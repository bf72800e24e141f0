//! A short path through the vCPU filter for the one syscall a vCPU makes on every exit,
//! `ioctl(vcpu_fd, KVM_RUN, 0)`.
//!
//! seccompiler compiles its rules in syscall-number order (they are a `BTreeMap`), each
//! syscall a comparison and a jump over its rules, so `ioctl` (16) is reached only after
//! every smaller number in the list has been tried. The kernel runs the whole path on
//! every `KVM_RUN`: `ioctl` depends on its arguments, so the kernel's per-syscall cache of
//! "always allowed" (Linux 5.11+, `seccomp_cache_prepare`) cannot skip it as it skips
//! `read`, `write` or `futex`. This module inserts, right after seccompiler's architecture
//! check, a test for exactly that call: number `ioctl`, argument 1 equal to `KVM_RUN` in
//! both 32-bit halves. The rules compare the request's low word only (the kernel reads
//! `cmd` as 32 bits), so the high-word test changes no verdict; it keeps the shortcut to
//! the exact call hushvm makes. Anything else falls through to seccompiler's program
//! unchanged. The prefix only ever answers ALLOW for a call the
//! compiled rules allow too, so it widens nothing (`bpf_tests.rs` checks the verdicts and
//! counts the instructions: 26 for `KVM_RUN` before, 9 after).
//!
//! The prefix loads nothing but the syscall number before its first test, so a syscall
//! that is not `ioctl` keeps its place in the kernel's cache.

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use super::SeccompError;

/// Offsets into `struct seccomp_data` (`<linux/seccomp.h>`): `int nr; __u32 arch;
/// __u64 instruction_pointer; __u64 args[6];`, little-endian on x86_64.
const NR_OFFSET: u32 = 0;
const ARGS_OFFSET: u32 = 16;

/// seccompiler's architecture check: load `arch`, compare, kill the process on mismatch.
const ARCH_CHECK_LEN: usize = 3;

/// Classic BPF opcodes as `sock_filter.code` (`<linux/bpf_common.h>`); libc spells them
/// as `u32`, and every one fits in the 16-bit field.
const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// The call to let through early: a syscall whose argument `arg` equals `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotCall {
    pub syscall: i64,
    pub arg: u8,
    pub value: u64,
}

impl HotCall {
    /// `ioctl(_, KVM_RUN, _)`: every exit of every vCPU.
    pub fn kvm_run() -> Self {
        Self {
            syscall: libc::SYS_ioctl,
            arg: 1,
            value: crate::kvm::requests::KVM_RUN(),
        }
    }
}

fn statement(code: u16, k: u32) -> seccompiler::sock_filter {
    seccompiler::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump_if_equal(k: u32, jt: u8, jf: u8) -> seccompiler::sock_filter {
    seccompiler::sock_filter {
        code: JEQ_K,
        jt,
        jf,
        k,
    }
}

/// seccompiler's own architecture check for x86_64, taken from an empty filter so that
/// [`with_hot_call`] can recognise it rather than assume it.
fn arch_check() -> Result<BpfProgram, seccompiler::Error> {
    let empty = SeccompFilter::new(
        Default::default(),
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    let mut program = BpfProgram::try_from(empty)?;
    program.truncate(ARCH_CHECK_LEN);
    Ok(program)
}

/// `program` (seccompiler's, for a filter whose match action is ALLOW) with `call` allowed
/// right after the architecture check. Refuses a program of another shape: the prefix
/// relies on the check coming first and on the rules starting with a load of `nr`.
pub fn with_hot_call(program: BpfProgram, call: HotCall) -> Result<BpfProgram, SeccompError> {
    let arch = arch_check().map_err(SeccompError::FastPath)?;
    let load_nr = statement(LD_W_ABS, NR_OFFSET);
    if program.len() <= ARCH_CHECK_LEN + 1
        || program[..ARCH_CHECK_LEN] != arch[..]
        || program[ARCH_CHECK_LEN] != load_nr
    {
        return Err(SeccompError::UnexpectedShape);
    }
    let nr = u32::try_from(call.syscall).map_err(|_| SeccompError::UnexpectedShape)?;
    let low_offset = ARGS_OFFSET + 8 * u32::from(call.arg);
    let (high, low) = ((call.value >> 32) as u32, call.value as u32);
    let prefix = [
        load_nr,
        // Another syscall: on to the rules, past their own load of `nr` (A holds it).
        jump_if_equal(nr, 0, 6),
        statement(LD_W_ABS, low_offset + 4),
        // A mismatch from here on: on to the rules, which load `nr` again.
        jump_if_equal(high, 0, 3),
        statement(LD_W_ABS, low_offset),
        jump_if_equal(low, 0, 1),
        statement(RET_K, u32::from(SeccompAction::Allow)),
    ];
    let mut fast = Vec::with_capacity(program.len() + prefix.len());
    fast.extend_from_slice(&program[..ARCH_CHECK_LEN]);
    fast.extend_from_slice(&prefix);
    fast.extend_from_slice(&program[ARCH_CHECK_LEN..]);
    Ok(fast)
}
