//! These need `/dev/kvm` (a VM and a vCPU, never run), hence their `kvm_` names; they go
//! through [`crate::kvm::kvm_available`], so without KVM they fail unless
//! HUSHVM_SKIP_KVM_TESTS=1 asks to skip them, as the integration tests do.

use kvm_bindings::Msrs;
use kvm_ioctls::{Kvm, VmFd};

use super::*;
use crate::loader::entry::DescriptorTable;

/// A VM with the in-kernel irqchip (the LAPIC needs it) and its vCPU 0.
fn vcpu() -> Option<(VmFd, VcpuFd)> {
    if !crate::kvm::kvm_available() {
        return None;
    }
    let kvm = Kvm::new().expect("/dev/kvm");
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
fn kvm_a_long_mode_entry_state_reads_back() {
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
fn kvm_a_protected_mode_entry_state_has_paging_off() {
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
fn kvm_boot_msrs_read_back() {
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
fn kvm_fpu_defaults_read_back() {
    let Some((_vm, fd)) = vcpu() else { return };
    set_fpu_defaults(&fd).unwrap();
    assert_eq!(fd.get_fpu().unwrap().fcw, 0x37f);
    // MXCSR read back through the XSAVE area (bytes 24..28): KVM_GET_FPU on this
    // development host's (nested) KVM reports 0 there although the guest gets 0x1f80.
    assert_eq!(fd.get_xsave().unwrap().region[6], 0x1f80);
}

#[test]
fn kvm_lint0_is_extint_and_lint1_is_nmi() {
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

/// Boots the kernel HUSHVM_LINUX_IMAGE names (a bzImage or a PVH vmlinux) on a bare vCPU
/// until it prints its memory map and initrd on COM1, then checks both are where hushvm
/// put them (the map is the layout's, the initrd at the top of RAM): the
/// whole entry path (loader, page tables, GDT, boot_params or start info, this module)
/// against a real kernel. Run with `cargo test --lib kvm::boot -- --ignored`. On the
/// development host (emulated guest code) Debian's 6.1 cloud bzImage takes ~100 s, its
/// vmlinux through PVH ~12 s.
#[test]
#[ignore = "boots the kernel named by HUSHVM_LINUX_IMAGE for up to three minutes"]
fn kvm_a_real_kernel_prints_the_layouts_memory_map() {
    use crate::layout::{MemoryLayout, KVM_TSS, MIB};
    use crate::loader::{detect, load_bzimage, load_pvh, KernelFormat, LinuxBoot};
    use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
    use kvm_ioctls::VcpuExit;
    use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    if !crate::kvm::kvm_available() {
        return;
    }
    let path = std::env::var("HUSHVM_LINUX_IMAGE").expect("HUSHVM_LINUX_IMAGE");
    let image = std::fs::read(&path).unwrap();
    let layout = MemoryLayout::new(256 * MIB).unwrap();
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 256 * MIB as usize)]).unwrap();
    let kvm = Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    vm.set_tss_address(KVM_TSS as usize).unwrap();
    vm.create_irq_chip().unwrap();
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: 256 * MIB,
        userspace_addr: memory.get_host_address(GuestAddress(0)).unwrap() as u64,
    };
    // SAFETY: the region is `memory`'s mapping, which lives until the end of the test,
    // after the VM is last run.
    unsafe { vm.set_user_memory_region(region) }.unwrap();
    let mut fd = vm.create_vcpu(0).unwrap();
    let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    for entry in cpuid.as_mut_slice().iter_mut().filter(|e| e.function == 1) {
        entry.ecx &= !(1 << 13); // cx16: this host's emulator lacks cmpxchg16b
    }
    fd.set_cpuid2(&cpuid).unwrap();

    // 64 KiB of zeros: the kernel reserves it early and prints where it is.
    let initrd = vec![0u8; 0x1_0000];
    let boot = LinuxBoot {
        image: &image,
        cmdline: "console=ttyS0 earlyprintk=serial,ttyS0 noxsave",
        initrd: Some(&initrd),
        rsdp: None,
    };
    let format = detect(&image).unwrap();
    let entry = match format {
        KernelFormat::BzImage => load_bzimage(&memory, &layout, &boot).unwrap(),
        KernelFormat::PvhElf => load_pvh(&memory, &layout, &boot).unwrap(),
        KernelFormat::Multiboot => panic!("{path} is a Multiboot kernel"),
    };
    set_entry_state(&fd, &entry).unwrap();
    set_boot_msrs(&fd).unwrap();
    set_fpu_defaults(&fd).unwrap();
    set_lint(&fd).unwrap();

    // Linux's PVH entry adds the ISA hole (0xa0000-0xfffff) to the map as reserved
    // itself, merging the reserved ranges: only the usable ones print as given.
    let expected: Vec<String> = layout
        .memory_map_lines()
        .into_iter()
        .filter(|line| format == KernelFormat::BzImage || line.ends_with("usable"))
        .map(|line| format!("BIOS-e820: {line}"))
        .chain(["RAMDISK: [mem 0x0fff0000-0x0fffffff]".to_string()])
        .collect();
    let mut console = Vec::new();
    let started = std::time::Instant::now();
    let printed_all = |console: &[u8]| {
        let text = String::from_utf8_lossy(console);
        expected.iter().all(|line| text.contains(line.as_str()))
    };
    while started.elapsed().as_secs() < 180 && !printed_all(&console) {
        match fd.run() {
            Ok(VcpuExit::IoOut(0x3f8, data)) => console.extend_from_slice(data),
            // Line status: transmitter empty, so the kernel's polling writes go on.
            Ok(VcpuExit::IoIn(0x3fd, data)) => data.fill(0x60),
            Ok(VcpuExit::IoIn(_, data) | VcpuExit::MmioRead(_, data)) => data.fill(0),
            Ok(VcpuExit::IoOut(..) | VcpuExit::MmioWrite(..)) => {}
            Ok(exit) => panic!("{exit:?}; console:\n{}", String::from_utf8_lossy(&console)),
            Err(error) => panic!("{error}; console:\n{}", String::from_utf8_lossy(&console)),
        }
    }
    let text = String::from_utf8_lossy(&console);
    eprintln!("{text}");
    assert!(printed_all(&console), "after {:?}", started.elapsed());
}
