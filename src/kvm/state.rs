//! A vCPU's and the VM's KVM state, saved and restored for snapshots, as plain serde
//! values (kvm-bindings' own serde support; `kvm_fpu` has none, so [`FpuState`] copies it).
//!
//! The order of the calls is KVM's, as Firecracker's `vstate` documents it: saving reads
//! the MP state first (it lets the LAPIC accept pending INIT/SIPI events) and the vCPU
//! events last; restoring writes the MP state, registers, FPU/XSAVE, XCRs, debug
//! registers, then the LAPIC before the MSRs (the TSC-deadline MSR needs the LAPIC's
//! timer mode), and the events last.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_CLOCK_TSC_STABLE, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::{VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use super::{ioctl_error, KvmError};

/// IA32_TSC and IA32_TSC_DEADLINE: the deadline is written after the TSC it compares
/// with, or KVM arms the LAPIC timer against the old TSC.
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// The x87/SSE state `KVM_GET_FPU` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuState {
    pub fpr: [[u8; 16]; 8],
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: [[u8; 16]; 16],
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(fpu: &kvm_fpu) -> Self {
        Self {
            fpr: fpu.fpr,
            fcw: fpu.fcw,
            fsw: fpu.fsw,
            ftwx: fpu.ftwx,
            last_opcode: fpu.last_opcode,
            last_ip: fpu.last_ip,
            last_dp: fpu.last_dp,
            xmm: fpu.xmm,
            mxcsr: fpu.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(fpu: &FpuState) -> Self {
        Self {
            fpr: fpu.fpr,
            fcw: fpu.fcw,
            fsw: fpu.fsw,
            ftwx: fpu.ftwx,
            last_opcode: fpu.last_opcode,
            last_ip: fpu.last_ip,
            last_dp: fpu.last_dp,
            xmm: fpu.xmm,
            mxcsr: fpu.mxcsr,
            ..Default::default()
        }
    }
}

/// One MSR's index and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrValue {
    pub index: u32,
    pub value: u64,
}

/// Everything KVM holds for one vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: FpuState,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// The MSRs `KVM_GET_MSR_INDEX_LIST` names that this vCPU could read.
    pub msrs: Vec<MsrValue>,
    pub events: kvm_vcpu_events,
}

/// The VM-wide state: the in-kernel PICs and IOAPIC, and the KVM clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub clock: kvm_clock_data,
}

/// The MSRs to save, in the order they are restored: the TSC first, its deadline last.
pub(super) fn msrs_to_save(listed: &[u32]) -> Vec<u32> {
    let mut indices: Vec<u32> = listed.to_vec();
    indices.sort_by_key(|index| match *index {
        MSR_IA32_TSC => 0,
        MSR_IA32_TSC_DEADLINE => 2,
        _ => 1,
    });
    indices
}

/// Reads the vCPU's state. The vCPU must not be running (a paused machine's are not).
pub(super) fn save_vcpu(fd: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, KvmError> {
    let mp_state = fd.get_mp_state().map_err(ioctl_error("KVM_GET_MP_STATE"))?;
    let regs = fd.get_regs().map_err(ioctl_error("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(ioctl_error("KVM_GET_SREGS"))?;
    let fpu = FpuState::from(&fd.get_fpu().map_err(ioctl_error("KVM_GET_FPU"))?);
    let xsave = fd.get_xsave().map_err(ioctl_error("KVM_GET_XSAVE"))?;
    let xcrs = fd.get_xcrs().map_err(ioctl_error("KVM_GET_XCRS"))?;
    let debug_regs = fd
        .get_debug_regs()
        .map_err(ioctl_error("KVM_GET_DEBUGREGS"))?;
    let lapic = fd.get_lapic().map_err(ioctl_error("KVM_GET_LAPIC"))?;
    let msrs = read_msrs(fd, msr_indices)?;
    let events = fd
        .get_vcpu_events()
        .map_err(ioctl_error("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        mp_state,
        regs,
        sregs,
        fpu,
        xsave,
        xcrs,
        debug_regs,
        lapic,
        msrs,
        events,
    })
}

/// Reads `indices` in chunks KVM takes. `KVM_GET_MSRS` stops at the first MSR it cannot
/// read; that one is left out (KVM lists MSRs a CPU model may lack) and reading goes on
/// after it.
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<MsrValue>, KvmError> {
    let mut values = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let mut msrs = msr_array(chunk.iter().map(|&index| MsrValue { index, value: 0 }))?;
        let read = fd
            .get_msrs(&mut msrs)
            .map_err(ioctl_error("KVM_GET_MSRS"))?;
        values.extend(msrs.as_slice()[..read].iter().map(|entry| MsrValue {
            index: entry.index,
            value: entry.data,
        }));
        // Skip the unreadable MSR at `read`, if the chunk stopped early.
        let consumed = if read < chunk.len() { read + 1 } else { read };
        rest = &rest[consumed..];
    }
    Ok(values)
}

fn msr_array(values: impl Iterator<Item = MsrValue>) -> Result<Msrs, KvmError> {
    let entries: Vec<kvm_msr_entry> = values
        .map(|msr| kvm_msr_entry {
            index: msr.index,
            data: msr.value,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|_| KvmError::MissingCapability("room for the MSRs"))
}

/// Puts `state` into a vCPU created as the saved one was (same id and CPUID).
pub(super) fn restore_vcpu(fd: &VcpuFd, state: &VcpuState) -> Result<(), KvmError> {
    fd.set_mp_state(state.mp_state)
        .map_err(ioctl_error("KVM_SET_MP_STATE"))?;
    fd.set_regs(&state.regs)
        .map_err(ioctl_error("KVM_SET_REGS"))?;
    fd.set_sregs(&state.sregs)
        .map_err(ioctl_error("KVM_SET_SREGS"))?;
    fd.set_fpu(&kvm_fpu::from(&state.fpu))
        .map_err(ioctl_error("KVM_SET_FPU"))?;
    // SAFETY: `kvm_xsave` is the fixed 4 KiB area KVM_SET_XSAVE reads, no larger one
    // (KVM_GET_XSAVE filled it; dynamically enabled features such as AMX are not used).
    unsafe { fd.set_xsave(&state.xsave) }.map_err(ioctl_error("KVM_SET_XSAVE"))?;
    fd.set_xcrs(&state.xcrs)
        .map_err(ioctl_error("KVM_SET_XCRS"))?;
    fd.set_debug_regs(&state.debug_regs)
        .map_err(ioctl_error("KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&state.lapic)
        .map_err(ioctl_error("KVM_SET_LAPIC"))?;
    for chunk in state.msrs.chunks(KVM_MAX_MSR_ENTRIES) {
        let msrs = msr_array(chunk.iter().copied())?;
        let written = fd.set_msrs(&msrs).map_err(ioctl_error("KVM_SET_MSRS"))?;
        if written < chunk.len() {
            return Err(KvmError::MsrRefused(chunk[written].index));
        }
    }
    fd.set_vcpu_events(&state.events)
        .map_err(ioctl_error("KVM_SET_VCPU_EVENTS"))
}

fn irqchip(fd: &VmFd, chip_id: u32) -> Result<kvm_irqchip, KvmError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    fd.get_irqchip(&mut chip)
        .map_err(ioctl_error("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

/// Reads the VM's state; its vCPUs must not be running.
pub(super) fn save_vm(fd: &VmFd) -> Result<VmState, KvmError> {
    let mut clock = fd.get_clock().map_err(ioctl_error("KVM_GET_CLOCK"))?;
    // KVM_SET_CLOCK refuses this flag: it describes the host, not the saved clock.
    clock.flags &= !KVM_CLOCK_TSC_STABLE;
    Ok(VmState {
        pic_master: irqchip(fd, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(fd, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(fd, KVM_IRQCHIP_IOAPIC)?,
        clock,
    })
}

/// Puts `state` into a VM built as the saved one was, before its vCPUs are restored.
pub(super) fn restore_vm(fd: &VmFd, state: &VmState) -> Result<(), KvmError> {
    fd.set_clock(&state.clock)
        .map_err(ioctl_error("KVM_SET_CLOCK"))?;
    let chips = [
        (KVM_IRQCHIP_PIC_MASTER, &state.pic_master),
        (KVM_IRQCHIP_PIC_SLAVE, &state.pic_slave),
        (KVM_IRQCHIP_IOAPIC, &state.ioapic),
    ];
    // Checked before any is written, so a bad state changes nothing.
    if let Some((expected, chip)) = chips.iter().find(|(id, chip)| chip.chip_id != *id) {
        return Err(KvmError::IrqchipId {
            expected: *expected,
            found: chip.chip_id,
        });
    }
    for (_, chip) in chips {
        fd.set_irqchip(chip)
            .map_err(ioctl_error("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}
