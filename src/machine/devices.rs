//! The devices of a machine, built and placed the same way for a live run and for a
//! replay: only the [`Platform`] (interrupt lines, doorbells), the [`Backends`] and the
//! clocks differ. Each device placed is one entry of the [`Inventory`].

use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;

use crate::bus::{IoBuses, SharedDevice};
use crate::config::Doorbell;
use crate::devices::acpi_pm::{Pm1Control, Pm1Event, PmTimer, ResetControl};
use crate::devices::data_port::DataPort;
use crate::devices::debug_exit::DebugExit;
use crate::devices::fw_cfg::FwCfg;
use crate::devices::i8042::I8042;
use crate::devices::post_code::PostCode;
use crate::devices::rtc::{Clock, Rtc};
use crate::devices::uart::{Uart, UartOptions};
use crate::irq::InterruptLine;
use crate::layout::{self, gsi, ports, MemoryLayout};
use crate::services::{InputService, InputTarget, RtcService, Services};

use super::backends::Backends;
use super::inventory::{
    BusPlacement, DeviceEntry, DeviceKind, Interrupt, Inventory, NoCounters, VirtioSpec,
};
use super::pci::{PciBus, Placing};
use super::platform::Platform;
use super::virtio::{self, Placer, VirtioBackends, VirtioWiring};
use super::MachineError;

/// What to build.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub memory: MemoryLayout,
    pub cpus: u8,
    pub doorbell: Doorbell,
    /// The virtio devices, planned (`inventory::plan_virtio`).
    pub virtio: Vec<VirtioSpec>,
}

/// The clocks the devices read: the RTC's wall clock and the PM timer's monotonic one
/// (recorded live, replayed from the trace).
pub struct Clocks<C: Clock, P: Clock> {
    pub rtc: C,
    pub pm_timer: P,
}

/// The built devices, placed on the buses.
pub struct Devices<C: Clock> {
    pub buses: IoBuses,
    pub services: Services<C>,
    /// The RTC, to report its state at the end.
    pub rtc: Arc<Mutex<Rtc<C>>>,
    /// The virtio devices' doorbells, input and resample fds, for the event loop.
    pub virtio: Vec<VirtioWiring>,
    /// Every device, by id.
    pub inventory: Inventory,
}

/// A device on the port bus: its id, kind, lines and ranges (bus name, port, count).
struct PortDevice {
    id: &'static str,
    kind: DeviceKind,
    ranges: Vec<(&'static str, u16, u16, SharedDevice)>,
    lines: Vec<(u32, Arc<dyn InterruptLine>)>,
    backend: String,
}

impl PortDevice {
    fn place(self, buses: &mut IoBuses, inventory: &mut Inventory) -> Result<(), MachineError> {
        let mut placements = Vec::new();
        for (name, port, count, device) in self.ranges {
            buses.pio.insert(name, port, count, device)?;
            placements.push(BusPlacement::Pio { port, count });
        }
        inventory.add(DeviceEntry {
            id: self.id.into(),
            kind: self.kind,
            placements,
            interrupt: match self.lines.first() {
                Some((gsi, _)) => Interrupt::Line { gsi: *gsi },
                None => Interrupt::None,
            },
            backend: self.backend,
            lines: self.lines.into_iter().map(|(_, line)| line).collect(),
            device: Arc::new(NoCounters),
        });
        Ok(())
    }
}

/// A device with no lines and no backend, in one port range named like its kind.
fn plain(
    id: &'static str,
    kind: DeviceKind,
    port: u16,
    count: u16,
    device: SharedDevice,
) -> PortDevice {
    PortDevice {
        id,
        kind,
        ranges: vec![(kind.name(), port, count, device)],
        lines: Vec::new(),
        backend: String::new(),
    }
}

fn shared(device: impl crate::bus::BusDevice + 'static) -> SharedDevice {
    Arc::new(Mutex::new(device))
}

/// Builds every device of `spec` and places it.
pub fn build<C: Clock + 'static, P: Clock + 'static>(
    spec: &DeviceSpec,
    platform: &dyn Platform,
    backends: Backends,
    clocks: Clocks<C, P>,
    memory: &GuestMemoryMmap,
) -> Result<Devices<C>, MachineError> {
    let mut buses = IoBuses::default();
    let mut inventory = Inventory::default();
    let com1_line = platform.irq_line(gsi::COM1)?;
    let rtc_line = platform.irq_line(gsi::RTC)?;
    let mut rtc = Rtc::new(clocks.rtc);
    rtc.set_memory_size(spec.memory.ram_bytes());
    rtc.connect_interrupt(rtc_line.clone());
    let rtc = Arc::new(Mutex::new(rtc));
    // THR is declared posted with a bounded flush; the machine registers it only while
    // the guest writes it, and never without the bounded drain (`machine/posted.rs`).
    let com1 = Arc::new(Mutex::new(Uart::with_options(
        backends.serial,
        com1_line.clone(),
        UartOptions {
            post_transmit: true,
        },
    )));
    let fw_cfg = FwCfg::new(spec.memory.ram_bytes(), u16::from(spec.cpus));
    let port_devices = [
        PortDevice {
            id: "rtc",
            kind: DeviceKind::Rtc,
            ranges: vec![("rtc", ports::RTC, ports::RTC_COUNT, rtc.clone())],
            lines: vec![(gsi::RTC, rtc_line)],
            backend: "clock".into(),
        },
        PortDevice {
            id: "com1",
            kind: DeviceKind::Uart,
            ranges: vec![("com1", ports::COM1, ports::COM1_COUNT, com1.clone())],
            lines: vec![(gsi::COM1, com1_line)],
            backend: backends.serial_name,
        },
        plain(
            "isa-debug-exit",
            DeviceKind::DebugExit,
            ports::DEBUG_EXIT,
            ports::DEBUG_EXIT_COUNT,
            shared(DebugExit),
        ),
        plain(
            "i8042",
            DeviceKind::I8042,
            ports::I8042,
            ports::I8042_COUNT,
            shared(I8042::default()),
        ),
        plain(
            "post-code",
            DeviceKind::PostCode,
            ports::POST_CODE,
            1,
            shared(PostCode::default()),
        ),
        plain(
            "fw_cfg",
            DeviceKind::FwCfg,
            ports::FW_CFG,
            ports::FW_CFG_COUNT,
            shared(fw_cfg),
        ),
        plain(
            "data-port",
            DeviceKind::DataPort,
            ports::DATA_PORT,
            ports::DATA_PORT_COUNT,
            shared(DataPort::default()),
        ),
        // The ACPI power-management registers the FADT describes; the reset register
        // (0xcf9) sits inside PCI's configuration ports, placed with bus 0 below.
        PortDevice {
            id: "acpi-pm",
            kind: DeviceKind::AcpiPm,
            ranges: vec![
                (
                    "acpi-pm1-event",
                    ports::ACPI_PM1_EVENT,
                    ports::ACPI_PM1_EVENT_COUNT,
                    shared(Pm1Event::default()),
                ),
                (
                    "acpi-pm1-control",
                    ports::ACPI_PM1_CONTROL,
                    ports::ACPI_PM1_CONTROL_COUNT,
                    shared(Pm1Control::default()),
                ),
                (
                    "acpi-pm-timer",
                    ports::ACPI_PM_TIMER,
                    ports::ACPI_PM_TIMER_COUNT,
                    shared(PmTimer::new(clocks.pm_timer)),
                ),
            ],
            lines: Vec::new(),
            backend: "clock".into(),
        },
    ];
    for device in port_devices {
        device.place(&mut buses, &mut inventory)?;
    }
    let mut pci = PciBus::new(&buses, platform);
    let mut placer = Placer {
        placing: Placing {
            memory,
            platform,
            doorbell: spec.doorbell,
        },
        pci: &mut pci,
        buses: &mut buses,
    };
    let virtio_backends = VirtioBackends {
        disks: backends.disks.into_iter().map(Some).collect(),
        entropy: backends
            .entropy
            .map(|source| (source, "urandom".to_string())),
        console: backends
            .console
            .map(|output| (output, backends.console_name)),
    };
    let (wirings, entries) = virtio::build(&spec.virtio, virtio_backends, &mut placer)?;
    pci.finish(&mut buses, ResetControl::default())?;
    inventory.add(DeviceEntry {
        id: "pci-host".into(),
        kind: DeviceKind::PciHost,
        placements: vec![
            BusPlacement::Pio {
                port: ports::PCI_CONFIG,
                count: ports::PCI_CONFIG_COUNT,
            },
            BusPlacement::Mmio {
                base: layout::PCI_ECAM_START,
                size: layout::PCI_ECAM_SIZE,
            },
        ],
        interrupt: Interrupt::None,
        backend: String::new(),
        lines: Vec::new(),
        device: Arc::new(NoCounters),
    });
    entries.into_iter().for_each(|entry| inventory.add(entry));
    let mut inputs = vec![InputService::new(InputTarget::Com1, com1)];
    inputs.extend(wirings.iter().filter_map(|wiring| wiring.input.clone()));
    Ok(Devices {
        buses,
        services: Services {
            rtc: RtcService::new(rtc.clone()),
            doorbells: wirings
                .iter()
                .map(|wiring| wiring.service.clone())
                .collect(),
            inputs,
        },
        rtc,
        virtio: wirings,
        inventory,
    })
}
