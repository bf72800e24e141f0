//! Message-signalled interrupts: GSIs routed to MSI messages (KVM_SET_GSI_ROUTING), each
//! with an irqfd, so a device's vector reaches the guest's LAPIC with no userspace exit.
//!
//! KVM's routing table is replaced whole by every KVM_SET_GSI_ROUTING, so the table kept
//! here always holds the in-kernel irqchip's default routes (GSIs 0-15 to the PIC and the
//! IOAPIC, 16-23 to the IOAPIC, as KVM_CREATE_IRQCHIP installs them) plus every MSI
//! route programmed so far. Only a guest reprogramming a vector takes its lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;

use super::{ioctl_error, IrqFd, KvmError};
use crate::sync::LockExt;

/// The IOAPIC's pins: GSIs below this are the irqchip's; MSI routes use the ones above.
const IOAPIC_PINS: u32 = 24;

/// The VM's GSI routes.
#[derive(Debug)]
pub struct MsiRoutes {
    vm: Arc<VmFd>,
    msi: Mutex<BTreeMap<u32, (u64, u32)>>,
    next_gsi: AtomicU32,
}

fn irqchip_route(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip: chip, pin },
        },
        ..Default::default()
    }
}

fn msi_route(gsi: u32, address: u64, data: u32) -> kvm_irq_routing_entry {
    let mut msi = kvm_irq_routing_msi {
        address_lo: address as u32,
        address_hi: (address >> 32) as u32,
        data,
        ..Default::default()
    };
    msi.__bindgen_anon_1.pad = 0;
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        u: kvm_irq_routing_entry__bindgen_ty_1 { msi },
        ..Default::default()
    }
}

/// KVM_CREATE_IRQCHIP's routes: ISA GSIs to the PIC and the IOAPIC, the rest to the IOAPIC.
fn default_routes() -> Vec<kvm_irq_routing_entry> {
    let mut routes = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        if gsi < 16 {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            routes.push(irqchip_route(gsi, chip, gsi % 8));
        }
        routes.push(irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    routes
}

impl MsiRoutes {
    pub(super) fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            msi: Mutex::default(),
            next_gsi: AtomicU32::new(IOAPIC_PINS),
        }
    }

    /// A fresh GSI for a vector, with its irqfd (signalled with no route: KVM drops it).
    pub fn vector(&self) -> Result<(u32, IrqFd), KvmError> {
        let gsi = self.next_gsi.fetch_add(1, Ordering::Relaxed);
        Ok((gsi, IrqFd::register(&self.vm, gsi)?))
    }

    /// Routes `gsi` to `message` (address, data), or removes its route.
    pub fn set(&self, gsi: u32, message: Option<(u64, u32)>) -> Result<(), KvmError> {
        let mut msi = self.msi.locked();
        match message {
            Some(message) => msi.insert(gsi, message),
            None => msi.remove(&gsi),
        };
        let mut entries = default_routes();
        entries.extend(
            msi.iter()
                .map(|(gsi, (addr, data))| msi_route(*gsi, *addr, *data)),
        );
        let routing = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| KvmError::MissingCapability("room for the GSI routes"))?;
        self.vm
            .set_gsi_routing(&routing)
            .map_err(ioctl_error("KVM_SET_GSI_ROUTING"))
    }
}
