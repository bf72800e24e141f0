//! KVM's `immediate_exit` semantics on this host, checked: a set flag keeps the guest
//! from running, and a pending IN is completed before KVM honours the flag. These need
//! `/dev/kvm`; without it they fail, unless HUSHVM_SKIP_KVM_TESTS=1 asks to skip them.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit, VmFd};

use super::*;

/// Real-mode code at 0x1000: `in al, 0x71; out 0x80, al; hlt`.
const CODE: [u8; 5] = [0xe4, 0x71, 0xe6, 0x80, 0xf4];
const CODE_AT: u64 = 0x1000;
const MEMORY: usize = 0x2000;

/// Guest memory, unmapped on drop.
struct Memory(NonNull<u8>);

/// The vCPU, its VM and the VM's memory, dropped in that order (fields drop in
/// declaration order): the memory outlives the VM.
struct Guest {
    fd: VcpuFd,
    _vm: VmFd,
    _memory: Memory,
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: mapped in `guest` with this size, unmapped once.
        unsafe { libc::munmap(self.0.as_ptr().cast(), MEMORY) };
    }
}

/// A VM (no irqchip) running CODE on vCPU 0 in real mode.
fn guest() -> Option<Guest> {
    let kvm = match Kvm::new() {
        Ok(kvm) => kvm,
        Err(error) if std::env::var("HUSHVM_SKIP_KVM_TESTS").as_deref() == Ok("1") => {
            eprintln!("SKIPPED: /dev/kvm: {error}");
            return None;
        }
        Err(error) => panic!("this test needs /dev/kvm: {error}"),
    };
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    // SAFETY: a fresh private anonymous mapping; checked below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEMORY,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED);
    let memory = Memory(NonNull::new(addr.cast()).expect("mapped"));
    // SAFETY: CODE fits in the fresh mapping at CODE_AT.
    unsafe {
        std::ptr::copy_nonoverlapping(
            CODE.as_ptr(),
            memory.0.as_ptr().add(CODE_AT as usize),
            CODE.len(),
        )
    };
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: MEMORY as u64,
        userspace_addr: memory.0.as_ptr() as u64,
        flags: 0,
    };
    // SAFETY: the mapping outlives the VM (`Guest`'s field order) and is used for
    // nothing else.
    unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = CODE_AT;
    regs.rflags = 2;
    regs.rax = 0;
    vcpu.set_regs(&regs).unwrap();
    Some(Guest {
        fd: vcpu,
        _vm: vm,
        _memory: memory,
    })
}

fn interrupted(result: Result<VcpuExit<'_>, kvm_ioctls::Error>) -> bool {
    matches!(result, Err(error) if error.errno() == libc::EINTR)
}

#[test]
fn a_set_flag_returns_before_the_guest_runs_and_a_cleared_one_runs_it() {
    let Some(mut guest) = guest() else {
        return;
    };
    let fd = &mut guest.fd;
    let flag = RunFlag::map(fd).expect("kvm_run mapped again");
    flag.set();
    assert!(flag.is_set());
    assert!(interrupted(fd.run()));
    assert_eq!(fd.get_regs().unwrap().rip, CODE_AT, "no instruction ran");
    flag.clear();
    assert!(matches!(fd.run(), Ok(VcpuExit::IoIn(0x71, _))));
}

#[test]
fn kvm_completes_a_pending_in_before_it_honours_the_flag() {
    let Some(mut guest) = guest() else {
        return;
    };
    let fd = &mut guest.fd;
    let flag = RunFlag::map(fd).expect("kvm_run mapped again");
    match fd.run() {
        Ok(VcpuExit::IoIn(0x71, data)) => data[0] = 0x42,
        other => panic!("expected the IN from 0x71, got {other:?}"),
    }
    flag.set();
    assert!(interrupted(fd.run()));
    let regs = fd.get_regs().unwrap();
    assert_eq!(regs.rip, CODE_AT + 2, "the IN is complete, the OUT not run");
    assert_eq!(regs.rax & 0xff, 0x42, "AL holds the IN's data");
    flag.clear();
    match fd.run() {
        Ok(VcpuExit::IoOut(0x80, data)) => assert_eq!(data, [0x42]),
        other => panic!("expected the OUT to 0x80, got {other:?}"),
    }
}
