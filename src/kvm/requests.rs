//! The request numbers of the KVM ioctls a thread can issue once the guest runs, for the
//! seccomp filters (`crate::seccomp`): kvm-ioctls keeps its own numbers private, and this
//! module is the one that knows which calls hushvm makes where.

use kvm_bindings::{
    kvm_coalesced_mmio_zone, kvm_debugregs, kvm_fpu, kvm_ioeventfd, kvm_irq_routing,
    kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_regs, kvm_sregs, kvm_translation, kvm_vcpu_events,
    kvm_xcrs, kvm_xsave, KVMIO,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_fpu);
ioctl_iowr_nr!(KVM_TRANSLATE, KVMIO, 0x85, kvm_translation);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
ioctl_iow_nr!(
    KVM_REGISTER_COALESCED_MMIO,
    KVMIO,
    0x67,
    kvm_coalesced_mmio_zone
);
ioctl_iow_nr!(
    KVM_UNREGISTER_COALESCED_MMIO,
    KVMIO,
    0x68,
    kvm_coalesced_mmio_zone
);

/// An ioctl by name and request number (the kernel reads the number as 32 bits).
pub type Request = (&'static str, u32);

/// What a vCPU thread asks of KVM while the guest runs, and from where:
/// - `KVM_RUN`: the run loop ([`super::Vcpu::run`]);
/// - `KVM_GET_REGS`, `KVM_GET_SREGS`: the registers of a vCPU that faulted
///   ([`super::Vcpu::dump_registers`]);
/// - `KVM_IOEVENTFD`: a guest moving a virtio-pci BAR re-registers its doorbells
///   ([`super::IoEvents`], from a configuration write the vCPU dispatches);
/// - `KVM_SET_GSI_ROUTING`: a guest unmasking or reprogramming an MSI-X vector
///   ([`super::MsiRoutes::set`], from an MSI-X table or configuration write);
/// - `KVM_REGISTER_COALESCED_MMIO`: the first exited write to a bounded posted zone
///   (COM1's THR) registers it ([`super::KvmZones`]);
/// - `KVM_SET_REGS`, `KVM_GET_FPU`, `KVM_SET_FPU`, `KVM_TRANSLATE`,
///   `KVM_GET_VCPU_EVENTS`, `KVM_SET_VCPU_EVENTS`: completing an instruction KVM's
///   emulator failed on ([`super::Vcpu::complete_instruction`]);
/// - the other `KVM_GET_*` calls of a vCPU's saved state (with `KVM_GET_REGS`/`SREGS`): a
///   parked vCPU saves its own for a snapshot ([`super::Vcpu::save_state`]).
pub fn vcpu_thread() -> [Request; 18] {
    [
        ("KVM_RUN", KVM_RUN() as u32),
        ("KVM_GET_REGS", KVM_GET_REGS() as u32),
        ("KVM_GET_SREGS", KVM_GET_SREGS() as u32),
        ("KVM_IOEVENTFD", KVM_IOEVENTFD() as u32),
        ("KVM_SET_GSI_ROUTING", KVM_SET_GSI_ROUTING() as u32),
        (
            "KVM_REGISTER_COALESCED_MMIO",
            KVM_REGISTER_COALESCED_MMIO() as u32,
        ),
        ("KVM_SET_REGS", KVM_SET_REGS() as u32),
        ("KVM_GET_FPU", KVM_GET_FPU() as u32),
        ("KVM_SET_FPU", KVM_SET_FPU() as u32),
        ("KVM_TRANSLATE", KVM_TRANSLATE() as u32),
        ("KVM_GET_VCPU_EVENTS", KVM_GET_VCPU_EVENTS() as u32),
        ("KVM_SET_VCPU_EVENTS", KVM_SET_VCPU_EVENTS() as u32),
        ("KVM_GET_MP_STATE", KVM_GET_MP_STATE() as u32),
        ("KVM_GET_XSAVE", KVM_GET_XSAVE() as u32),
        ("KVM_GET_XCRS", KVM_GET_XCRS() as u32),
        ("KVM_GET_DEBUGREGS", KVM_GET_DEBUGREGS() as u32),
        ("KVM_GET_LAPIC", KVM_GET_LAPIC() as u32),
        ("KVM_GET_MSRS", KVM_GET_MSRS() as u32),
    ]
}

/// What the event-loop thread asks of KVM: only `KVM_UNREGISTER_COALESCED_MMIO`, when the
/// bounded drain finds a bounded zone idle ([`super::KvmZones`]). Its other work is
/// eventfd and timerfd reads and writes.
pub fn event_loop_thread() -> [Request; 1] {
    [(
        "KVM_UNREGISTER_COALESCED_MMIO",
        KVM_UNREGISTER_COALESCED_MMIO() as u32,
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_numbers_are_the_kernels() {
        // From <linux/kvm.h> as the kernel headers spell them out (x86_64 sizes).
        assert_eq!(
            vcpu_thread(),
            [
                ("KVM_RUN", 0xae80),
                ("KVM_GET_REGS", 0x8090_ae81),
                ("KVM_GET_SREGS", 0x8138_ae83),
                ("KVM_IOEVENTFD", 0x4040_ae79),
                ("KVM_SET_GSI_ROUTING", 0x4008_ae6a),
                ("KVM_REGISTER_COALESCED_MMIO", 0x4010_ae67),
                ("KVM_SET_REGS", 0x4090_ae82),
                ("KVM_GET_FPU", 0x81a0_ae8c),
                ("KVM_SET_FPU", 0x41a0_ae8d),
                ("KVM_TRANSLATE", 0xc018_ae85),
                ("KVM_GET_VCPU_EVENTS", 0x8040_ae9f),
                ("KVM_SET_VCPU_EVENTS", 0x4040_aea0),
                ("KVM_GET_MP_STATE", 0x8004_ae98),
                ("KVM_GET_XSAVE", 0x9000_aea4),
                ("KVM_GET_XCRS", 0x8188_aea6),
                ("KVM_GET_DEBUGREGS", 0x8080_aea1),
                ("KVM_GET_LAPIC", 0x8400_ae8e),
                ("KVM_GET_MSRS", 0xc008_ae88),
            ]
        );
        assert_eq!(
            event_loop_thread(),
            [("KVM_UNREGISTER_COALESCED_MMIO", 0x4010_ae68)]
        );
    }
}
