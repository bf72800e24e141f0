//! PCI on the machine: bus 0's root (configuration mechanism #1 at 0xcf8 with the reset
//! register at 0xcf9, ECAM), and the virtio devices as virtio-pci functions when
//! `--virtio-transport pci`: their BAR on the MMIO bus wherever the guest puts it, a
//! length-0 ioeventfd per queue at its notify address, MSI-X vectors routed by KVM, and
//! INTx as a level-triggered line with a resample fd.
//!
//! | device number | function        | INTx GSI |
//! |---------------|-----------------|----------|
//! | 0             | host bridge     | -        |
//! | 1, 2, 3       | virtio devices in the order block, entropy, console (those present) | 16 + n |

use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::IoBuses;
use crate::config::Doorbell;
use crate::devices::acpi_pm::ResetControl;
use crate::devices::pci::host::{PciConfigIo, PciEcam, PciRoot, SharedFunction};
use crate::devices::pci::msix::{MsiMessage, MsiSink};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::console::Console;
use crate::devices::virtio::pci::VirtioPciTransport;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::VirtioDevice;
use crate::irq::InterruptLine;
use crate::kvm::MsiRoutes;
use crate::layout::{self, ports};
use crate::ratelimit::RateLimiter;
use crate::services::{DoorbellService, InputService, InputTarget, LevelTriggered};
use crate::sync::LockExt;

use super::platform::Platform;
use super::virtio::{VirtioBackends, VirtioSlot, BLOCK_SLOT, CONSOLE_SLOT, DISK_ID, RNG_SLOT};
use super::MachineError;
use bars::{BarMover, PlacedBar};

/// The first GSI of the IOAPIC's PCI pins (16-23); device n's INTA# is on 16 + n % 8.
const INTX_FIRST_GSI: u32 = 16;

mod bars;

/// A device's MSI-X vectors: each a GSI with an irqfd, routed to the message the guest
/// programmed (no route while masked).
pub struct MsiVectors {
    gsis: Vec<u32>,
    lines: Vec<Arc<dyn InterruptLine>>,
    routes: Option<Arc<MsiRoutes>>,
    warnings: Mutex<RateLimiter>,
}

impl MsiVectors {
    fn new(platform: &dyn Platform, count: u16) -> Result<Self, MachineError> {
        let mut gsis = Vec::new();
        let mut lines = Vec::new();
        for _ in 0..count {
            let (gsi, line) = platform.msi_vector()?;
            gsis.push(gsi);
            lines.push(line);
        }
        Ok(Self {
            gsis,
            lines,
            routes: platform.msi_routes(),
            warnings: Mutex::default(),
        })
    }

    /// Messages signalled, over every vector.
    pub fn signals(&self) -> u64 {
        self.lines.iter().map(|line| line.pulses()).sum()
    }
}

impl MsiSink for MsiVectors {
    fn program(&self, vector: u16, message: Option<MsiMessage>) {
        let (Some(routes), Some(gsi)) = (&self.routes, self.gsis.get(usize::from(vector))) else {
            return;
        };
        if let Err(error) = routes.set(*gsi, message.map(|m| (m.address, m.data))) {
            self.warnings
                .locked()
                .warn(|| format!("cannot route MSI-X vector {vector}: {error}"));
        }
    }

    fn signal(&self, vector: u16) {
        if let Some(line) = self.lines.get(usize::from(vector)) {
            line.pulse();
        }
    }
}

/// A transport as its bus slot, its PCI function and its services share it.
type SharedTransport<D> = Arc<Mutex<VirtioPciTransport<D>>>;

/// Everything placing a virtio-pci device needs.
struct Placement<'a> {
    memory: &'a GuestMemoryMmap,
    platform: &'a dyn Platform,
    doorbell: Doorbell,
    mover: &'a BarMover,
}

impl Placement<'_> {
    fn place<D: VirtioDevice + 'static>(
        &self,
        root: &mut PciRoot,
        device_number: u8,
        (slot, name): (u8, &'static str),
        device: D,
    ) -> Result<(VirtioSlot, SharedTransport<D>), MachineError> {
        let queues = device.queue_max_sizes().len();
        let vectors = Arc::new(MsiVectors::new(self.platform, queues as u16 + 1)?);
        let gsi = INTX_FIRST_GSI + u32::from(device_number) % 8;
        let (intx, resample) = self.platform.level_line(gsi)?;
        let mut transport =
            VirtioPciTransport::new(device, self.memory.clone(), vectors.clone(), intx.clone())?;
        transport.config_space_mut().set_interrupt_line(gsi as u8);
        let transport = Arc::new(Mutex::new(transport));
        root.add(device_number, transport.clone() as SharedFunction)?;
        let doorbells = self.doorbells(queues)?;
        self.mover.bars.locked().push(PlacedBar {
            device: device_number,
            name,
            bar: transport.clone(),
            base: None,
            doorbells: doorbells
                .iter()
                .map(|(event, queue)| {
                    let offset = VirtioPciTransport::<D>::notify_address(*queue as u16);
                    Ok((event.try_clone().map_err(MachineError::EventLoop)?, offset))
                })
                .collect::<Result<_, MachineError>>()?,
        });
        let (counter, signals) = (transport.clone(), vectors.clone());
        let virtio_slot = VirtioSlot {
            name,
            index: slot,
            service: DoorbellService::new(slot, transport.clone()),
            doorbells: doorbells.into_iter().map(|(e, q)| (e, Some(q))).collect(),
            notifications: Arc::new(move || counter.locked().notifications()),
            doorbells_rung: {
                let counter = transport.clone();
                Arc::new(move || counter.locked().doorbells())
            },
            interrupts: Arc::new(move || signals.signals() + intx.pulses()),
            input: None,
            on_mmio: false,
            resample: resample
                .map(|event| (event, transport.clone() as Arc<Mutex<dyn LevelTriggered>>)),
        };
        Ok((virtio_slot, transport))
    }

    /// One eventfd per queue, registered with KVM when the BAR is placed; none when
    /// doorbells exit (or on a platform without ioeventfds).
    fn doorbells(&self, queues: usize) -> Result<Vec<(EventFd, u32)>, MachineError> {
        if self.doorbell == Doorbell::Exit || !self.mover.has_ioevents() {
            return Ok(Vec::new());
        }
        (0..queues as u32)
            .map(|queue| {
                let event = EventFd::new(EFD_NONBLOCK).map_err(MachineError::EventLoop)?;
                Ok((event, queue))
            })
            .collect()
    }
}

/// Places bus 0's root (and `reset` at 0xcf9 through it), and the virtio devices of
/// `backends` on it when there are any; returns the devices.
pub fn build(
    backends: VirtioBackends,
    doorbell: Doorbell,
    memory: &GuestMemoryMmap,
    platform: &dyn Platform,
    buses: &mut IoBuses,
    reset: ResetControl,
) -> Result<Vec<VirtioSlot>, MachineError> {
    let mover = Arc::new(BarMover::new(buses.mmio.clone(), platform.ioevents()));
    let mut root = PciRoot::new(mover.clone());
    let placement = Placement {
        memory,
        platform,
        doorbell,
        mover: &mover,
    };
    let slots = place_virtio(&placement, &mut root, backends)?;
    let root = Arc::new(root);
    root.assign_memory_bars(layout::PCI_MMIO32_START..layout::PCI_MMIO32_END)?;
    buses.pio.insert(
        "pci-config",
        ports::PCI_CONFIG,
        ports::PCI_CONFIG_COUNT,
        Arc::new(Mutex::new(PciConfigIo::new(root.clone(), reset))),
    )?;
    buses.mmio.insert(
        "pci-ecam",
        layout::PCI_ECAM_START,
        layout::PCI_ECAM_SIZE,
        Arc::new(Mutex::new(PciEcam::new(root))),
    )?;
    Ok(slots)
}

fn place_virtio(
    placement: &Placement<'_>,
    root: &mut PciRoot,
    backends: VirtioBackends,
) -> Result<Vec<VirtioSlot>, MachineError> {
    let mut slots = Vec::new();
    let mut next = 1u8;
    if let Some((disk, readonly)) = backends.disk {
        let device = Block::new(disk, readonly, DISK_ID);
        slots.push(
            placement
                .place(root, next, (BLOCK_SLOT, "virtio-blk"), device)?
                .0,
        );
        next += 1;
    }
    if let Some(entropy) = backends.entropy {
        let device = Rng::new(entropy);
        slots.push(
            placement
                .place(root, next, (RNG_SLOT, "virtio-rng"), device)?
                .0,
        );
        next += 1;
    }
    if let Some(output) = backends.console {
        let device = Console::new(output);
        let (mut slot, transport) =
            placement.place(root, next, (CONSOLE_SLOT, "virtio-console"), device)?;
        slot.input = Some(InputService::new(InputTarget::VirtioConsole, transport));
        slots.push(slot);
    }
    Ok(slots)
}

/// The INTx routing the ACPI tables describe: (device number, GSI) of each device.
pub fn intx_routes(devices: usize) -> Vec<(u8, u32)> {
    (1..=devices as u8)
        .map(|device| (device, INTX_FIRST_GSI + u32::from(device) % 8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::DeviceAccess;
    use crate::bus::{Access, AddressSpace, Dispatch};
    use crate::coalesced::{PostedWrite, PostedWrites, QueueRing};
    use crate::exit::VmExit;
    use crate::machine::platform::Unplugged;
    use crate::profile::ExitProfile;
    use crate::vcpu::ExitContext;

    /// Bus 0 with its host bridge, and the ring KVM would fill.
    fn machine() -> (DeviceAccess, Arc<QueueRing>) {
        let memory =
            GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        let mut buses = IoBuses::default();
        let reset = ResetControl::default();
        build(
            VirtioBackends::none(),
            Doorbell::Len0,
            &memory,
            &Unplugged,
            &mut buses,
            reset,
        )
        .unwrap();
        let ring = Arc::new(QueueRing::default());
        let access = DeviceAccess {
            buses: Arc::new(buses),
            posted: Arc::new(PostedWrites::new(ring.clone())),
            recorder: None,
            stops: None,
        };
        (access, ring)
    }

    fn posted_address(ring: &QueueRing, address: u32) {
        let mut data = [0u8; 8];
        data[..4].copy_from_slice(&address.to_le_bytes());
        ring.push(PostedWrite {
            space: AddressSpace::Pio,
            addr: u64::from(ports::PCI_CONFIG),
            len: 4,
            data,
        });
    }

    fn read_data(access: &DeviceAccess, vcpu: u8) -> u32 {
        let mut data = [0u8; 4];
        let mut profile = ExitProfile::default();
        let mut warnings = RateLimiter::default();
        ExitContext {
            access,
            profile: &mut profile,
            warnings: &mut warnings,
            vcpu,
        }
        .handle(VmExit::Io {
            port: ports::PCI_CONFIG + 4,
            size: 4,
            access: Access::Read(&mut data),
        });
        u32::from_le_bytes(data)
    }

    #[test]
    fn a_posted_configuration_address_is_seen_by_the_next_data_read_on_any_vcpu() {
        let (access, ring) = machine();
        // vCPU 0 writes the address (posted: no exit), vCPU 1 reads the data.
        posted_address(&ring, 0x8000_0000);
        assert_eq!(read_data(&access, 1), 0x0008_1b36, "the host bridge's ids");
        posted_address(&ring, 0x8000_0008);
        assert_eq!(read_data(&access, 0) >> 8, 0x06_00_00, "its class code");
        posted_address(&ring, 0x8000_0800);
        assert_eq!(read_data(&access, 1), u32::MAX, "no device 1");
        assert_eq!(access.posted.applied(), 3);
    }

    #[test]
    fn a_reset_posted_to_0xcf9_is_not_lost() {
        let (access, ring) = machine();
        let mut data = [0u8; 8];
        data[0] = 0x06;
        ring.push(PostedWrite {
            space: AddressSpace::Pio,
            addr: u64::from(ports::RESET_CONTROL),
            len: 1,
            data,
        });
        assert_eq!(
            access.operation(|stop| stop),
            Some(crate::bus::StopRequest::Reset)
        );
        let host = access
            .buses
            .dispatch(AddressSpace::Mmio, layout::PCI_ECAM_START, {
                Access::Read(&mut [0u8; 4])
            });
        assert_eq!(host, Dispatch::Handled(None), "ECAM is on the bus");
    }
}
