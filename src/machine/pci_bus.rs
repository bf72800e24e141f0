//! PCI on the machine: bus 0's root (configuration mechanism #1 at 0xcf8 with the reset
//! register at 0xcf9, ECAM), and the virtio devices as virtio-pci functions when
//! `--virtio-transport pci`: their BAR on the MMIO bus wherever the guest puts it, a
//! length-0 ioeventfd per queue at its notify address, MSI-X vectors routed by KVM, and
//! INTx as a level-triggered line with a resample fd.
//!
//! | device number | function        | INTx GSI |
//! |---------------|-----------------|----------|
//! | 0             | host bridge     | -        |
//! | 1, 2, ...     | virtio devices on PCI in the inventory's order (disks, entropy, console) | 16 + n % 8 |

use std::sync::{Arc, Mutex, Weak};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::IoBuses;
use crate::config::Doorbell;
use crate::devices::acpi_pm::ResetControl;
use crate::devices::pci::host::{BarObserver, PciConfigIo, PciEcam, PciRoot, SharedFunction};
use crate::devices::pci::msix::{MsiMessage, MsiSink};
use crate::devices::pci::BarChange;
use crate::devices::persist::{SavedState, StateError};
use crate::devices::virtio::pci::VirtioPciTransport;
use crate::devices::virtio::state::DeviceState;
use crate::devices::virtio::{OnBus, VirtioDevice};
use crate::errors::chain;
use crate::irq::InterruptLine;
use crate::kvm::MsiRoutes;
use crate::layout::{self, ports};
use crate::ratelimit::RateLimiter;
use crate::services::LevelTriggered;
use crate::sync::LockExt;

use super::device_table::{DeviceStateHandle, DeviceStates};
use super::inventory::DeviceCounters;
use super::platform::Platform;
use super::MachineError;
use bars::{BarMover, PlacedBar};

mod bars;

/// The first GSI of the IOAPIC's PCI pins (16-23); device n's INTA# is on 16 + n % 8.
const INTX_FIRST_GSI: u32 = 16;

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
}

impl MsiSink for MsiVectors {
    fn program(&self, vector: u16, message: Option<MsiMessage>) {
        let (Some(routes), Some(gsi)) = (&self.routes, self.gsis.get(usize::from(vector))) else {
            return;
        };
        if let Err(error) = routes.set(*gsi, message.map(|m| (m.address, m.data))) {
            self.warnings
                .locked()
                .warn(|| format!("cannot route MSI-X vector {vector}: {}", chain(&error)));
        }
    }

    fn signal(&self, vector: u16) {
        if let Some(line) = self.lines.get(usize::from(vector)) {
            line.pulse();
        }
    }
}

/// The root's view of the [`BarMover`]: weak, because the mover holds the MMIO table
/// that holds ECAM, which holds the root. A strong reference here made a cycle that kept
/// every device (and a disk image's lock) alive after its machine was dropped; the
/// inventory's `pci-host` entry owns the mover instead, for as long as the machine.
struct RootObserver(Weak<BarMover>);

impl BarObserver for RootObserver {
    fn bar_changed(&self, function: u8, change: BarChange) {
        if let Some(mover) = self.0.upgrade() {
            mover.bar_changed(function, change);
        }
    }
}

/// The `pci-host` entry's counters: it keeps none, but owns the mover.
impl DeviceCounters for BarMover {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// A virtio-pci function's saved state: restoring it moves its BAR where the saved one
/// was, through the same mover as a guest's move.
struct PciFunctionState<D: VirtioDevice> {
    transport: Arc<VirtioPciTransport<D>>,
    mover: Arc<BarMover>,
    device_number: u8,
}

impl<D: VirtioDevice + DeviceState + 'static> DeviceStateHandle for PciFunctionState<D>
where
    VirtioPciTransport<D>: Send + Sync,
{
    fn save(&self) -> Result<SavedState, StateError> {
        self.transport.save_saved()
    }

    fn restore(&self, saved: &SavedState) -> Result<(), StateError> {
        for change in self.transport.restore_saved(saved)? {
            self.mover
                .apply_change(self.device_number, change)
                .map_err(|(name, error)| {
                    StateError::invalid("virtio-pci", format!("{name}: BAR move: {error}"))
                })?;
        }
        Ok(())
    }
}

/// What placing a device needs from the machine.
pub struct Placing<'a> {
    pub memory: &'a GuestMemoryMmap,
    pub platform: &'a dyn Platform,
    pub doorbell: Doorbell,
    /// Offer VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
}

/// A virtio device placed on bus 0.
pub struct PlacedPci<D: VirtioDevice> {
    pub transport: Arc<VirtioPciTransport<D>>,
    /// Its device number on bus 0 (function 0).
    pub device_number: u8,
    pub intx_gsi: u32,
    pub vectors: u16,
    /// One eventfd per queue, each with the queue it names.
    pub doorbells: Vec<(EventFd, Option<u32>)>,
    /// The INTx line's resample fd, and the function to ask.
    pub resample: Option<(EventFd, Arc<Mutex<dyn LevelTriggered>>)>,
    /// Its MSI-X vectors' lines and its INTx line.
    pub lines: Vec<Arc<dyn InterruptLine>>,
    /// Its saved state, for snapshots.
    pub state: Arc<dyn DeviceStateHandle>,
}

/// Bus 0 while its devices are placed: the root, the BAR mover, the next free device
/// number (the host bridge is 0).
pub struct PciBus {
    root: PciRoot,
    mover: Arc<BarMover>,
    next: u8,
}

impl PciBus {
    /// An empty bus 0 whose BARs move on `buses`' MMIO table.
    pub fn new(buses: &IoBuses, platform: &dyn Platform) -> Self {
        let mover = Arc::new(BarMover::new(&buses.mmio, platform.ioevents()));
        Self {
            root: PciRoot::new(Arc::new(RootObserver(Arc::downgrade(&mover)))),
            mover,
            next: 1,
        }
    }

    /// Puts `device` on the next device number: MSI-X vectors, INTx, a doorbell per
    /// queue that moves with its BAR.
    pub fn place<D: VirtioDevice + DeviceState + 'static>(
        &mut self,
        placing: &Placing<'_>,
        name: &'static str,
        device: D,
    ) -> Result<PlacedPci<D>, MachineError> {
        let device_number = self.next;
        let queues = device.queue_max_sizes().len();
        let vectors = queues as u16 + 1;
        let msi = Arc::new(MsiVectors::new(placing.platform, vectors)?);
        let gsi = INTX_FIRST_GSI + u32::from(device_number) % 8;
        let (intx, resample) = placing.platform.level_line(gsi)?;
        let transport =
            VirtioPciTransport::new(device, placing.memory.clone(), msi.clone(), intx.clone())?;
        transport.set_interrupt_line(gsi as u8);
        let transport = Arc::new(transport);
        let function = Arc::new(Mutex::new(OnBus(transport.clone())));
        self.root
            .add(device_number, function.clone() as SharedFunction)?;
        let doorbells = self.doorbells(placing, queues)?;
        self.mover.bars.locked().push(PlacedBar {
            device: device_number,
            name,
            bar: function.clone(),
            base: None,
            doorbells: doorbells
                .iter()
                .map(|(event, queue)| {
                    let offset = VirtioPciTransport::<D>::notify_address(*queue as u16);
                    Ok((event.try_clone().map_err(MachineError::EventLoop)?, offset))
                })
                .collect::<Result<_, MachineError>>()?,
        });
        self.next += 1;
        let mut lines = msi.lines.clone();
        lines.push(intx);
        let state = Arc::new(PciFunctionState {
            transport: transport.clone(),
            mover: self.mover.clone(),
            device_number,
        });
        Ok(PlacedPci {
            state,
            transport,
            device_number,
            intx_gsi: gsi,
            vectors,
            doorbells: doorbells.into_iter().map(|(e, q)| (e, Some(q))).collect(),
            resample: resample.map(|event| (event, function as Arc<Mutex<dyn LevelTriggered>>)),
            lines,
        })
    }

    /// One eventfd per queue, registered with KVM when the BAR is placed; none when
    /// doorbells exit (or on a platform without ioeventfds).
    fn doorbells(
        &self,
        placing: &Placing<'_>,
        queues: usize,
    ) -> Result<Vec<(EventFd, u32)>, MachineError> {
        if placing.doorbell == Doorbell::Exit || !self.mover.has_ioevents() {
            return Ok(Vec::new());
        }
        (0..queues as u32)
            .map(|queue| {
                let event = EventFd::new(EFD_NONBLOCK).map_err(MachineError::EventLoop)?;
                Ok((event, queue))
            })
            .collect()
    }

    /// Assigns the BARs, as firmware would, and places bus 0's root (with `reset` at
    /// 0xcf9 through it) at CF8/CFC and ECAM. Returns what must live as long as the
    /// machine (the BAR mover), for the inventory to keep, and the saved states of the
    /// host bridge and of the configuration ports (the CF8 address latch), for snapshots.
    pub fn finish(
        self,
        buses: &mut IoBuses,
        reset: ResetControl,
    ) -> Result<(Arc<dyn DeviceCounters>, DeviceStates), MachineError> {
        let root = Arc::new(self.root);
        root.assign_memory_bars(layout::PCI_MMIO32_START..layout::PCI_MMIO32_END)?;
        let config_io = Arc::new(Mutex::new(PciConfigIo::new(root.clone(), reset)));
        let states: DeviceStates = vec![
            ("pci-host/bridge".into(), root.host_bridge().clone()),
            ("pci-host/config-io".into(), config_io.clone()),
        ];
        buses.pio.insert(
            "pci-config",
            ports::PCI_CONFIG,
            ports::PCI_CONFIG_COUNT,
            config_io,
        )?;
        buses.mmio.insert(
            "pci-ecam",
            layout::PCI_ECAM_START,
            layout::PCI_ECAM_SIZE,
            Arc::new(Mutex::new(PciEcam::new(root))),
        )?;
        Ok((self.mover, states))
    }
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
    use crate::exit::VmExit;
    use crate::machine::platform::Unplugged;
    use crate::posted::{MemoryRing, PostedWrite, PostedWrites};
    use crate::profile::ExitProfile;
    use crate::run_loop::ExitContext;

    /// Bus 0 with its host bridge, and the ring KVM would fill.
    fn machine() -> (DeviceAccess, Arc<MemoryRing>) {
        let memory =
            GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        let mut buses = IoBuses::default();
        let _ = &memory;
        let reset = ResetControl::default();
        PciBus::new(&buses, &Unplugged)
            .finish(&mut buses, reset)
            .unwrap();
        let ring = Arc::new(MemoryRing::default());
        let access = DeviceAccess {
            buses: Arc::new(buses),
            posted: Arc::new(PostedWrites::new(ring.clone())),
            recorder: None,
            stops: None,
        };
        (access, ring)
    }

    fn posted_address(ring: &MemoryRing, address: u32) {
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
