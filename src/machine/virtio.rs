//! The virtio-mmio devices: fixed slots in the 32-bit hole (`layout::virtio_mmio_slot`),
//! each with its interrupt line (`layout::virtio_mmio_gsi`) and its doorbells.
//!
//! | slot | device  | MMIO base   | GSI | PIO doorbell |
//! |------|---------|-------------|-----|--------------|
//! | 0    | block   | 0xc0000000  | 5   | 0xb00        |
//! | 1    | entropy | 0xc0001000  | 6   | 0xb04        |
//! | 2    | console | 0xc0002000  | 7   | 0xb08        |
//!
//! Linux finds them through `virtio_mmio.device=4K@BASE:GSI` on its command line, which
//! hushvm appends for each device present, or through the ACPI tables.

use std::io::Read;
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{Access, AddressSpace, BusDevice, IoBuses, StopRequest};
use crate::config::Doorbell;
use crate::devices::virtio::block::{Block, DiskBackend};
use crate::devices::virtio::console::Console;
use crate::devices::virtio::mmio::{MmioTransport, MMIO_SIZE, QUEUE_NOTIFY};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::{OnBus, QueueNotify, VirtioDevice};
use crate::layout::{self, ports::VIRTIO_PIO_DOORBELL_COUNT};
use crate::services::{DoorbellService, InputService, InputTarget, LevelTriggered};

use super::backends::Output;
use super::platform::Platform;
use super::MachineError;

/// The block device's slot.
pub const BLOCK_SLOT: u8 = 0;
/// The entropy device's slot.
pub const RNG_SLOT: u8 = 1;
/// The console's slot.
pub const CONSOLE_SLOT: u8 = 2;
/// The serial number virtio-blk reports (VIRTIO_BLK_T_GET_ID).
pub(super) const DISK_ID: &str = "hushvm-disk0";

/// A placed device, as the rest of the machine sees it.
pub struct VirtioSlot {
    pub name: &'static str,
    pub index: u8,
    /// Its doorbell work, for the event loop (live) or the trace (replay).
    pub service: DoorbellService,
    /// Doorbell eventfds for the event loop, each with the queue it names (`None`: any).
    pub doorbells: Vec<(EventFd, Option<u32>)>,
    /// Doorbells that found work, read at the end of the run.
    pub notifications: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// Doorbells rung, work or none (a replay's advisor watches it).
    pub doorbells_rung: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// Interrupts it raised (edges on its line, or MSI-X messages and INTx edges).
    pub interrupts: Counter,
    /// Where host input goes, for the console.
    pub input: Option<InputService>,
    /// On virtio-mmio (its window and line are `layout::virtio_mmio_slot/gsi`).
    pub on_mmio: bool,
    /// A level-triggered line's resample fd, and the device to ask (virtio-pci INTx).
    pub resample: Option<(EventFd, Arc<Mutex<dyn LevelTriggered>>)>,
}

/// A count read at the end of a run.
pub type Counter = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The host side of the virtio devices; a device is present when its backend is.
pub struct VirtioBackends {
    pub disk: Option<(Box<dyn DiskBackend>, bool)>,
    pub entropy: Option<Box<dyn Read + Send>>,
    pub console: Option<Output>,
}

/// A transport as the bus, the doorbells and the input service share it.
type SharedTransport<D> = Arc<MmioTransport<D>>;

impl VirtioBackends {
    /// No devices.
    pub fn none() -> Self {
        Self {
            disk: None,
            entropy: None,
            console: None,
        }
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

/// Where one device goes and how its doorbells arrive.
struct Placement<'a> {
    memory: &'a GuestMemoryMmap,
    platform: &'a dyn Platform,
    doorbell: Doorbell,
}

impl Placement<'_> {
    fn place<D: VirtioDevice + 'static>(
        &self,
        slot: u8,
        name: &'static str,
        device: D,
        buses: &mut IoBuses,
    ) -> Result<(VirtioSlot, SharedTransport<D>), MachineError> {
        let base = layout::virtio_mmio_slot(slot);
        let queues = device.queue_max_sizes().len() as u32;
        let interrupt = self.platform.irq_line(layout::virtio_mmio_gsi(slot))?;
        let transport = Arc::new(MmioTransport::new(
            device,
            self.memory.clone(),
            interrupt.clone(),
        ));
        buses.mmio.insert(
            name,
            base,
            MMIO_SIZE,
            Arc::new(Mutex::new(OnBus(transport.clone()))),
        )?;
        let port = layout::virtio_pio_doorbell(slot);
        let notify: Arc<dyn QueueNotify> = transport.clone();
        buses.pio.insert(
            name,
            port,
            VIRTIO_PIO_DOORBELL_COUNT,
            Arc::new(Mutex::new(PioDoorbell(notify.clone()))),
        )?;
        let doorbells = self.doorbells(base + QUEUE_NOTIFY, port, queues)?;
        let (counter, rung) = (transport.clone(), transport.clone());
        let slot = VirtioSlot {
            name,
            index: slot,
            service: DoorbellService::new(slot, notify),
            doorbells,
            notifications: Arc::new(move || counter.notifications()),
            doorbells_rung: Arc::new(move || rung.doorbells()),
            interrupts: Arc::new(move || interrupt.pulses()),
            input: None,
            on_mmio: true,
            resample: None,
        };
        Ok((slot, transport))
    }

    /// The ioeventfds for a device whose QueueNotify is at `notify` and whose PIO
    /// doorbell is `port`.
    fn doorbells(
        &self,
        notify: u64,
        port: u16,
        queues: u32,
    ) -> Result<Vec<(EventFd, Option<u32>)>, MachineError> {
        let platform = self.platform;
        let wanted: Vec<(AddressSpace, u64, Option<u32>)> = match self.doorbell {
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

/// Places the devices whose backends are present, each in its fixed slot.
pub fn build(
    backends: VirtioBackends,
    doorbell: Doorbell,
    memory: &GuestMemoryMmap,
    platform: &dyn Platform,
    buses: &mut IoBuses,
) -> Result<Vec<VirtioSlot>, MachineError> {
    let placement = Placement {
        memory,
        platform,
        doorbell,
    };
    let mut slots = Vec::new();
    if let Some((disk, readonly)) = backends.disk {
        let device = Block::new(disk, readonly, DISK_ID);
        slots.push(placement.place(BLOCK_SLOT, "virtio-blk", device, buses)?.0);
    }
    if let Some(entropy) = backends.entropy {
        let device = Rng::new(entropy);
        slots.push(placement.place(RNG_SLOT, "virtio-rng", device, buses)?.0);
    }
    if let Some(output) = backends.console {
        let device = Console::new(output);
        let (mut slot, transport) =
            placement.place(CONSOLE_SLOT, "virtio-console", device, buses)?;
        let input = Arc::new(Mutex::new(OnBus(transport)));
        slot.input = Some(InputService::new(InputTarget::VirtioConsole, input));
        slots.push(slot);
    }
    Ok(slots)
}

/// What the kernel command line gets for the devices present:
/// ` virtio_mmio.device=4K@BASE:GSI` each.
pub fn cmdline_additions(slots: &[VirtioSlot]) -> String {
    slots
        .iter()
        .filter(|slot| slot.on_mmio)
        .map(|slot| {
            format!(
                " virtio_mmio.device=4K@{:#x}:{}",
                layout::virtio_mmio_slot(slot.index),
                layout::virtio_mmio_gsi(slot.index)
            )
        })
        .collect()
}
