//! The VM: memory slots, the in-kernel irqchip, coalesced zones, vCPU creation.

use kvm_bindings::{kvm_cpuid_entry2, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES};
use std::sync::Arc;

use kvm_ioctls::{Cap, IoEventAddress, NoDatamatch, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ioctl_error, state, Hypervisor, IrqFd, KvmError, MsiRoutes, Vcpu, VmState};
use crate::bus::{AddressSpace, PostedZone};
use crate::cpuid::{self, CpuModel, CpuidEntry, CpuidError};
use crate::layout::{KVM_IDENTITY_MAP, KVM_TSS};
use crate::posted::ZoneSwitch;

/// How to set up each vCPU.
#[derive(Debug, Clone)]
pub struct VcpuOptions {
    /// Advertise KVM_FEATURE_PV_EOI (seed 002) in CPUID leaf 0x40000001.
    pub pv_eoi: bool,
    /// The CPUID features shown or hidden (`--cpu`).
    pub model: CpuModel,
}

impl Default for VcpuOptions {
    fn default() -> Self {
        Self {
            pv_eoi: true,
            model: CpuModel::host(),
        }
    }
}

fn to_entry(kvm: &kvm_cpuid_entry2) -> CpuidEntry {
    CpuidEntry {
        function: kvm.function,
        index: kvm.index,
        flags: kvm.flags,
        eax: kvm.eax,
        ebx: kvm.ebx,
        ecx: kvm.ecx,
        edx: kvm.edx,
    }
}

fn to_kvm(entry: &CpuidEntry) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function: entry.function,
        index: entry.index,
        flags: entry.flags,
        eax: entry.eax,
        ebx: entry.ebx,
        ecx: entry.ecx,
        edx: entry.edx,
        ..Default::default()
    }
}

/// A KVM VM.
#[derive(Debug)]
pub struct Vm {
    fd: Arc<VmFd>,
    supported_cpuid: CpuId,
    run_size: usize,
    coalesced_ring_page: Option<u32>,
    coalesced_pio: bool,
    tsc_deadline: bool,
    msi_routes: Arc<MsiRoutes>,
    /// The MSRs a vCPU's saved state holds (`KVM_GET_MSR_INDEX_LIST`), in restore order.
    msrs_to_save: Arc<[u32]>,
}

impl Vm {
    /// Creates a VM with `memory` as its RAM and the in-kernel irqchip.
    pub fn new(hypervisor: &Hypervisor, memory: &GuestMemoryMmap) -> Result<Self, KvmError> {
        let kvm = &hypervisor.kvm;
        let fd = Arc::new(kvm.create_vm().map_err(ioctl_error("KVM_CREATE_VM"))?);
        fd.set_tss_address(KVM_TSS as usize)
            .map_err(ioctl_error("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP)
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
        let tsc_deadline = fd.check_extension(Cap::TscDeadlineTimer);
        enable_exit_on_emulation_failure(&fd);
        let listed = kvm
            .get_msr_index_list()
            .map_err(ioctl_error("KVM_GET_MSR_INDEX_LIST"))?;
        let msrs_to_save = state::msrs_to_save(listed.as_slice()).into();
        Ok(Self {
            msrs_to_save,
            msi_routes: Arc::new(MsiRoutes::new(fd.clone())),
            fd,
            supported_cpuid,
            run_size,
            coalesced_ring_page,
            coalesced_pio,
            tsc_deadline,
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
        register_zone(&self.fd, zone).map_err(ioctl_error("KVM_REGISTER_COALESCED_MMIO"))
    }

    /// A handle that registers and unregisters coalesced zones while the VM runs (the
    /// bounded zones, which are registered only while the guest writes them).
    pub fn coalesced_zones(&self) -> KvmZones {
        KvmZones(self.fd.clone())
    }

    /// An interrupt line to `gsi` of the in-kernel irqchip (IOAPIC pin and, below 16,
    /// PIC line).
    pub fn irq_line(&self, gsi: u32) -> Result<IrqFd, KvmError> {
        IrqFd::register(&self.fd, gsi)
    }

    /// A level-triggered line to `gsi` (PCI INTx): the irqfd asserts it until the guest
    /// ends the interrupt, then KVM signals the returned resample eventfd.
    pub fn level_irq_line(&self, gsi: u32) -> Result<(IrqFd, EventFd), KvmError> {
        IrqFd::register_with_resample(&self.fd, gsi)
    }

    /// The VM's GSI routes, for MSI vectors.
    pub fn msi_routes(&self) -> Arc<MsiRoutes> {
        self.msi_routes.clone()
    }

    /// A handle that (un)registers ioeventfds at run time (doorbells that move with a BAR).
    pub fn ioevents(&self) -> IoEvents {
        IoEvents(self.fd.clone())
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
        self.ioevents().assign(&event, space, addr, datamatch)?;
        Ok(event)
    }

    /// The CPUID every vCPU starts from: the host's supported leaves, the features a
    /// VMM adds (the hypervisor bit, TSC-deadline when the in-kernel LAPIC has it),
    /// edited by `options.model`, with PV EOI as `options` says.
    pub fn cpuid(&self, options: &VcpuOptions) -> Result<Vec<CpuidEntry>, CpuidError> {
        let mut entries: Vec<CpuidEntry> = self
            .supported_cpuid
            .as_slice()
            .iter()
            .map(to_entry)
            .collect();
        cpuid::add_vmm_features(&mut entries, self.tsc_deadline);
        options.model.apply(&mut entries)?;
        cpuid::set_pv_eoi(&mut entries, options.pv_eoi);
        Ok(entries)
    }

    /// Creates vCPU `id` with `cpuid` (from [`Vm::cpuid`]) and its own APIC ID and
    /// topology.
    pub fn create_vcpu(&self, id: u8, cpus: u8, cpuid: &[CpuidEntry]) -> Result<Vcpu, KvmError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(ioctl_error("KVM_CREATE_VCPU"))?;
        let mut entries = cpuid.to_vec();
        cpuid::set_topology(&mut entries, id, cpus);
        let kvm_entries: Vec<kvm_cpuid_entry2> = entries.iter().map(to_kvm).collect();
        let cpuid = CpuId::from_entries(&kvm_entries)
            .map_err(|_| KvmError::MissingCapability("room for the CPUID entries"))?;
        fd.set_cpuid2(&cpuid)
            .map_err(ioctl_error("KVM_SET_CPUID2"))?;
        let vcpu = Vcpu::new(
            fd,
            id,
            (self.run_size, self.coalesced_ring_page),
            self.msrs_to_save.clone(),
        )?;
        vcpu.set_power_on_state()?;
        Ok(vcpu)
    }
}

impl Vm {
    /// The in-kernel PICs' and IOAPIC's state and the KVM clock; the vCPUs must be out of
    /// `KVM_RUN` (paused).
    pub fn save_state(&self) -> Result<VmState, KvmError> {
        state::save_vm(&self.fd)
    }

    /// Puts a saved [`VmState`] into this VM, before its vCPUs' states are restored.
    pub fn restore_state(&self, saved: &VmState) -> Result<(), KvmError> {
        state::restore_vm(&self.fd, saved)
    }

    /// A handle that saves the VM's state from another thread (a snapshot's).
    pub fn states(&self) -> VmStates {
        VmStates(self.fd.clone())
    }
}

/// Saves the VM's [`VmState`] while the machine runs (paused).
#[derive(Debug, Clone)]
pub struct VmStates(Arc<VmFd>);

impl VmStates {
    /// The in-kernel PICs', IOAPIC's and clock's state; the vCPUs must be paused.
    pub fn save(&self) -> Result<VmState, KvmError> {
        state::save_vm(&self.0)
    }
}

/// kvm-ioctls' name for an address in `space`.
fn io_address(space: AddressSpace, addr: u64) -> IoEventAddress {
    match space {
        AddressSpace::Pio => IoEventAddress::Pio(addr),
        AddressSpace::Mmio => IoEventAddress::Mmio(addr),
    }
}

/// Registers and removes ioeventfds while the VM runs.
#[derive(Debug, Clone)]
pub struct IoEvents(Arc<VmFd>);

impl IoEvents {
    /// Signals `event` on writes to `addr` (`datamatch: None`: a length-0 ioeventfd, any
    /// write; `Some(v)`: a 2-byte write of `v`, a virtio-pci queue index).
    pub fn assign(
        &self,
        event: &EventFd,
        space: AddressSpace,
        addr: u64,
        datamatch: Option<u32>,
    ) -> Result<(), KvmError> {
        self.change(event, space, addr, datamatch, true)
    }

    /// Removes what [`IoEvents::assign`] registered.
    pub fn deassign(
        &self,
        event: &EventFd,
        space: AddressSpace,
        addr: u64,
        datamatch: Option<u32>,
    ) -> Result<(), KvmError> {
        self.change(event, space, addr, datamatch, false)
    }

    fn change(
        &self,
        event: &EventFd,
        space: AddressSpace,
        addr: u64,
        datamatch: Option<u32>,
        assign: bool,
    ) -> Result<(), KvmError> {
        let addr = io_address(space, addr);
        let vm = &self.0;
        match (datamatch, assign) {
            (None, true) => vm.register_ioevent(event, &addr, NoDatamatch),
            (Some(value), true) => vm.register_ioevent(event, &addr, value),
            (None, false) => vm.unregister_ioevent(event, &addr, NoDatamatch),
            (Some(value), false) => vm.unregister_ioevent(event, &addr, value),
        }
        .map_err(ioctl_error(if assign {
            "KVM_IOEVENTFD"
        } else {
            "KVM_IOEVENTFD (deassign)"
        }))
    }
}

/// Registers and unregisters coalesced zones while the VM runs: a vCPU registers a
/// bounded zone on its first exited write (`KVM_REGISTER_COALESCED_MMIO`), the event loop
/// unregisters it once idle (`KVM_UNREGISTER_COALESCED_MMIO`); both are in those
/// threads' seccomp lists (`requests`).
#[derive(Debug, Clone)]
pub struct KvmZones(Arc<VmFd>);

/// Posts the writes to `zone` from now on: the one registration path, for the zones
/// registered at start and the bounded ones registered on first use.
fn register_zone(fd: &VmFd, zone: &PostedZone) -> Result<(), kvm_ioctls::Error> {
    fd.register_coalesced_mmio(io_address(zone.space, zone.addr), zone.size)
}

impl ZoneSwitch for KvmZones {
    fn register(&self, zone: &PostedZone) -> std::io::Result<()> {
        register_zone(&self.0, zone).map_err(std::io::Error::from)
    }

    fn unregister(&self, zone: &PostedZone) -> std::io::Result<()> {
        // KVM removes every zone inside this range; zones never overlap, so only this.
        self.0
            .unregister_coalesced_mmio(io_address(zone.space, zone.addr), zone.size)
            .map_err(std::io::Error::from)
    }
}

/// Asks KVM to exit to userspace on every emulation failure, with the instruction's
/// bytes, where it supports that (KVM_CAP_EXIT_ON_EMULATION_FAILURE): without it a
/// failure at CPL 3 becomes a #UD in the guest, and the bytes must be read from guest
/// memory. Best effort: `crate::insn`'s completer reads the bytes itself when KVM
/// gives none.
fn enable_exit_on_emulation_failure(fd: &VmFd) {
    let mut cap = kvm_bindings::kvm_enable_cap {
        cap: kvm_bindings::KVM_CAP_EXIT_ON_EMULATION_FAILURE,
        ..Default::default()
    };
    cap.args[0] = 1;
    let _ = fd.enable_cap(&cap);
}
