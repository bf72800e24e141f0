//! The VM: memory slots, the in-kernel irqchip, coalesced zones, vCPU creation.

use kvm_bindings::{kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, IoEventAddress, NoDatamatch, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ioctl_error, Hypervisor, IrqFd, KvmError, Vcpu};
use crate::bus::{AddressSpace, PostedZone};

/// Where KVM may put the TSS and identity map that Intel VMX needs (top of 4 GiB,
/// below the BIOS area, outside guest RAM).
const TSS_ADDRESS: usize = 0xfffb_d000;
const IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// How to set up each vCPU.
#[derive(Debug, Clone, Copy)]
pub struct VcpuOptions {
    /// Advertise KVM_FEATURE_PV_EOI (seed 002) in CPUID leaf 0x40000001.
    pub pv_eoi: bool,
}

/// CPUID leaf with KVM's paravirtual features.
const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// KVM_FEATURE_PV_EOI: the guest may skip the EOI write when its flag says so.
const KVM_FEATURE_PV_EOI: u32 = 1 << 6;

/// A KVM VM.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
    supported_cpuid: CpuId,
    run_size: usize,
    coalesced_ring_page: Option<u32>,
    coalesced_pio: bool,
}

impl Vm {
    /// Creates a VM with `memory` as its RAM and the in-kernel irqchip.
    pub fn new(hypervisor: &Hypervisor, memory: &GuestMemoryMmap) -> Result<Self, KvmError> {
        let kvm = &hypervisor.kvm;
        let fd = kvm.create_vm().map_err(ioctl_error("KVM_CREATE_VM"))?;
        fd.set_tss_address(TSS_ADDRESS)
            .map_err(ioctl_error("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(IDENTITY_MAP_ADDRESS)
            .map_err(ioctl_error("KVM_SET_IDENTITY_MAP_ADDR"))?;
        fd.create_irq_chip()
            .map_err(ioctl_error("KVM_CREATE_IRQCHIP"))?;
        for (slot, region) in memory.iter().enumerate() {
            let host = memory
                .get_host_address(region.start_addr())
                .map_err(|_| KvmError::MissingCapability("host address of guest RAM"))?;
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region describes a mapping owned by `memory`, which the machine
            // keeps alive for as long as this VM exists; guest writes to it are expected
            // and vm-memory only ever accesses it volatilely.
            unsafe { fd.set_user_memory_region(region) }
                .map_err(ioctl_error("KVM_SET_USER_MEMORY_REGION"))?;
        }
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl_error("KVM_GET_SUPPORTED_CPUID"))?;
        let run_size = kvm
            .get_vcpu_mmap_size()
            .map_err(ioctl_error("KVM_GET_VCPU_MMAP_SIZE"))?;
        let coalesced_ring_page = u32::try_from(fd.check_extension_int(Cap::CoalescedMmio))
            .ok()
            .filter(|page| *page > 0);
        let coalesced_pio = coalesced_ring_page.is_some() && fd.check_extension(Cap::CoalescedPio);
        Ok(Self {
            fd,
            supported_cpuid,
            run_size,
            coalesced_ring_page,
            coalesced_pio,
        })
    }

    /// True if KVM can post writes in `space` to the coalesced ring.
    pub fn supports_posted_writes(&self, space: AddressSpace) -> bool {
        match space {
            AddressSpace::Pio => self.coalesced_pio,
            AddressSpace::Mmio => self.coalesced_ring_page.is_some(),
        }
    }

    /// Asks KVM to post writes to `zone` to the coalesced ring instead of exiting.
    pub fn register_posted_zone(&self, zone: &PostedZone) -> Result<(), KvmError> {
        let addr = match zone.space {
            AddressSpace::Pio => IoEventAddress::Pio(zone.addr),
            AddressSpace::Mmio => IoEventAddress::Mmio(zone.addr),
        };
        self.fd
            .register_coalesced_mmio(addr, zone.size)
            .map_err(ioctl_error("KVM_REGISTER_COALESCED_MMIO"))
    }

    /// An interrupt line to `gsi` of the in-kernel irqchip (IOAPIC pin and, below 16,
    /// PIC line).
    pub fn irq_line(&self, gsi: u32) -> Result<IrqFd, KvmError> {
        IrqFd::register(&self.fd, gsi)
    }

    /// A doorbell: an eventfd KVM signals, without leaving the kernel, when the guest
    /// writes `addr`. `datamatch: None` registers a length-0 ioeventfd, which for MMIO
    /// takes KVM's fast-MMIO path (seed 003: no instruction decoding, length and data not
    /// matched); `Some(value)` matches a 4-byte write of `value`.
    pub fn doorbell(
        &self,
        space: AddressSpace,
        addr: u64,
        datamatch: Option<u32>,
    ) -> Result<EventFd, KvmError> {
        let event = EventFd::new(EFD_NONBLOCK).map_err(KvmError::EventFd)?;
        let addr = match space {
            AddressSpace::Pio => IoEventAddress::Pio(addr),
            AddressSpace::Mmio => IoEventAddress::Mmio(addr),
        };
        match datamatch {
            None => self.fd.register_ioevent(&event, &addr, NoDatamatch),
            Some(value) => self.fd.register_ioevent(&event, &addr, value),
        }
        .map_err(ioctl_error("KVM_IOEVENTFD"))?;
        Ok(event)
    }

    /// Creates vCPU `id`, with the host's supported CPUID (including KVM's signature and
    /// paravirtual feature leaves), its APIC ID, and `options`.
    pub fn create_vcpu(&self, id: u8, options: &VcpuOptions) -> Result<Vcpu, KvmError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(ioctl_error("KVM_CREATE_VCPU"))?;
        let mut cpuid = self.supported_cpuid.clone();
        for entry in cpuid.as_mut_slice() {
            match entry.function {
                1 => entry.ebx = (entry.ebx & 0x00ff_ffff) | (u32::from(id) << 24),
                0xb | 0x1f => entry.edx = u32::from(id),
                KVM_CPUID_FEATURES if !options.pv_eoi => entry.eax &= !KVM_FEATURE_PV_EOI,
                _ => {}
            }
        }
        fd.set_cpuid2(&cpuid)
            .map_err(ioctl_error("KVM_SET_CPUID2"))?;
        Ok(Vcpu::new(fd, id, self.run_size, self.coalesced_ring_page))
    }
}
