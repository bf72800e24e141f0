//! The KVM side of completing an instruction this host's emulator failed on
//! (`crate::insn`): the vCPU's registers and FPU state in and out, guest memory through
//! KVM_TRANSLATE, the event delivered through KVM_SET_VCPU_EVENTS.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{ioctl_error, KvmError, Vcpu};
use crate::exit::InstructionBytes;
use crate::insn::{self, Event, FpuState, GuestMemory, InsnError, Mode, Registers, Translation};

/// EFER.LMA: long mode is active.
const EFER_LMA: u64 = 1 << 10;

/// Why an instruction the emulator failed on was not completed.
#[derive(Debug, thiserror::Error)]
pub enum CompleteError {
    /// The instruction is outside the set, or its operand could not be reached.
    #[error("cannot complete the instruction at rip={rip:#x} (bytes {bytes}): {reason}")]
    Refused {
        rip: u64,
        bytes: String,
        reason: InsnError,
    },
    /// Reading or writing the vCPU's state failed.
    #[error("completing an instruction")]
    Kvm(#[source] KvmError),
}

impl From<KvmError> for CompleteError {
    fn from(error: KvmError) -> Self {
        CompleteError::Kvm(error)
    }
}

/// Guest memory as the vCPU sees it: KVM translates each page through the guest's page
/// tables, vm-memory reaches the RAM behind it.
struct VcpuMemory<'a> {
    fd: &'a VcpuFd,
    ram: &'a GuestMemoryMmap,
}

impl GuestMemory for VcpuMemory<'_> {
    fn translate(&mut self, virtual_address: u64) -> Option<Translation> {
        let translation = self.fd.translate_gva(virtual_address).ok()?;
        (translation.valid != 0).then_some(Translation {
            physical: translation.physical_address,
            writable: translation.writeable != 0,
        })
    }

    fn read_physical(&mut self, physical: u64, buf: &mut [u8]) -> bool {
        self.ram.read_slice(buf, GuestAddress(physical)).is_ok()
    }

    fn write_physical(&mut self, physical: u64, data: &[u8]) -> bool {
        self.ram.write_slice(data, GuestAddress(physical)).is_ok()
    }
}

impl Vcpu {
    /// Completes the instruction KVM's emulator failed on (`given`: its bytes, when KVM
    /// reported them), and returns its name for the profile.
    pub fn complete_instruction(
        &self,
        given: Option<InstructionBytes>,
        ram: &GuestMemoryMmap,
    ) -> Result<&'static str, CompleteError> {
        let fd = &self.fd;
        let mut regs = fd.get_regs().map_err(ioctl_error("KVM_GET_REGS"))?;
        let sregs = fd.get_sregs().map_err(ioctl_error("KVM_GET_SREGS"))?;
        let mut memory = VcpuMemory { fd, ram };
        let bytes = match given {
            Some(given) => given,
            None => fetch_instruction(&mut memory, &regs, &sregs),
        };
        let refused = |reason| CompleteError::Refused {
            rip: regs.rip,
            bytes: bytes.to_string(),
            reason,
        };
        let mode = if sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0 {
            Mode::Long64
        } else {
            Mode::Other
        };
        let instruction = insn::decode(bytes.as_slice(), mode).map_err(refused)?;
        let kvm_fpu = if instruction.opcode.uses_fpu() {
            Some(fd.get_fpu().map_err(ioctl_error("KVM_GET_FPU"))?)
        } else {
            None
        };
        let mut fpu = kvm_fpu.as_ref().map(fpu_from_kvm).unwrap_or_default();
        let before = fpu.clone();
        let mut registers = registers_from_kvm(&regs, &sregs);
        let event =
            insn::complete(&instruction, &mut registers, &mut fpu, &mut memory).map_err(refused)?;
        regs.rip = registers.rip;
        regs.rflags = registers.rflags;
        fd.set_regs(&regs).map_err(ioctl_error("KVM_SET_REGS"))?;
        if let Some(mut kvm_fpu) = kvm_fpu.filter(|_| fpu != before) {
            fpu_to_kvm(&fpu, &mut kvm_fpu);
            fd.set_fpu(&kvm_fpu).map_err(ioctl_error("KVM_SET_FPU"))?;
        }
        deliver(fd, event)?;
        Ok(instruction.opcode.name())
    }
}

/// The instruction's bytes at CS:RIP, read page by page (it may cross into a second page).
fn fetch_instruction(
    memory: &mut VcpuMemory<'_>,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
) -> InstructionBytes {
    let mut bytes = [0u8; insn::MAX_LENGTH];
    let address = sregs.cs.base.wrapping_add(regs.rip);
    let len = insn::read_virtual_prefix(memory, address, &mut bytes);
    InstructionBytes::new(&bytes[..len])
}

/// Delivers the instruction's event as the CPU would: RIP is already where the CPU
/// leaves it (past a trap or INT n, at a fault).
fn deliver(fd: &VcpuFd, event: Event) -> Result<(), KvmError> {
    if event == Event::None {
        return Ok(());
    }
    let mut events = fd
        .get_vcpu_events()
        .map_err(ioctl_error("KVM_GET_VCPU_EVENTS"))?;
    match event {
        Event::None => {}
        Event::Exception { vector, error_code } => {
            events.exception.injected = 1;
            events.exception.nr = vector;
            events.exception.has_error_code = u8::from(error_code.is_some());
            events.exception.error_code = error_code.unwrap_or(0);
        }
        Event::SoftwareInterrupt { vector } => {
            events.interrupt.injected = 1;
            events.interrupt.nr = vector;
            events.interrupt.soft = 1;
        }
    }
    fd.set_vcpu_events(&events)
        .map_err(ioctl_error("KVM_SET_VCPU_EVENTS"))
}

fn registers_from_kvm(regs: &kvm_regs, sregs: &kvm_sregs) -> Registers {
    Registers {
        gprs: [
            regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi,
            regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
        ],
        rip: regs.rip,
        rflags: regs.rflags,
        fs_base: sregs.fs.base,
        gs_base: sregs.gs.base,
    }
}

fn fpu_from_kvm(fpu: &kvm_fpu) -> FpuState {
    FpuState {
        fcw: fpu.fcw,
        fsw: fpu.fsw,
        ftw: fpu.ftwx,
        fop: fpu.last_opcode,
        fip: fpu.last_ip,
        fdp: fpu.last_dp,
        mxcsr: fpu.mxcsr,
        st: fpu.fpr,
        xmm: fpu.xmm,
    }
}

fn fpu_to_kvm(fpu: &FpuState, kvm: &mut kvm_fpu) {
    kvm.fcw = fpu.fcw;
    kvm.fsw = fpu.fsw;
    kvm.ftwx = fpu.ftw;
    kvm.last_opcode = fpu.fop;
    kvm.last_ip = fpu.fip;
    kvm.last_dp = fpu.fdp;
    kvm.mxcsr = fpu.mxcsr;
    kvm.fpr = fpu.st;
    kvm.xmm = fpu.xmm;
}
