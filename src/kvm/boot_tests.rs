//! These need `/dev/kvm` (a VM and a vCPU, never run); without it they fail, unless
//! HUSHVM_SKIP_KVM_TESTS=1 asks to skip them, as the integration tests do.

use kvm_bindings::Msrs;
use kvm_ioctls::{Kvm, VmFd};

use super::*;
use crate::loader::entry::DescriptorTable;

/// A VM with the in-kernel irqchip (the LAPIC needs it) and its vCPU 0.
fn vcpu() -> Option<(VmFd, VcpuFd)> {
    let kvm = match Kvm::new() {
        Ok(kvm) => kvm,
        Err(error) if std::env::var("HUSHVM_SKIP_KVM_TESTS").as_deref() == Ok("1") => {
            eprintln!("SKIPPED: /dev/kvm: {error}");
            return None;
        }
        Err(error) => panic!("this test needs /dev/kvm: {error}"),
    };
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    Some((vm, vcpu))
}

fn state(mode: EntryMode) -> EntryState {
    EntryState {
        mode,
        code_selector: 0x10,
        data_selector: 0x18,
        gdt: Some(DescriptorTable {
            base: 0x500,
            limit: 31,
        }),
        cr3: if mode == EntryMode::Long64 { 0x9000 } else { 0 },
        rip: 0x10_0200,
        rsp: 0x8ff0,
        rax: 0x11,
        rbx: 0x6000,
        rsi: 0x7000,
    }
}

#[test]
fn a_long_mode_entry_state_reads_back() {
    let Some((_vm, fd)) = vcpu() else { return };
    set_entry_state(&fd, &state(EntryMode::Long64)).unwrap();
    let sregs = fd.get_sregs().unwrap();
    assert_eq!((sregs.cs.selector, sregs.cs.l, sregs.cs.db), (0x10, 1, 0));
    for data in [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss] {
        assert_eq!(
            (data.selector, data.type_, data.db, data.l),
            (0x18, 3, 1, 0)
        );
    }
    assert_eq!((sregs.gdt.base, sregs.gdt.limit), (0x500, 31));
    assert_eq!(sregs.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
    assert_eq!(sregs.cr4 & CR4_PAE, CR4_PAE);
    assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
    assert_eq!(sregs.cr3, 0x9000);
    let regs = fd.get_regs().unwrap();
    assert_eq!(
        (
            regs.rip,
            regs.rsp,
            regs.rax,
            regs.rbx,
            regs.rsi,
            regs.rflags
        ),
        (0x10_0200, 0x8ff0, 0x11, 0x6000, 0x7000, 2)
    );
    assert_eq!((regs.rcx, regs.rdx, regs.rdi, regs.rbp), (0, 0, 0, 0));
}

#[test]
fn a_protected_mode_entry_state_has_paging_off() {
    let Some((_vm, fd)) = vcpu() else { return };
    set_entry_state(&fd, &state(EntryMode::Long64)).unwrap();
    set_entry_state(&fd, &state(EntryMode::Protected32)).unwrap();
    let sregs = fd.get_sregs().unwrap();
    assert_eq!((sregs.cs.selector, sregs.cs.l, sregs.cs.db), (0x10, 0, 1));
    assert_eq!(sregs.cs.limit, 0xffff_ffff);
    assert_eq!(sregs.cr0 & (CR0_PE | CR0_PG), CR0_PE);
    assert_eq!((sregs.cr4 & CR4_PAE, sregs.efer & EFER_LMA), (0, 0));
    assert_eq!(fd.get_regs().unwrap().rbx, 0x6000);
}

#[test]
fn boot_msrs_read_back() {
    let Some((_vm, fd)) = vcpu() else { return };
    set_boot_msrs(&fd).unwrap();
    let expected = boot_msrs();
    let mut msrs = Msrs::from_entries(&expected).unwrap();
    let read = fd.get_msrs(&mut msrs).unwrap();
    assert!(read >= 3, "at least the SYSENTER MSRs");
    for (got, want) in msrs.as_slice()[..read].iter().zip(&expected) {
        if got.index == MSR_IA32_TSC {
            continue; // it has ticked since
        }
        assert_eq!((got.index, got.data), (want.index, want.data));
    }
}

#[test]
fn fpu_defaults_read_back() {
    let Some((_vm, fd)) = vcpu() else { return };
    set_fpu_defaults(&fd).unwrap();
    assert_eq!(fd.get_fpu().unwrap().fcw, 0x37f);
    // MXCSR read back through the XSAVE area (bytes 24..28): KVM_GET_FPU on this
    // development host's (nested) KVM reports 0 there although the guest gets 0x1f80.
    assert_eq!(fd.get_xsave().unwrap().region[6], 0x1f80);
}

#[test]
fn lint0_is_extint_and_lint1_is_nmi() {
    let Some((_vm, fd)) = vcpu() else { return };
    set_lint(&fd).unwrap();
    let lapic = fd.get_lapic().unwrap();
    let (lint0, lint1) = (
        lapic_reg(&lapic, APIC_LVT_LINT0),
        lapic_reg(&lapic, APIC_LVT_LINT1),
    );
    assert_eq!((lint0 >> 8) & 7, 7, "{lint0:#x}");
    assert_eq!((lint1 >> 8) & 7, 4, "{lint1:#x}");
    assert_eq!((lint0 | lint1) & APIC_LVT_MASKED, 0);
}
