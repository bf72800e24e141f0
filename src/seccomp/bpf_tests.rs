//! A classic-BPF interpreter for the opcodes seccompiler and the fast path emit, so tests
//! can run the filters on chosen `seccomp_data` without a kernel: the verdict, and how
//! many instructions the kernel's interpreter would step through (a count, not a time).
//! Also the kernel's own constant-verdict analysis (`seccomp_is_const_allow` in
//! `kernel/seccomp.c`), which decides per syscall number whether the filter needs to run
//! at all.

use std::collections::BTreeSet;

use seccompiler::sock_filter;

use super::fast_path::{with_hot_call, HotCall};
use super::{compiled, lists, program_for, SeccompAction, ThreadKind};
use crate::kvm::requests;

/// `AUDIT_ARCH_X86_64` and `AUDIT_ARCH_I386` (`<linux/audit.h>`).
const X86_64: u32 = 0xc000_003e;
const I386: u32 = 0x4000_0003;

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const TRAP: u32 = libc::SECCOMP_RET_TRAP;
const KILL_PROCESS: u32 = libc::SECCOMP_RET_KILL_PROCESS;

fn op(code: u32) -> u16 {
    code as u16
}

/// `struct seccomp_data` as the kernel fills it for one syscall.
#[derive(Debug, Clone, Copy)]
struct Data {
    nr: i64,
    arch: u32,
    args: [u64; 6],
}

impl Data {
    fn call(nr: i64, args: &[u64]) -> Self {
        let mut all = [0; 6];
        all[..args.len()].copy_from_slice(args);
        Self {
            nr,
            arch: X86_64,
            args: all,
        }
    }

    /// The 32-bit word at byte `offset` of the structure, little-endian as on x86_64.
    fn word(&self, offset: u32) -> u32 {
        match offset {
            0 => self.nr as u32,
            4 => self.arch,
            8 | 12 => 0, // instruction_pointer: no filter here reads it
            16..=63 if offset % 4 == 0 => {
                let arg = self.args[(offset as usize - 16) / 8];
                if offset % 8 == 0 {
                    arg as u32
                } else {
                    (arg >> 32) as u32
                }
            }
            _ => panic!("load of seccomp_data at {offset}"),
        }
    }
}

/// What the program returned, and after how many instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outcome {
    verdict: u32,
    evaluated: usize,
}

/// A conditional jump's test on the accumulator, or `None` for another opcode.
fn condition(code: u16, a: u32, k: u32) -> Option<bool> {
    let jmp = |bits: u32| op(libc::BPF_JMP | bits | libc::BPF_K);
    Some(match code {
        c if c == jmp(libc::BPF_JEQ) => a == k,
        c if c == jmp(libc::BPF_JGT) => a > k,
        c if c == jmp(libc::BPF_JGE) => a >= k,
        c if c == jmp(libc::BPF_JSET) => a & k != 0,
        _ => return None,
    })
}

/// Runs `program` on `data` as the kernel's classic-BPF interpreter would.
fn run(program: &[sock_filter], data: &Data) -> Outcome {
    let (mut pc, mut a, mut evaluated) = (0usize, 0u32, 0usize);
    loop {
        let insn = program.get(pc).expect("the program ran off its end");
        evaluated += 1;
        pc += 1;
        match insn.code {
            c if c == op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) => a = data.word(insn.k),
            c if c == op(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) => a &= insn.k,
            c if c == op(libc::BPF_ALU | libc::BPF_OR | libc::BPF_K) => a |= insn.k,
            c if c == op(libc::BPF_JMP | libc::BPF_JA) => pc += insn.k as usize,
            c if c == op(libc::BPF_RET | libc::BPF_K) => {
                return Outcome {
                    verdict: insn.k,
                    evaluated,
                }
            }
            code => match condition(code, a, insn.k) {
                Some(true) => pc += usize::from(insn.jt),
                Some(false) => pc += usize::from(insn.jf),
                None => panic!("opcode {code:#x} at {}", pc - 1),
            },
        }
    }
}

/// The kernel's `seccomp_is_const_allow` for x86_64 syscall `nr`: true when the filter
/// allows it whatever its arguments, so the kernel skips the filter for that number.
fn always_allowed(program: &[sock_filter], nr: i64) -> bool {
    let data = Data::call(nr, &[]);
    let (mut pc, mut a) = (0usize, 0u32);
    while let Some(insn) = program.get(pc) {
        pc += 1;
        match insn.code {
            c if c == op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) => match insn.k {
                0 | 4 => a = data.word(insn.k),
                _ => return false, // an argument: not constant
            },
            c if c == op(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) => a &= insn.k,
            c if c == op(libc::BPF_JMP | libc::BPF_JA) => pc += insn.k as usize,
            c if c == op(libc::BPF_RET | libc::BPF_K) => return insn.k == ALLOW,
            code => match condition(code, a, insn.k) {
                Some(true) => pc += usize::from(insn.jt),
                Some(false) => pc += usize::from(insn.jf),
                None => return false,
            },
        }
    }
    panic!("the program ran off its end");
}

fn kvm_run() -> u64 {
    requests::KVM_RUN()
}

/// The syscalls a test tries: every number a filter names, its neighbours, and ioctl with
/// each KVM request allowed and several refused, with high words set and not.
fn probes() -> Vec<Data> {
    let mut numbers: BTreeSet<i64> = (0..=460).collect();
    numbers.extend(lists::vcpu().keys().chain(lists::event_loop().keys()));
    let mut probes: Vec<Data> = numbers
        .iter()
        .map(|nr| Data::call(*nr, &[3, kvm_run(), 0]))
        .collect();
    let mut requests: Vec<u64> = requests::vcpu_thread()
        .iter()
        .map(|(_, request)| u64::from(*request))
        .collect();
    // KVM_SET_REGS, KVM_CREATE_VCPU, KVM_SET_USER_MEMORY_REGION, KVM_RUN's neighbours.
    requests.extend([
        0x4090_ae82,
        0xae41,
        0x4020_ae46,
        0xae7f,
        0xae81,
        0,
        u64::MAX,
    ]);
    for request in requests.clone() {
        requests.extend([request | 1 << 32, request | 0xffff_ffff << 32]);
    }
    for request in requests {
        probes.push(Data::call(libc::SYS_ioctl, &[3, request, 0]));
        probes.push(Data::call(libc::SYS_ioctl, &[3, request, 0x1234]));
    }
    let mmap_exec = u64::from(libc::PROT_EXEC as u32);
    probes.push(Data::call(libc::SYS_mmap, &[0, 4096, mmap_exec]));
    probes.push(Data::call(libc::SYS_fcntl, &[3, libc::F_SETFD as u64]));
    for arch in [I386, 0] {
        probes.push(Data {
            arch,
            ..Data::call(libc::SYS_ioctl, &[3, kvm_run(), 0])
        });
    }
    probes
}

fn vcpu_programs(action: SeccompAction) -> (Vec<sock_filter>, Vec<sock_filter>) {
    let before = compiled(ThreadKind::Vcpu, action, false).unwrap().unwrap();
    let after = program_for(ThreadKind::Vcpu, action, false)
        .unwrap()
        .unwrap();
    (before, after)
}

#[test]
fn the_interpreter_agrees_with_the_lists() {
    let (before, _) = vcpu_programs(SeccompAction::Kill);
    let verdict = |data: Data| run(&before, &data).verdict;
    assert_eq!(verdict(Data::call(libc::SYS_read, &[])), ALLOW);
    assert_eq!(verdict(Data::call(libc::SYS_getppid, &[])), TRAP);
    assert_eq!(verdict(Data::call(libc::SYS_ioctl, &[3, kvm_run()])), ALLOW);
    assert_eq!(verdict(Data::call(libc::SYS_ioctl, &[3, 0xae41])), TRAP);
    let exec = u64::from(libc::PROT_EXEC as u32);
    assert_eq!(verdict(Data::call(libc::SYS_mmap, &[0, 1, 3])), ALLOW);
    assert_eq!(verdict(Data::call(libc::SYS_mmap, &[0, 1, exec])), TRAP);
    let wrong_arch = Data {
        arch: I386,
        ..Data::call(libc::SYS_read, &[])
    };
    assert_eq!(verdict(wrong_arch), KILL_PROCESS);
}

#[test]
fn kvm_run_takes_the_short_path() {
    let (before, after) = vcpu_programs(SeccompAction::Kill);
    let call = Data::call(libc::SYS_ioctl, &[3, kvm_run(), 0]);
    let (slow, fast) = (run(&before, &call), run(&after, &call));
    eprintln!(
        "KVM_RUN: {} BPF instructions with seccompiler's order, {} with the fast path",
        slow.evaluated, fast.evaluated
    );
    assert_eq!((slow.verdict, fast.verdict), (ALLOW, ALLOW));
    // Arch load and test, nr load and test, two argument words loaded and tested, ret.
    assert_eq!(fast.evaluated, 9);
    assert!(slow.evaluated > fast.evaluated + 10, "{slow:?}");
    // A high word in the request: not the call hushvm makes, so not the fast path; the
    // rules compare 32 bits (as the kernel reads `cmd`) and still allow it.
    let high = Data::call(libc::SYS_ioctl, &[3, kvm_run() | 1 << 32, 0]);
    let (slow, fast) = (run(&before, &high), run(&after, &high));
    assert_eq!((slow.verdict, fast.verdict), (ALLOW, ALLOW));
    assert_eq!(fast.evaluated, slow.evaluated + 4);
}

#[test]
fn the_fast_path_changes_no_verdict() {
    for action in [SeccompAction::Kill, SeccompAction::Log] {
        let (before, after) = vcpu_programs(action);
        for data in probes() {
            let (slow, fast) = (run(&before, &data), run(&after, &data));
            assert_eq!(slow.verdict, fast.verdict, "{action} {data:x?}");
            // Off the fast path, its price is the 2 to 6 instructions of its tests.
            assert!(fast.evaluated <= slow.evaluated + 6, "{data:x?}");
        }
    }
}

#[test]
fn the_kernel_still_skips_the_filter_for_the_same_syscalls() {
    let (before, after) = vcpu_programs(SeccompAction::Kill);
    for nr in 0..=460 {
        assert_eq!(
            always_allowed(&before, nr),
            always_allowed(&after, nr),
            "{nr}"
        );
    }
    assert!(always_allowed(&after, libc::SYS_read));
    assert!(always_allowed(&after, libc::SYS_futex));
    assert!(!always_allowed(&after, libc::SYS_ioctl));
    assert!(!always_allowed(&after, libc::SYS_getppid));
}

#[test]
fn the_event_loop_filter_is_seccompilers_own() {
    let event_loop = |f: fn(_, _, _) -> _| f(ThreadKind::EventLoop, SeccompAction::Kill, false);
    assert_eq!(
        event_loop(program_for).unwrap(),
        event_loop(compiled).unwrap()
    );
}

/// A machine with vsock: Unix sockets on both threads, no other socket family.
#[test]
fn host_sockets_allow_unix_sockets_only() {
    for kind in [ThreadKind::Vcpu, ThreadKind::EventLoop] {
        let without = compiled(kind, SeccompAction::Kill, false).unwrap().unwrap();
        let with = compiled(kind, SeccompAction::Kill, true).unwrap().unwrap();
        let unix = libc::AF_UNIX as u64;
        let inet = libc::AF_INET as u64;
        let socket = |program: &[sock_filter], family| {
            run(program, &Data::call(libc::SYS_socket, &[family, 1, 0])).verdict
        };
        assert_eq!(socket(&without, unix), TRAP, "{kind}");
        assert_eq!(socket(&with, unix), ALLOW, "{kind}");
        assert_eq!(socket(&with, inet), TRAP, "{kind}");
        let connect = Data::call(libc::SYS_connect, &[3, 0, 0]);
        assert_eq!(run(&with, &connect).verdict, ALLOW);
        assert_eq!(run(&without, &connect).verdict, TRAP);
        let fionbio = Data::call(libc::SYS_ioctl, &[3, libc::FIONBIO]);
        assert_eq!(run(&with, &fionbio).verdict, ALLOW);
        assert_eq!(run(&without, &fionbio).verdict, TRAP);
    }
}

#[test]
fn a_program_of_another_shape_is_refused() {
    let (before, _) = vcpu_programs(SeccompAction::Kill);
    let headless = before[3..].to_vec();
    assert!(with_hot_call(headless, HotCall::kvm_run()).is_err());
    assert!(with_hot_call(before[..3].to_vec(), HotCall::kvm_run()).is_err());
}
