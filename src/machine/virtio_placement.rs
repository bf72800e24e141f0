//! The virtio devices of a machine, placed through one path: each [`VirtioSpec`] of the
//! inventory's plan becomes its device over its backend, then goes on virtio-mmio (a
//! window, its line, its doorbells; below) or on PCI bus 0 (`pci.rs`). Adding a device
//! kind is one device file and one arm in [`build`].
//!
//! | window | device (by default)  | MMIO base   | GSI | PIO doorbell |
//! |--------|----------------------|-------------|-----|--------------|
//! | 0      | the first disk       | 0xc0000000  | 5   | 0xb00        |
//! | 1      | entropy              | 0xc0001000  | 6   | 0xb04        |
//! | 2      | console              | 0xc0002000  | 7   | 0xb08        |
//!
//! A further disk on virtio-mmio takes a window none of these use. Linux finds them
//! through `virtio_mmio.device=4K@BASE:GSI` on its command line, which hushvm appends
//! for each device present, or through the ACPI tables.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::{Access, AddressSpace, BusDevice, IoBuses, StopRequest};
use crate::config::{Doorbell, VirtioTransport, VsockConfig};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::console::Console;
use crate::devices::virtio::mmio::{MmioTransport, MMIO_SIZE, QUEUE_NOTIFY};
use crate::devices::virtio::net::Net;
use crate::devices::virtio::pci::{VirtioPciTransport, BAR_SIZE};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{OnBus, QueueNotify, VirtioDevice};
use crate::irq::InterruptLine;
use crate::layout::{self, ports::VIRTIO_PIO_DOORBELL_COUNT};
use crate::net::tap::Tap;
use crate::services::{DoorbellService, InputService, InputTarget, LevelTriggered, NetStatus};

use crate::devices::persist::{self, SavedState, StateError};
use crate::devices::virtio::state::DeviceState;

use super::backends::{monotonic_ns, DiskBackendSpec, NetBackendSpec, Output};
use super::device_table::DeviceStateHandle;
use super::inventory::{
    BusPlacement, DeviceCounters, DeviceEntry, Interrupt, VirtioKind, VirtioSpec,
};
use super::pci_bus::{PciBus, Placing};
use super::MachineError;

/// The serial number virtio-blk reports (VIRTIO_BLK_T_GET_ID) for the `disk`th disk.
pub(super) fn disk_serial(disk: usize) -> String {
    format!("hushvm-disk{disk}")
}

/// What the event loop (live) or the trace (replay) needs of a placed device.
pub struct VirtioWiring {
    pub id: String,
    /// Its doorbell work.
    pub service: DoorbellService,
    /// Doorbell eventfds for the event loop, each with the queue it names (`None`: any).
    pub doorbells: Vec<(EventFd, Option<u32>)>,
    /// Where host input goes, for the console.
    pub input: Option<InputService>,
    /// A level-triggered line's resample fd, and the device to ask (virtio-pci INTx).
    pub resample: Option<(EventFd, Arc<Mutex<dyn LevelTriggered>>)>,
    /// Its virtio-mmio window, if it is on virtio-mmio.
    pub mmio_window: Option<u8>,
    /// Host sockets the event loop watches (vsock).
    pub host_sockets: Option<HostSockets>,
    /// Its saved state (transport, queues, device), for snapshots.
    pub state: Arc<dyn DeviceStateHandle>,
    /// For virtio-net: the tap the event loop watches.
    pub net: Option<NetWiring>,
}

/// A virtio-mmio device's saved state.
struct MmioState<D: VirtioDevice>(Arc<MmioTransport<D>>);

impl<D: VirtioDevice + DeviceState + 'static> DeviceStateHandle for MmioState<D>
where
    MmioTransport<D>: Send + Sync,
{
    fn save(&self) -> Result<SavedState, StateError> {
        persist::save(&*self.0)
    }

    fn restore(&self, saved: &SavedState) -> Result<(), StateError> {
        self.0.restore_shared(saved)
    }
}

/// A device's host sockets: an fd readable when they have news, and what handles it
/// (true: the device has packets for the guest, and its queues are to be served).
#[derive(Clone)]
pub struct HostSockets {
    pub fd: RawFd,
    pub handle: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// What the event loop watches for a virtio-net device.
pub struct NetWiring {
    /// The tap's fd (the device owns the tap for the machine's life).
    pub tap: RawFd,
    pub status: Arc<dyn NetStatus>,
    /// The eventfd the device writes when it starts waiting (full tap, limiter).
    pub waker: Arc<EventFd>,
}

/// The host side of the virtio devices, taken as the plan names them.
pub struct VirtioBackends {
    pub disks: Vec<Option<DiskBackendSpec>>,
    pub entropy: Option<(Box<dyn Read + Send>, String)>,
    pub console: Option<(Output, String)>,
    pub vsock: Option<(UnixListener, VsockConfig)>,
    pub nets: Vec<Option<NetBackendSpec>>,
}

impl<D: VirtioDevice> DeviceCounters for MmioTransport<D> {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut counters = vec![
            ("doorbells", self.doorbells()),
            ("notifications", self.notifications()),
        ];
        counters.extend(self.device().counters());
        counters
    }
}

impl<D: VirtioDevice> DeviceCounters for VirtioPciTransport<D> {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut counters = vec![
            ("doorbells", self.doorbells()),
            ("notifications", self.notifications()),
        ];
        counters.extend(self.device().counters());
        counters
    }
}

/// A PIO doorbell: a write of a queue index notifies the device (when no ioeventfd took
/// the write first).
struct PioDoorbell(Arc<dyn QueueNotify>);

impl BusDevice for PioDoorbell {
    fn access(&mut self, _offset: u64, access: Access<'_>) -> Option<StopRequest> {
        match access {
            Access::Read(data) => data.fill(0),
            Access::Write(_) => self.0.notify(Some(access.write_value() as u32)),
        }
        None
    }
}

/// A device placed by [`Placer::place`], as the transport it went on.
enum Placed<D: VirtioDevice> {
    Mmio(Arc<MmioTransport<D>>),
    Pci(Arc<VirtioPciTransport<D>>),
}

/// Places virtio devices on either transport.
pub struct Placer<'a> {
    pub placing: Placing<'a>,
    pub pci: &'a mut PciBus,
    pub buses: &'a mut IoBuses,
}

impl Placer<'_> {
    /// Puts `device` where `spec` says; returns its wiring, its inventory entry (with
    /// `backend` named) and the transport it is on.
    fn place<D: VirtioDevice + DeviceState + 'static>(
        &mut self,
        spec: &VirtioSpec,
        device: D,
        backend: String,
    ) -> Result<(VirtioWiring, DeviceEntry, Placed<D>), MachineError> {
        let kind = spec.kind.device_kind();
        let landed = match (spec.transport, spec.mmio_window) {
            (VirtioTransport::Mmio, Some(window)) => {
                self.place_mmio(window, kind.name(), device)?
            }
            _ => self.place_pci(kind.name(), device)?,
        };
        let wiring = VirtioWiring {
            id: spec.id.clone(),
            service: DoorbellService::new(spec.slot, landed.notify),
            doorbells: landed.doorbells,
            input: None,
            host_sockets: None,
            resample: landed.resample,
            mmio_window: spec
                .mmio_window
                .filter(|_| matches!(landed.placed, Placed::Mmio(_))),
            state: landed.state,
            net: None,
        };
        let entry = DeviceEntry {
            id: spec.id.clone(),
            kind,
            placements: landed.placements,
            interrupt: landed.interrupt,
            backend,
            lines: landed.lines,
            device: landed.counters,
        };
        Ok((wiring, entry, landed.placed))
    }

    /// virtio-mmio window `window`: the registers, the PIO doorbell, the ioeventfds.
    fn place_mmio<D: VirtioDevice + DeviceState + 'static>(
        &mut self,
        window: u8,
        name: &'static str,
        device: D,
    ) -> Result<Landed<D>, MachineError> {
        let base = layout::virtio_mmio_slot(window);
        let queues = device.queue_max_sizes().len() as u32;
        let gsi = layout::virtio_mmio_gsi(window);
        let line = self.placing.platform.irq_line(gsi)?;
        let transport = Arc::new(MmioTransport::new(
            device,
            self.placing.memory.clone(),
            line.clone(),
        ));
        transport.core().offer_event_idx(self.placing.event_idx);
        let slot_device = Arc::new(Mutex::new(OnBus(transport.clone())));
        self.buses.mmio.insert(name, base, MMIO_SIZE, slot_device)?;
        let port = layout::virtio_pio_doorbell(window);
        let notify: Arc<dyn QueueNotify> = transport.clone();
        self.buses.pio.insert(
            name,
            port,
            VIRTIO_PIO_DOORBELL_COUNT,
            Arc::new(Mutex::new(PioDoorbell(notify.clone()))),
        )?;
        Ok(Landed {
            notify,
            counters: transport.clone(),
            state: Arc::new(MmioState(transport.clone())),
            placed: Placed::Mmio(transport),
            doorbells: self.mmio_doorbells(base + QUEUE_NOTIFY, port, queues)?,
            resample: None,
            placements: vec![
                BusPlacement::Mmio {
                    base,
                    size: MMIO_SIZE,
                },
                BusPlacement::Pio {
                    port,
                    count: VIRTIO_PIO_DOORBELL_COUNT,
                },
            ],
            interrupt: Interrupt::Line { gsi },
            lines: vec![line],
        })
    }

    /// The next function on PCI bus 0.
    fn place_pci<D: VirtioDevice + DeviceState + 'static>(
        &mut self,
        name: &'static str,
        device: D,
    ) -> Result<Landed<D>, MachineError> {
        let pci = self.pci.place(&self.placing, name, device)?;
        pci.transport.core().offer_event_idx(self.placing.event_idx);
        Ok(Landed {
            notify: pci.transport.clone(),
            counters: pci.transport.clone(),
            state: pci.state,
            placed: Placed::Pci(pci.transport),
            doorbells: pci.doorbells,
            resample: pci.resample,
            placements: vec![BusPlacement::Pci {
                device: pci.device_number,
                bar_size: BAR_SIZE,
            }],
            interrupt: Interrupt::Pci {
                intx_gsi: pci.intx_gsi,
                msix_vectors: pci.vectors,
            },
            lines: pci.lines,
        })
    }

    /// The ioeventfds for a device whose QueueNotify is at `notify` and whose PIO
    /// doorbell is `port`.
    fn mmio_doorbells(
        &self,
        notify: u64,
        port: u16,
        queues: u32,
    ) -> Result<Vec<(EventFd, Option<u32>)>, MachineError> {
        let platform = self.placing.platform;
        let wanted: Vec<(AddressSpace, u64, Option<u32>)> = match self.placing.doorbell {
            Doorbell::Exit => Vec::new(),
            Doorbell::Len0 => vec![(AddressSpace::Mmio, notify, None)],
            Doorbell::Len4 => (0..queues)
                .map(|q| (AddressSpace::Mmio, notify, Some(q)))
                .collect(),
            Doorbell::Pio => vec![(AddressSpace::Pio, u64::from(port), None)],
        };
        let mut doorbells = Vec::new();
        for (space, addr, datamatch) in wanted {
            if let Some(event) = platform.doorbell(space, addr, datamatch)? {
                doorbells.push((event, datamatch));
            }
        }
        Ok(doorbells)
    }
}

/// A device on its transport, before it becomes wiring and an inventory entry.
struct Landed<D: VirtioDevice> {
    placed: Placed<D>,
    notify: Arc<dyn QueueNotify>,
    counters: Arc<dyn DeviceCounters>,
    state: Arc<dyn DeviceStateHandle>,
    doorbells: Vec<(EventFd, Option<u32>)>,
    resample: Option<(EventFd, Arc<Mutex<dyn LevelTriggered>>)>,
    placements: Vec<BusPlacement>,
    interrupt: Interrupt,
    lines: Vec<Arc<dyn InterruptLine>>,
}

/// Host input for a placed console.
fn console_input(placed: Placed<Console<Output>>) -> InputService {
    let target = InputTarget::VirtioConsole;
    match placed {
        Placed::Mmio(transport) => {
            InputService::new(target, Arc::new(Mutex::new(OnBus(transport))))
        }
        Placed::Pci(transport) => InputService::new(target, Arc::new(Mutex::new(OnBus(transport)))),
    }
}

/// The host sockets of a placed vsock device.
fn vsock_sockets(placed: Placed<Vsock>) -> HostSockets {
    let (fd, handle): (RawFd, Arc<dyn Fn() -> bool + Send + Sync>) = match placed {
        Placed::Mmio(transport) => (
            transport.device().host_fd(),
            Arc::new(move || transport.device().host_events()),
        ),
        Placed::Pci(transport) => (
            transport.device().host_fd(),
            Arc::new(move || transport.device().host_events()),
        ),
    };
    HostSockets { fd, handle }
}

/// A virtio-net device over its tap, and what the event loop watches for it.
fn net_device(backend: NetBackendSpec) -> Result<(Net<Tap>, NetWiring), MachineError> {
    let now = monotonic_ns();
    let tap = backend.tap.as_raw_fd();
    let device = Net::new(
        backend.tap,
        backend.mac,
        backend.rx_limit.build(now),
        backend.tx_limit.build(now),
        monotonic_ns,
    );
    let waker = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(MachineError::EventLoop)?);
    let wake = waker.clone();
    device.set_waker(Box::new(move || {
        let _ = wake.write(1);
    }));
    // The status is filled in once the device is placed.
    let wiring = NetWiring {
        tap,
        status: Arc::new(NotPlaced),
        waker,
    };
    Ok((device, wiring))
}

/// A device's status before it is placed: waits for nothing.
struct NotPlaced;

impl NetStatus for NotPlaced {
    fn tx_blocked(&self) -> bool {
        false
    }
    fn retry_after_ns(&self) -> Option<u64> {
        None
    }
    fn now_ns(&self) -> u64 {
        monotonic_ns()
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// A virtio-net device's counters in the inventory: its transport's, then its frames'.
struct NetEntryCounters {
    transport: Arc<dyn DeviceCounters>,
    net: Arc<dyn NetStatus>,
}

impl DeviceCounters for NetEntryCounters {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut counters = self.transport.counters();
        counters.extend(self.net.counters());
        counters
    }
}

/// Builds and places every device of `plan` over its backend.
pub fn build(
    plan: &[VirtioSpec],
    mut backends: VirtioBackends,
    placer: &mut Placer<'_>,
) -> Result<(Vec<VirtioWiring>, Vec<DeviceEntry>), MachineError> {
    let mut wirings = Vec::new();
    let mut entries = Vec::new();
    for spec in plan {
        let missing = || MachineError::MissingBackend(spec.id.clone());
        let (wiring, entry) = match spec.kind {
            VirtioKind::Block { disk } => {
                let backend = backends
                    .disks
                    .get_mut(disk)
                    .and_then(Option::take)
                    .ok_or_else(missing)?;
                let device = Block::new(backend.disk, backend.readonly, &disk_serial(disk));
                let (wiring, entry, _) = placer.place(spec, device, backend.describe)?;
                (wiring, entry)
            }
            VirtioKind::Rng => {
                let (source, describe) = backends.entropy.take().ok_or_else(missing)?;
                let (wiring, entry, _) = placer.place(spec, Rng::new(source), describe)?;
                (wiring, entry)
            }
            VirtioKind::Console => {
                let (output, describe) = backends.console.take().ok_or_else(missing)?;
                let (mut wiring, entry, placed) =
                    placer.place(spec, Console::new(output), describe)?;
                wiring.input = Some(console_input(placed));
                (wiring, entry)
            }
            VirtioKind::Vsock => {
                let (listener, config) = backends.vsock.take().ok_or_else(missing)?;
                let describe = format!("uds:{}", config.uds_path.display());
                let connector = Box::new(super::vsock_host::connect_unix_nonblocking);
                let device = Vsock::new(config.guest_cid, listener, config.uds_path, connector)
                    .map_err(MachineError::Vsock)?;
                let (mut wiring, entry, placed) = placer.place(spec, device, describe)?;
                wiring.host_sockets = Some(vsock_sockets(placed));
                (wiring, entry)
            }
            VirtioKind::Net { net } => {
                let backend = backends
                    .nets
                    .get_mut(net)
                    .and_then(Option::take)
                    .ok_or_else(missing)?;
                let describe = backend.describe.clone();
                let (device, mut net_wiring) = net_device(backend)?;
                let (mut wiring, mut entry, placed) = placer.place(spec, device, describe)?;
                net_wiring.status = match placed {
                    Placed::Mmio(transport) => transport,
                    Placed::Pci(transport) => transport,
                };
                entry.device = Arc::new(NetEntryCounters {
                    transport: entry.device,
                    net: net_wiring.status.clone(),
                });
                wiring.net = Some(net_wiring);
                (wiring, entry)
            }
        };
        wirings.push(wiring);
        entries.push(entry);
    }
    Ok((wirings, entries))
}

/// What the kernel command line gets for the devices present:
/// ` virtio_mmio.device=4K@BASE:GSI` each.
pub fn cmdline_additions(wirings: &[VirtioWiring]) -> String {
    wirings
        .iter()
        .filter_map(|wiring| wiring.mmio_window)
        .map(|window| {
            format!(
                " virtio_mmio.device=4K@{:#x}:{}",
                layout::virtio_mmio_slot(window),
                layout::virtio_mmio_gsi(window)
            )
        })
        .collect()
}
