//! A vCPU: its registers, `KVM_RUN`, and the decoding of `kvm_run` into a [`VmExit`].

use std::fmt::Write as _;
use std::sync::Arc;

use kvm_bindings::{
    kvm_run, KVM_EXIT_FAIL_ENTRY, KVM_EXIT_HLT, KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_INTR,
    KVM_EXIT_IO, KVM_EXIT_IO_OUT, KVM_EXIT_MMIO, KVM_EXIT_SHUTDOWN, KVM_EXIT_SYSTEM_EVENT,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
};
use kvm_ioctls::VcpuFd;

use super::{KvmError, KvmRing, RunFlag, StatsReader, VcpuState};
use crate::bus::Access;
use crate::exit::{InstructionBytes, VmExit, SUBERROR_EMULATION};
use crate::loader::EntryState;

/// A vCPU of a [`super::Vm`].
#[derive(Debug)]
pub struct Vcpu {
    pub(super) fd: VcpuFd,
    id: u8,
    run_size: usize,
    coalesced_ring_page: Option<u32>,
    /// The MSRs [`Vcpu::save_state`] reads.
    msrs_to_save: Arc<[u32]>,
    /// `immediate_exit`, which other threads set to get this vCPU out of `KVM_RUN`.
    run_flag: Arc<RunFlag>,
}

impl Vcpu {
    pub(super) fn new(
        fd: VcpuFd,
        id: u8,
        (run_size, coalesced_ring_page): (usize, Option<u32>),
        msrs_to_save: Arc<[u32]>,
    ) -> Result<Self, KvmError> {
        let run_flag = Arc::new(RunFlag::map(&fd)?);
        Ok(Self {
            fd,
            id,
            run_size,
            coalesced_ring_page,
            msrs_to_save,
            run_flag,
        })
    }

    /// The handle another thread uses to get this vCPU out of `KVM_RUN`.
    pub fn run_flag(&self) -> Arc<RunFlag> {
        self.run_flag.clone()
    }

    /// This vCPU's index.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Puts the vCPU in the state a boot protocol requires at its entry point.
    pub fn set_entry_state(&self, state: &EntryState) -> Result<(), KvmError> {
        super::boot::set_entry_state(&self.fd, state)
    }

    /// What every vCPU gets before it runs, as a PC's firmware leaves it: the boot MSRs,
    /// the x87/SSE control words, LINT0 as ExtINT and LINT1 as NMI.
    pub(super) fn set_power_on_state(&self) -> Result<(), KvmError> {
        super::boot::set_boot_msrs(&self.fd)?;
        super::boot::set_fpu_defaults(&self.fd)?;
        super::boot::set_lint(&self.fd)
    }

    /// Runs the vCPU until its next exit to userspace. An interrupted run (a signal, or
    /// [`RunFlag::set`]) clears `immediate_exit` before it returns, so the caller's next
    /// look at its requests comes after the clear (see `kvm/run_flag.rs`).
    pub fn run(&mut self) -> Result<VmExit<'_>, KvmError> {
        if let Err(error) = self.fd.run() {
            return match error.errno() {
                libc::EINTR | libc::EAGAIN => {
                    self.run_flag.clear();
                    Ok(VmExit::Interrupted)
                }
                _ => Err(KvmError::Ioctl {
                    what: "KVM_RUN",
                    source: error,
                }),
            };
        }
        let run_size = self.run_size;
        let exit = decode(self.fd.get_kvm_run(), run_size);
        if matches!(exit, VmExit::Interrupted) {
            self.run_flag.clear();
        }
        Ok(exit)
    }

    /// Everything KVM holds for this vCPU; it must be out of `KVM_RUN` (paused).
    pub fn save_state(&self) -> Result<VcpuState, KvmError> {
        super::state::save_vcpu(&self.fd, &self.msrs_to_save)
    }

    /// Puts a saved state into this vCPU, created as the saved one was (same id and
    /// CPUID), after the VM's state is restored.
    pub fn restore_state(&self, saved: &VcpuState) -> Result<(), KvmError> {
        super::state::restore_vcpu(&self.fd, saved)
    }

    /// Maps the VM's coalesced ring through this vCPU.
    pub fn map_posted_write_ring(&self) -> Result<Option<KvmRing>, KvmError> {
        self.coalesced_ring_page
            .map(|page| KvmRing::map(&self.fd, page))
            .transpose()
    }

    /// Opens KVM's binary statistics for this vCPU.
    pub fn stats(&self) -> Result<StatsReader, KvmError> {
        StatsReader::open(&self.fd)
    }

    /// The registers, for a message about a VM that stopped.
    pub fn dump_registers(&self) -> String {
        let (Ok(regs), Ok(sregs)) = (self.fd.get_regs(), self.fd.get_sregs()) else {
            return "registers unavailable".to_string();
        };
        let mut out = String::new();
        let _ = write!(
            out,
            "rip={:#x} rsp={:#x} rflags={:#x}\n  rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x}\n  cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x} ss={:#x} idt={:#x}+{:#x}",
            regs.rip, regs.rsp, regs.rflags, regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi,
            regs.rdi, regs.rbp, sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.efer,
            sregs.cs.selector, sregs.ss.selector, sregs.idt.base, sregs.idt.limit
        );
        out
    }
}

/// Decodes the exit KVM described in `run`.
fn decode(run: &mut kvm_run, run_size: usize) -> VmExit<'_> {
    match run.exit_reason {
        KVM_EXIT_IO => decode_io(run, run_size),
        KVM_EXIT_MMIO => {
            // SAFETY: exit_reason says `mmio` is the valid member of the union.
            let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
            let len = (mmio.len as usize).min(mmio.data.len());
            let (addr, is_write) = (mmio.phys_addr, mmio.is_write != 0);
            let data = &mut mmio.data[..len];
            let access = if is_write {
                Access::Write(data)
            } else {
                Access::Read(data)
            };
            VmExit::Mmio { addr, access }
        }
        KVM_EXIT_HLT => VmExit::Halt,
        KVM_EXIT_SHUTDOWN => VmExit::Shutdown,
        KVM_EXIT_INTR => VmExit::Interrupted,
        KVM_EXIT_INTERNAL_ERROR => decode_internal_error(run),
        KVM_EXIT_FAIL_ENTRY => VmExit::FailEntry {
            // SAFETY: exit_reason says `fail_entry` is the valid member of the union.
            reason: unsafe {
                run.__bindgen_anon_1
                    .fail_entry
                    .hardware_entry_failure_reason
            },
        },
        KVM_EXIT_SYSTEM_EVENT => VmExit::SystemEvent {
            // SAFETY: exit_reason says `system_event` is the valid member of the union.
            kind: unsafe { run.__bindgen_anon_1.system_event.type_ },
        },
        reason => VmExit::Unexpected { reason },
    }
}

/// An internal error, with the instruction's bytes when KVM gives them (an emulation
/// failure with the INSTRUCTION_BYTES flag).
fn decode_internal_error(run: &kvm_run) -> VmExit<'static> {
    // SAFETY: the caller saw exit_reason KVM_EXIT_INTERNAL_ERROR, so `internal` (and its
    // emulation-failure view, which shares its suberror and ndata) is the valid member.
    let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
    let instruction = (suberror == SUBERROR_EMULATION)
        .then(|| {
            // SAFETY: as above; the emulation-failure layout is the one KVM writes for
            // suberror KVM_INTERNAL_ERROR_EMULATION, and every field is plain data.
            let failure = unsafe { run.__bindgen_anon_1.emulation_failure };
            let has_bytes =
                failure.flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES);
            // SAFETY: the flag says the instruction-bytes member of the inner union is set.
            let bytes = unsafe { failure.__bindgen_anon_1.__bindgen_anon_1 };
            (failure.ndata >= 3 && has_bytes != 0 && bytes.insn_size > 0).then(|| {
                InstructionBytes::new(&bytes.insn_bytes[..usize::from(bytes.insn_size).min(15)])
            })
        })
        .flatten();
    VmExit::InternalError {
        suberror,
        instruction,
    }
}

fn decode_io(run: &mut kvm_run, run_size: usize) -> VmExit<'_> {
    // SAFETY: the caller saw exit_reason KVM_EXIT_IO, so `io` is the valid member.
    let io = unsafe { run.__bindgen_anon_1.io };
    let len = usize::from(io.size) * io.count as usize;
    let offset = io.data_offset as usize;
    if io.size == 0 || offset.checked_add(len).is_none_or(|end| end > run_size) {
        return VmExit::Unexpected {
            reason: KVM_EXIT_IO,
        };
    }
    let base = (run as *mut kvm_run).cast::<u8>();
    // SAFETY: KVM maps `run_size` bytes for kvm_run and puts the I/O data inside them
    // (checked just above); the slice borrows `run` mutably, so nothing else touches
    // those bytes while it lives.
    let data = unsafe { std::slice::from_raw_parts_mut(base.add(offset), len) };
    let access = if u32::from(io.direction) == KVM_EXIT_IO_OUT {
        Access::Write(data)
    } else {
        Access::Read(data)
    };
    VmExit::Io {
        port: io.port,
        size: io.size,
        access,
    }
}
