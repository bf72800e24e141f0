//! Round trips of the vCPU and VM states through fresh VMs. These need `/dev/kvm`;
//! without it they fail, unless HUSHVM_SKIP_KVM_TESTS=1 asks to skip them.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{Hypervisor, MsrValue, Vcpu, VcpuOptions, VcpuState, Vm};
use crate::loader::entry::{DescriptorTable, EntryMode, EntryState};

fn test_vm() -> Option<(Vm, GuestMemoryMmap)> {
    let hypervisor = match Hypervisor::open() {
        Ok(hypervisor) => hypervisor,
        Err(error) if std::env::var("HUSHVM_SKIP_KVM_TESTS").as_deref() == Ok("1") => {
            eprintln!("SKIPPED: /dev/kvm: {error}");
            return None;
        }
        Err(error) => panic!("this test needs /dev/kvm: {error}"),
    };
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let vm = Vm::new(&hypervisor, &memory).expect("a VM");
    Some((vm, memory))
}

fn vcpu(vm: &Vm) -> Vcpu {
    let cpuid = vm.cpuid(&VcpuOptions::default()).expect("CPUID");
    vm.create_vcpu(0, 1, &cpuid).expect("a vCPU")
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;

/// The state as JSON, with the TSC MSR (which counts on between two reads) left out.
fn comparable(state: &VcpuState) -> (serde_json::Value, u64) {
    let tsc = state
        .msrs
        .iter()
        .find(|msr| msr.index == MSR_IA32_TSC)
        .map_or(0, |msr| msr.value);
    let mut json = serde_json::to_value(state).unwrap();
    let msrs: Vec<MsrValue> = state
        .msrs
        .iter()
        .copied()
        .filter(|msr| msr.index != MSR_IA32_TSC)
        .collect();
    json["msrs"] = serde_json::to_value(msrs).unwrap();
    (json, tsc)
}

/// A vCPU far from its power-on state: long mode, registers, an MSR, XMM and FPU values.
fn busy_vcpu(vm: &Vm) -> Vcpu {
    let vcpu = vcpu(vm);
    vcpu.set_entry_state(&EntryState {
        mode: EntryMode::Long64,
        code_selector: 0x10,
        data_selector: 0x18,
        gdt: Some(DescriptorTable {
            base: 0x500,
            limit: 31,
        }),
        cr3: 0x9000,
        rip: 0x10_0200,
        rsp: 0x8ff0,
        rax: 0x11,
        rbx: 0x6000,
        rsi: 0x7000,
    })
    .unwrap();
    let mut state = vcpu.save_state().unwrap();
    state.regs.r15 = 0x1234_5678_9abc_def0;
    state.fpu.xmm[3] = [0x5a; 16];
    state.debug_regs.db[1] = 0x4000;
    for msr in &mut state.msrs {
        if msr.index == MSR_IA32_SYSENTER_EIP {
            msr.value = 0xffff_8000_0000_1000;
        }
    }
    vcpu.restore_state(&state).unwrap();
    vcpu
}

#[test]
fn a_vcpu_state_restored_into_a_fresh_vcpu_saves_the_same() {
    let Some((vm, _memory)) = test_vm() else {
        return;
    };
    let saved = busy_vcpu(&vm).save_state().unwrap();
    assert!(saved.msrs.len() > 10, "the MSR list: {:?}", saved.msrs);
    assert!(saved.msrs.contains(&MsrValue {
        index: MSR_IA32_SYSENTER_EIP,
        value: 0xffff_8000_0000_1000
    }));
    // Through the file format's serde, into another VM's fresh vCPU.
    let text = serde_json::to_string(&saved).unwrap();
    let loaded: VcpuState = serde_json::from_str(&text).unwrap();
    let Some((fresh_vm, _fresh_memory)) = test_vm() else {
        return;
    };
    let fresh = vcpu(&fresh_vm);
    let (before, _) = comparable(&fresh.save_state().unwrap());
    fresh.restore_state(&loaded).unwrap();
    let again = fresh.save_state().unwrap();
    let (saved_json, saved_tsc) = comparable(&saved);
    let (again_json, again_tsc) = comparable(&again);
    assert_ne!(
        before, saved_json,
        "the test state differs from a fresh vCPU's"
    );
    assert_eq!(saved_json, again_json);
    assert_eq!(again.regs.r15, 0x1234_5678_9abc_def0);
    assert_eq!(again.fpu.xmm[3], [0x5a; 16]);
    // The guest's TSC goes on from the saved value, not from the fresh vCPU's.
    assert!(
        again_tsc >= saved_tsc,
        "TSC {again_tsc:#x} < saved {saved_tsc:#x}"
    );
}

#[test]
fn a_vm_state_restored_into_a_fresh_vm_saves_the_same() {
    let Some((vm, _memory)) = test_vm() else {
        return;
    };
    let mut saved = vm.save_state().unwrap();
    // The IOAPIC's redirection entry 4 unmasked with vector 0x24, as a guest sets COM1's.
    // SAFETY: chip_id says the union holds the IOAPIC's state.
    let ioapic = unsafe { &mut saved.ioapic.chip.ioapic };
    ioapic.redirtbl[4].bits = 0x24;
    vm.restore_state(&saved).unwrap();
    let saved = vm.save_state().unwrap();
    let text = serde_json::to_string(&saved).unwrap();
    let Some((fresh, _fresh_memory)) = test_vm() else {
        return;
    };
    fresh
        .restore_state(&serde_json::from_str(&text).unwrap())
        .unwrap();
    let again = fresh.save_state().unwrap();
    for (name, a, b) in [
        ("PIC master", &saved.pic_master, &again.pic_master),
        ("PIC slave", &saved.pic_slave, &again.pic_slave),
        ("IOAPIC", &saved.ioapic, &again.ioapic),
    ] {
        assert_eq!(
            serde_json::to_value(a).unwrap(),
            serde_json::to_value(b).unwrap(),
            "{name}"
        );
    }
    // SAFETY: as above.
    assert_eq!(unsafe { again.ioapic.chip.ioapic.redirtbl[4].bits }, 0x24);
    assert!(
        again.clock.clock >= saved.clock.clock,
        "the KVM clock went back"
    );
}

#[test]
fn an_irqchip_state_saved_as_another_chip_is_refused_before_anything_is_written() {
    let Some((vm, _memory)) = test_vm() else {
        return;
    };
    let mut saved = vm.save_state().unwrap();
    std::mem::swap(&mut saved.pic_slave, &mut saved.ioapic);
    let error = vm.restore_state(&saved).unwrap_err().to_string();
    assert!(error.contains("expected chip 1"), "{error}");
}
