//! The device inventory: every device of a machine by id, with its kind, where it sits
//! on the buses, its interrupt, its backend and its counters. `devices::build` makes it
//! in one place, for a live run and a replay alike; the run's report, the replay's
//! effects (and later the API and snapshots) read it.
//!
//! What to build comes first, as data: [`VirtioSpec`]s planned from the configuration
//! (or a trace's description) by [`plan_virtio`]: ids, transports, the trace's device
//! numbers and the virtio-mmio windows.

use std::sync::Arc;

use crate::config::{self, ConfigError, VirtioTransport};
use crate::irq::InterruptLine;
use crate::layout::gsi;

/// What kind of device an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Rtc,
    Uart,
    DebugExit,
    I8042,
    PostCode,
    FwCfg,
    DataPort,
    AcpiPm,
    PciHost,
    VirtioBlock,
    VirtioRng,
    VirtioConsole,
    VirtioVsock,
    VirtioNet,
}

impl DeviceKind {
    /// The kind's name, as reports print it (and the bus names a virtio device's slot).
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Rtc => "rtc",
            DeviceKind::Uart => "uart",
            DeviceKind::DebugExit => "isa-debug-exit",
            DeviceKind::I8042 => "i8042",
            DeviceKind::PostCode => "post-code",
            DeviceKind::FwCfg => "fw_cfg",
            DeviceKind::DataPort => "data-port",
            DeviceKind::AcpiPm => "acpi-pm",
            DeviceKind::PciHost => "pci-host",
            DeviceKind::VirtioBlock => "virtio-blk",
            DeviceKind::VirtioRng => "virtio-rng",
            DeviceKind::VirtioConsole => "virtio-console",
            DeviceKind::VirtioVsock => "virtio-vsock",
            DeviceKind::VirtioNet => "virtio-net",
        }
    }

    pub fn is_virtio(self) -> bool {
        matches!(
            self,
            DeviceKind::VirtioBlock
                | DeviceKind::VirtioRng
                | DeviceKind::VirtioConsole
                | DeviceKind::VirtioVsock
                | DeviceKind::VirtioNet
        )
    }
}

/// Where a device answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusPlacement {
    Pio {
        port: u16,
        count: u16,
    },
    Mmio {
        base: u64,
        size: u64,
    },
    /// A function on PCI bus 0 (function 0 of `device`), with a memory BAR of `bar_size`
    /// bytes that the firmware's assignment or the guest places.
    Pci {
        device: u8,
        bar_size: u64,
    },
}

/// How a device interrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    None,
    /// An edge-triggered line.
    Line {
        gsi: u32,
    },
    /// PCI: INTx on a level-triggered GSI, or MSI-X vectors.
    Pci {
        intx_gsi: u32,
        msix_vectors: u16,
    },
}

/// Counters a device keeps, by name ("doorbells", "notifications", ...): the one way
/// reports read a device's activity.
pub trait DeviceCounters: Send + Sync {
    fn counters(&self) -> Vec<(&'static str, u64)>;
}

/// A device that counts nothing of its own.
pub struct NoCounters;

impl DeviceCounters for NoCounters {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// One device of the machine.
pub struct DeviceEntry {
    /// Firecracker-like: "rtc", "com1", "blk0", "rng0", "console0", or a drive's own id.
    pub id: String,
    pub kind: DeviceKind,
    pub placements: Vec<BusPlacement>,
    pub interrupt: Interrupt,
    /// What the device reads or writes on the host ("file:PATH", "memory", "stdio", ...).
    pub backend: String,
    /// The lines it raises (a PCI function's MSI-X vectors and its INTx).
    pub lines: Vec<Arc<dyn InterruptLine>>,
    pub device: Arc<dyn DeviceCounters>,
}

impl DeviceEntry {
    /// Its counters: the device's own, then "interrupts", the edges and messages its
    /// lines carried.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut counters = self.device.counters();
        counters.push(("interrupts", self.interrupts()));
        counters
    }

    /// Interrupts it raised.
    pub fn interrupts(&self) -> u64 {
        self.lines.iter().map(|line| line.pulses()).sum()
    }

    /// The counter called `name` (0 if it keeps none).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters()
            .into_iter()
            .find(|(counter, _)| *counter == name)
            .map_or(0, |(_, value)| value)
    }
}

/// Every device of a machine, in the order they were built.
#[derive(Default)]
pub struct Inventory {
    entries: Vec<DeviceEntry>,
}

impl Inventory {
    pub fn add(&mut self, entry: DeviceEntry) {
        self.entries.push(entry);
    }

    pub fn entries(&self) -> &[DeviceEntry] {
        &self.entries
    }

    /// The device with this id.
    pub fn get(&self, id: &str) -> Option<&DeviceEntry> {
        self.entries.iter().find(|entry| entry.id == id)
    }

    /// The sum of counter `name` over every device.
    pub fn total(&self, name: &str) -> u64 {
        self.entries.iter().map(|entry| entry.counter(name)).sum()
    }
}

/// The ids of the devices every machine has, which a drive may not take.
pub const FIXED_IDS: &[&str] = &[
    "rtc",
    "com1",
    "isa-debug-exit",
    "i8042",
    "post-code",
    "fw_cfg",
    "data-port",
    "acpi-pm",
    "pci-host",
    "rng0",
    "console0",
];

/// The virtio-console's id.
pub const CONSOLE_ID: &str = "console0";

/// A virtio device to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioSpec {
    pub id: String,
    pub kind: VirtioKind,
    pub transport: VirtioTransport,
    /// The number a trace's doorbell records name it by: the first disk 0, the entropy
    /// device 1, the console 2, further disks 3 on (version-1 traces keep their meaning).
    pub slot: u8,
    /// On virtio-mmio: its window (`layout::virtio_mmio_slot`) and line
    /// (`layout::virtio_mmio_gsi`).
    pub mmio_window: Option<u8>,
}

/// What a virtio device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioKind {
    /// The `disk`th disk of the backends.
    Block {
        disk: usize,
    },
    Rng,
    Console,
    Vsock,
    /// The `net`th `--net` device.
    Net {
        net: usize,
    },
}

/// The trace slot of the vsock device (no trace describes it; a slot of its own keeps
/// its doorbells apart from the others').
pub const VSOCK_SLOT: u8 = 200;

impl VirtioKind {
    pub fn device_kind(self) -> DeviceKind {
        match self {
            VirtioKind::Block { .. } => DeviceKind::VirtioBlock,
            VirtioKind::Rng => DeviceKind::VirtioRng,
            VirtioKind::Console => DeviceKind::VirtioConsole,
            VirtioKind::Vsock => DeviceKind::VirtioVsock,
            VirtioKind::Net { .. } => DeviceKind::VirtioNet,
        }
    }
}

/// The virtio devices a machine asks for, before they are planned.
#[derive(Debug, Clone, Default)]
pub struct VirtioRequest {
    /// Each disk's id (None: `blkN`) and transport (None: the default).
    pub disks: Vec<(Option<String>, Option<VirtioTransport>)>,
    pub rng: Option<VirtioTransport>,
    pub console: Option<VirtioTransport>,
    /// The vsock device's id and transport.
    pub vsock: Option<(String, VirtioTransport)>,
    /// How many virtio-net devices (ids `netN`, on the default transport).
    pub nets: usize,
    /// `--virtio-transport`.
    pub default: VirtioTransport,
}

/// The trace's device number of the first virtio-net device (the next ones follow).
pub const NET_SLOT_BASE: u8 = 0x80;

/// The id of the `net`th virtio-net device.
pub fn net_id(net: usize) -> String {
    format!("net{net}")
}

/// virtio-mmio windows with a line of their own (GSIs 5 to 7).
const MMIO_WINDOWS: u8 = gsi::VIRTIO_MMIO_COUNT as u8;

/// Plans the virtio devices: disks, then the entropy device, then the console, then the
/// network devices (the PCI device numbers follow this order). On virtio-mmio the first disk, the entropy device
/// and the console keep windows 0, 1 and 2 (the test guests look there); another disk
/// takes the first window nothing else takes.
pub fn plan_virtio(request: &VirtioRequest) -> Result<Vec<VirtioSpec>, ConfigError> {
    let disks: Vec<config::DiskConfig> = request
        .disks
        .iter()
        .map(|(id, _)| config::DiskConfig {
            id: id.clone(),
            ..config::DiskConfig::default()
        })
        .collect();
    let mut reserved: Vec<String> = FIXED_IDS.iter().map(|id| id.to_string()).collect();
    reserved.extend((0..request.nets).map(net_id));
    let reserved: Vec<&str> = reserved.iter().map(String::as_str).collect();
    let ids = config::disk_ids(&disks, &reserved)?;
    let mut specs = Vec::new();
    for (disk, (id, (_, transport))) in ids.into_iter().zip(&request.disks).enumerate() {
        let slot = if disk == 0 { 0 } else { 2 + disk as u8 };
        let kind = VirtioKind::Block { disk };
        specs.push((id, kind, transport.unwrap_or(request.default), slot));
    }
    if let Some(transport) = request.rng {
        specs.push(("rng0".into(), VirtioKind::Rng, transport, 1));
    }
    if let Some(transport) = request.console {
        specs.push((CONSOLE_ID.into(), VirtioKind::Console, transport, 2));
    }
    if let Some((id, transport)) = &request.vsock {
        if specs.iter().any(|(taken, ..)| taken == id) || FIXED_IDS.contains(&id.as_str()) {
            return Err(ConfigError::DuplicateDeviceId(id.clone()));
        }
        specs.push((id.clone(), VirtioKind::Vsock, *transport, VSOCK_SLOT));
    }
    for net in 0..request.nets {
        let slot = u8::try_from(net)
            .ok()
            .and_then(|net| NET_SLOT_BASE.checked_add(net))
            .ok_or(ConfigError::TooManyMmioDevices(MMIO_WINDOWS))?;
        specs.push((net_id(net), VirtioKind::Net { net }, request.default, slot));
    }
    let on_mmio = |(_, _, transport, _): &&(String, VirtioKind, VirtioTransport, u8)| {
        *transport == VirtioTransport::Mmio
    };
    // The windows the fixed devices keep, then the rest in order.
    let mut taken: Vec<u8> = specs
        .iter()
        .filter(on_mmio)
        .filter_map(|(_, _, _, slot)| (*slot < MMIO_WINDOWS).then_some(*slot))
        .collect();
    let mut planned = Vec::new();
    for (id, kind, transport, slot) in specs {
        let mmio_window = match transport {
            VirtioTransport::Pci => None,
            VirtioTransport::Mmio if slot < MMIO_WINDOWS => Some(slot),
            VirtioTransport::Mmio => {
                let free = (0..MMIO_WINDOWS)
                    .find(|window| !taken.contains(window))
                    .ok_or(ConfigError::TooManyMmioDevices(MMIO_WINDOWS))?;
                taken.push(free);
                Some(free)
            }
        };
        planned.push(VirtioSpec {
            id,
            kind,
            transport,
            slot,
            mmio_window,
        });
    }
    Ok(planned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(disks: &[Option<VirtioTransport>], default: VirtioTransport) -> VirtioRequest {
        VirtioRequest {
            disks: disks.iter().map(|t| (None, *t)).collect(),
            rng: Some(default),
            console: None,
            vsock: None,
            nets: 0,
            default,
        }
    }

    fn summary(specs: &[VirtioSpec]) -> Vec<(&str, u8, Option<u8>)> {
        specs
            .iter()
            .map(|spec| (spec.id.as_str(), spec.slot, spec.mmio_window))
            .collect()
    }

    #[test]
    fn the_fixed_devices_keep_their_windows_and_slots() {
        let specs = plan_virtio(&request(&[None], VirtioTransport::Mmio)).unwrap();
        assert_eq!(
            summary(&specs),
            [("blk0", 0, Some(0)), ("rng0", 1, Some(1))]
        );
        let specs = plan_virtio(&request(&[None], VirtioTransport::Pci)).unwrap();
        assert_eq!(summary(&specs), [("blk0", 0, None), ("rng0", 1, None)]);
    }

    #[test]
    fn a_second_disk_takes_a_free_window_and_its_own_slot() {
        let mmio = Some(VirtioTransport::Mmio);
        let specs = plan_virtio(&request(&[None, mmio], VirtioTransport::Pci)).unwrap();
        assert_eq!(
            summary(&specs),
            [("blk0", 0, None), ("blk1", 3, Some(0)), ("rng0", 1, None)]
        );
        assert_eq!(specs[1].transport, VirtioTransport::Mmio);
        let specs = plan_virtio(&request(&[None, None], VirtioTransport::Mmio)).unwrap();
        assert_eq!(
            summary(&specs),
            [
                ("blk0", 0, Some(0)),
                ("blk1", 3, Some(2)),
                ("rng0", 1, Some(1))
            ]
        );
    }

    #[test]
    fn windows_run_out_with_a_clear_error() {
        let mut asked = request(&[None, None], VirtioTransport::Mmio);
        asked.console = Some(VirtioTransport::Mmio);
        assert_eq!(plan_virtio(&asked), Err(ConfigError::TooManyMmioDevices(3)));
        asked.disks[1].1 = Some(VirtioTransport::Pci);
        assert!(plan_virtio(&asked).is_ok());
    }

    #[test]
    fn vsock_takes_a_free_window_and_an_id_of_its_own() {
        let mut asked = request(&[None], VirtioTransport::Mmio);
        asked.vsock = Some(("vsock0".into(), VirtioTransport::Mmio));
        let specs = plan_virtio(&asked).unwrap();
        assert_eq!(
            summary(&specs),
            [
                ("blk0", 0, Some(0)),
                ("rng0", 1, Some(1)),
                ("vsock0", VSOCK_SLOT, Some(2))
            ]
        );
        assert_eq!(specs[2].kind.device_kind().name(), "virtio-vsock");
        asked.vsock = Some(("blk0".into(), VirtioTransport::Pci));
        assert_eq!(
            plan_virtio(&asked),
            Err(ConfigError::DuplicateDeviceId("blk0".into()))
        );
    }

    #[test]
    fn network_devices_come_last_with_their_own_slots() {
        let mut asked = request(&[None], VirtioTransport::Mmio);
        asked.nets = 1;
        let specs = plan_virtio(&asked).unwrap();
        assert_eq!(
            summary(&specs),
            [
                ("blk0", 0, Some(0)),
                ("rng0", 1, Some(1)),
                ("net0", NET_SLOT_BASE, Some(2))
            ]
        );
        assert_eq!(specs[2].kind, VirtioKind::Net { net: 0 });
        asked.disks[0].0 = Some("net0".into());
        assert_eq!(
            plan_virtio(&asked),
            Err(ConfigError::DuplicateDeviceId("net0".into()))
        );
    }

    #[test]
    fn a_disk_may_not_take_another_devices_id() {
        let mut asked = request(&[None], VirtioTransport::Pci);
        asked.disks[0].0 = Some("rng0".into());
        assert_eq!(
            plan_virtio(&asked),
            Err(ConfigError::DuplicateDeviceId("rng0".into()))
        );
    }
}
