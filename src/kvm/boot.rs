//! The vCPU side of a boot: the registers and modes a loader's [`EntryState`] describes,
//! and the rest of the state Linux VMMs hand a vCPU at boot (MSRs, FPU, the local APIC's
//! LINT pins), the way Firecracker's and Cloud Hypervisor's `arch::x86_64` set them.

// Used by the vCPU set-up that the kvm/ refactor brings; until then only the tests call
// these.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, Msrs};
use kvm_ioctls::VcpuFd;

use super::{ioctl_error, KvmError};
use crate::loader::entry::{EntryMode, EntryState};

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_RESERVED: u64 = 1 << 1;
/// Segment types: execute/read code and read/write data, both accessed.
const CODE_TYPE: u8 = 0xb;
const DATA_TYPE: u8 = 0x3;

/// x87 control word after FNINIT; MXCSR at reset.
const FPU_CONTROL_WORD: u16 = 0x37f;
const MXCSR_DEFAULT: u32 = 0x1f80;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_MISC_ENABLE bit 0: fast string operations (`rep movs` in large chunks).
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled (bit 11), default memory type write-back (6).
const MTRR_ENABLED_WRITE_BACK: u64 = (1 << 11) | 6;

/// The local APIC's LVT LINT0 and LINT1 registers in `kvm_lapic_state.regs`.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_DELIVERY_MODE_MASK: u32 = 0x700;
const APIC_LVT_MASKED: u32 = 1 << 16;
const APIC_MODE_NMI: u32 = 4;
const APIC_MODE_EXTINT: u32 = 7;

/// A flat 4 GiB segment: 64-bit code when `long`, otherwise 32-bit (D/B = 1).
fn flat_segment(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Puts the vCPU in `state`: segments from its selectors, flat and matching the mode,
/// its GDT, paging and long mode for [`EntryMode::Long64`], and its registers (the
/// others zero, interrupts off).
pub(super) fn set_entry_state(fd: &VcpuFd, state: &EntryState) -> Result<(), KvmError> {
    let long = state.mode == EntryMode::Long64;
    let mut sregs = fd.get_sregs().map_err(ioctl_error("KVM_GET_SREGS"))?;
    sregs.cs = flat_segment(state.code_selector, CODE_TYPE, long);
    let data = flat_segment(state.data_selector, DATA_TYPE, false);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    if let Some(gdt) = state.gdt {
        (sregs.gdt.base, sregs.gdt.limit) = (gdt.base, gdt.limit);
    }
    sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_ET) & !CR0_PG;
    (sregs.cr3, sregs.cr4, sregs.efer) = (state.cr3, 0, 0);
    if long {
        sregs.cr0 |= CR0_PG;
        sregs.cr4 |= CR4_PAE;
        sregs.efer |= EFER_LME | EFER_LMA;
    }
    fd.set_sregs(&sregs).map_err(ioctl_error("KVM_SET_SREGS"))?;
    let regs = kvm_regs {
        rip: state.rip,
        rsp: state.rsp,
        rax: state.rax,
        rbx: state.rbx,
        rsi: state.rsi,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    fd.set_regs(&regs).map_err(ioctl_error("KVM_SET_REGS"))
}

/// The MSRs Linux VMMs set at boot: SYSENTER and SYSCALL targets cleared, the TSC at 0,
/// fast strings on, MTRRs on with write-back as the default type (without it a kernel
/// maps all RAM uncached).
fn boot_msrs() -> [kvm_msr_entry; 11] {
    let msr = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    [
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLED_WRITE_BACK),
    ]
}

/// Sets [`boot_msrs`]. `KVM_SET_MSRS` stops at the first MSR the host refuses and returns
/// how many it set; such an MSR is skipped and the rest set, since a kernel boots without
/// any one of them (a nested or minimal host may lack, say, the MTRRs).
pub(super) fn set_boot_msrs(fd: &VcpuFd) -> Result<(), KvmError> {
    let entries = boot_msrs();
    let mut rest = &entries[..];
    while !rest.is_empty() {
        // Cannot fail: far fewer entries than KVM_MAX_MSR_ENTRIES.
        let msrs = Msrs::from_entries(rest).map_err(|_| KvmError::Ioctl {
            what: "KVM_SET_MSRS",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let set = fd.set_msrs(&msrs).map_err(ioctl_error("KVM_SET_MSRS"))?;
        rest = rest.get(set + 1..).unwrap_or_default();
    }
    Ok(())
}

/// The x87 and SSE control words a kernel expects after reset (KVM leaves them zero:
/// every exception unmasked).
pub(super) fn set_fpu_defaults(fd: &VcpuFd) -> Result<(), KvmError> {
    let fpu = kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    };
    fd.set_fpu(&fpu).map_err(ioctl_error("KVM_SET_FPU"))
}

fn lapic_reg(lapic: &kvm_lapic_state, at: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[at + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, at: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[at + i] = byte as std::os::raw::c_char;
    }
}

/// Wires the local APIC's LINT pins as a PC does: LINT0 takes the 8259's interrupts
/// (ExtINT), LINT1 takes NMIs; both unmasked. Needs the in-kernel irqchip.
pub(super) fn set_lint(fd: &VcpuFd) -> Result<(), KvmError> {
    let mut lapic = fd.get_lapic().map_err(ioctl_error("KVM_GET_LAPIC"))?;
    for (at, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        let value = lapic_reg(&lapic, at) & !(APIC_DELIVERY_MODE_MASK | APIC_LVT_MASKED);
        set_lapic_reg(&mut lapic, at, value | (mode << 8));
    }
    fd.set_lapic(&lapic).map_err(ioctl_error("KVM_SET_LAPIC"))
}

#[cfg(test)]
#[path = "boot_tests.rs"]
mod tests;
