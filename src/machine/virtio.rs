//! The virtio-mmio devices: fixed slots above RAM, each with its interrupt line and its
//! doorbells.
//!
//! | slot | device  | MMIO base   | GSI | PIO doorbell |
//! |------|---------|-------------|-----|--------------|
//! | 0    | block   | 0xc0000000  | 5   | 0xb00        |
//! | 1    | entropy | 0xc0001000  | 6   | 0xb04        |
//! | 2    | console | 0xc0002000  | 7   | 0xb08        |
//!
//! Linux finds them through `virtio_mmio.device=4K@BASE:GSI` on its command line, which
//! hushvm appends for each device present.

use crate::sync::LockExt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{Access, AddressSpace, BusDevice, IoBuses, StopRequest};
use crate::config::{DiskConfig, Doorbell};
use crate::devices::virtio::block::{Block, DiskBackend, FileDisk, SECTOR};
use crate::devices::virtio::console::Console;
use crate::devices::virtio::mmio::{MmioTransport, QueueNotify, MMIO_SIZE, QUEUE_NOTIFY};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::VirtioDevice;
use crate::event_loop::InputSink;
use crate::irq::{CountingLine, InterruptLine};
use crate::kvm::Vm;

use super::MachineError;

use crate::layout::{self, ports::VIRTIO_PIO_DOORBELL_COUNT as PIO_DOORBELL_PORTS};

/// MMIO base of slot 0.
pub const VIRTIO_BASE: u64 = layout::VIRTIO_MMIO_BASE;

/// What placing a device needs from the hypervisor: interrupt lines and doorbells.
pub trait Platform {
    /// The line for `gsi`.
    fn irq_line(&self, gsi: u32) -> Result<Arc<dyn InterruptLine>, MachineError>;
    /// An ioeventfd for a doorbell, if this platform has them.
    fn doorbell(
        &self,
        space: AddressSpace,
        addr: u64,
        datamatch: Option<u32>,
    ) -> Result<Option<EventFd>, MachineError>;
}

impl Platform for Vm {
    fn irq_line(&self, gsi: u32) -> Result<Arc<dyn InterruptLine>, MachineError> {
        Ok(Arc::new(Vm::irq_line(self, gsi)?))
    }

    fn doorbell(
        &self,
        space: AddressSpace,
        addr: u64,
        datamatch: Option<u32>,
    ) -> Result<Option<EventFd>, MachineError> {
        Ok(Some(Vm::doorbell(self, space, addr, datamatch)?))
    }
}

/// No hypervisor (replay): lines that count, and no doorbells but the MMIO ones.
pub struct Unplugged;

impl Platform for Unplugged {
    fn irq_line(&self, _gsi: u32) -> Result<Arc<dyn InterruptLine>, MachineError> {
        Ok(Arc::new(CountingLine::default()))
    }

    fn doorbell(
        &self,
        _: AddressSpace,
        _: u64,
        _: Option<u32>,
    ) -> Result<Option<EventFd>, MachineError> {
        Ok(None)
    }
}

/// A transport as the machine shares it between the bus and the event loop.
type SharedTransport<D> = Arc<Mutex<MmioTransport<D>>>;

/// A placed device, as the rest of the machine sees it.
pub struct Slot {
    /// Its slot number (0 block, 1 entropy, 2 console).
    pub index: u8,
    pub notify: Arc<Mutex<dyn QueueNotify>>,
    /// Doorbell eventfds for the event loop, each with the queue it names (`None`: any).
    pub doorbells: Vec<(EventFd, Option<u32>)>,
    /// Doorbells that found work, read at the end of the run.
    pub notifications: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// The line, to count its interrupts.
    pub interrupt: Arc<dyn InterruptLine>,
    /// Where host input goes, for the console.
    pub input: Option<Arc<Mutex<dyn InputSink>>>,
}

/// What the machine asks for.
pub struct VirtioConfig<'a> {
    pub disk: Option<&'a DiskConfig>,
    pub rng: bool,
    pub console: Option<Box<dyn Write + Send>>,
    pub doorbell: Doorbell,
}

/// A PIO doorbell: a write of a queue index notifies the device (when no ioeventfd took
/// the write first).
struct PioDoorbell(Arc<Mutex<dyn QueueNotify>>);

impl BusDevice for PioDoorbell {
    fn access(&mut self, _offset: u64, access: Access<'_>) -> Option<StopRequest> {
        match access {
            Access::Read(data) => data.fill(0),
            Access::Write(_) => self.0.locked().notify(Some(access.write_value() as u32)),
        }
        None
    }
}

/// Opens a disk image, with the errors a user can act on.
pub fn open_disk(disk: &DiskConfig) -> Result<FileDisk, MachineError> {
    let error = |reason: String| MachineError::Disk {
        path: disk.path.clone(),
        reason,
    };
    let file: File = OpenOptions::new()
        .read(true)
        .write(!disk.readonly)
        .open(&disk.path)
        .map_err(|e| match (e.kind(), e.raw_os_error()) {
            (io::ErrorKind::NotFound, _) => error("no such file".into()),
            (_, Some(libc::EACCES | libc::EPERM | libc::EROFS | libc::ETXTBSY))
                if !disk.readonly =>
            {
                error(format!(
                    "not writable ({e}; add ,readonly to use it read-only)"
                ))
            }
            _ => error(e.to_string()),
        })?;
    let metadata = file.metadata().map_err(|e| error(e.to_string()))?;
    if !metadata.is_file() {
        return Err(error("not a regular file".into()));
    }
    let size = metadata.len();
    if size == 0 || size % SECTOR != 0 {
        return Err(error(format!(
            "its size, {size} bytes, is not a positive multiple of 512"
        )));
    }
    Ok(FileDisk::new(file, size))
}

fn place<D: VirtioDevice + 'static>(
    slot: u8,
    name: &'static str,
    device: D,
    memory: &GuestMemoryMmap,
    platform: &dyn Platform,
    buses: &mut IoBuses,
    doorbell: Doorbell,
) -> Result<(Slot, SharedTransport<D>), MachineError> {
    let base = layout::virtio_mmio_slot(slot);
    let gsi = layout::virtio_mmio_gsi(slot);
    let queues = device.queue_max_sizes().len() as u32;
    let interrupt = platform.irq_line(gsi)?;
    let transport = Arc::new(Mutex::new(MmioTransport::new(
        device,
        memory.clone(),
        interrupt.clone(),
    )));
    buses
        .mmio
        .insert(name, base, MMIO_SIZE, transport.clone())?;
    let port = layout::virtio_pio_doorbell(slot);
    let notify: Arc<Mutex<dyn QueueNotify>> = transport.clone();
    buses.pio.insert(
        name,
        port,
        PIO_DOORBELL_PORTS,
        Arc::new(Mutex::new(PioDoorbell(notify.clone()))),
    )?;
    let doorbells = match doorbell {
        Doorbell::Exit => Vec::new(),
        Doorbell::Len0 => vec![(
            platform.doorbell(AddressSpace::Mmio, base + QUEUE_NOTIFY, None)?,
            None,
        )],
        Doorbell::Len4 => (0..queues)
            .map(|q| {
                Ok((
                    platform.doorbell(AddressSpace::Mmio, base + QUEUE_NOTIFY, Some(q))?,
                    Some(q),
                ))
            })
            .collect::<Result<_, MachineError>>()?,
        Doorbell::Pio => vec![(
            platform.doorbell(AddressSpace::Pio, u64::from(port), None)?,
            None,
        )],
    };
    let doorbells = doorbells
        .into_iter()
        .filter_map(|(event, queue)| event.map(|event| (event, queue)))
        .collect();
    let counter = transport.clone();
    let slot = Slot {
        index: slot,
        notify,
        doorbells,
        notifications: Arc::new(move || counter.locked().notifications()),
        interrupt,
        input: None,
    };
    Ok((slot, transport))
}

/// The slots that `disk`, `rng` and `console` occupy.
fn slots_present(disk: bool, rng: bool, console: bool) -> impl Iterator<Item = u8> {
    [(0, disk), (1, rng), (2, console)]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(slot, _)| slot)
}

/// What the kernel command line gets for the devices: ` virtio_mmio.device=4K@BASE:GSI`
/// each.
pub fn cmdline_additions(disk: bool, rng: bool, console: bool) -> String {
    slots_present(disk, rng, console)
        .map(|slot| {
            format!(
                " virtio_mmio.device=4K@{:#x}:{}",
                layout::virtio_mmio_slot(slot),
                layout::virtio_mmio_gsi(slot)
            )
        })
        .collect()
}

/// The devices to place, each in its fixed slot.
struct DeviceSet<B: DiskBackend, R: Read + Send, W: Write + Send> {
    block: Option<Block<B>>,
    rng: Option<Rng<R>>,
    console: Option<Console<W>>,
}

fn place_all<B, R, W>(
    devices: DeviceSet<B, R, W>,
    memory: &GuestMemoryMmap,
    platform: &dyn Platform,
    buses: &mut IoBuses,
    doorbell: Doorbell,
) -> Result<Vec<Slot>, MachineError>
where
    B: DiskBackend + 'static,
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let mut slots = Vec::new();
    if let Some(device) = devices.block {
        slots.push(place(0, "virtio-blk", device, memory, platform, buses, doorbell)?.0);
    }
    if let Some(device) = devices.rng {
        slots.push(place(1, "virtio-rng", device, memory, platform, buses, doorbell)?.0);
    }
    if let Some(device) = devices.console {
        let (mut slot, transport) = place(
            2,
            "virtio-console",
            device,
            memory,
            platform,
            buses,
            doorbell,
        )?;
        slot.input = Some(transport);
        slots.push(slot);
    }
    Ok(slots)
}

/// Places the configured devices.
pub fn build(
    config: VirtioConfig<'_>,
    memory: &GuestMemoryMmap,
    platform: &dyn Platform,
    buses: &mut IoBuses,
) -> Result<Vec<Slot>, MachineError> {
    let block = match config.disk {
        Some(disk) => Some(Block::new(open_disk(disk)?, disk.readonly, "hushvm-disk0")),
        None => None,
    };
    let rng = match config.rng {
        true => Some(Rng::new(
            File::open("/dev/urandom").map_err(MachineError::Entropy)?,
        )),
        false => None,
    };
    let devices = DeviceSet {
        block,
        rng,
        console: config.console.map(Console::new),
    };
    place_all(devices, memory, platform, buses, config.doorbell)
}

/// The devices of a traced machine, for replay: an in-memory disk of the traced size, an
/// entropy source of zeros, a console that discards output; no doorbell fds.
pub fn build_for_replay(
    disk_bytes: u64,
    rng: bool,
    console: bool,
    memory: &GuestMemoryMmap,
    buses: &mut IoBuses,
) -> Result<Vec<Slot>, MachineError> {
    let disk = vec![0u8; usize::try_from(disk_bytes).unwrap_or(0)];
    let devices = DeviceSet {
        block: (disk_bytes > 0).then(|| Block::new(disk, false, "hushvm-disk0")),
        rng: rng.then(|| Rng::new(io::repeat(0))),
        console: console.then(|| Console::new(io::sink())),
    };
    place_all(devices, memory, &Unplugged, buses, Doorbell::Exit)
}
