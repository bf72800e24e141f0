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
use crate::devices::persist::{DynPersist, SavedState, StateError};
use crate::devices::post_code::PostCode;
use crate::devices::rtc::{Clock, Rtc};
use crate::devices::uart::{Uart, UartOptions};
use crate::irq::InterruptLine;
use crate::layout::{self, gsi, ports, MemoryLayout};
use crate::services::{InputService, InputTarget, RtcService, Services};
use crate::sync::LockExt;

use super::backends::{Backends, Output};
use super::inventory::{
    BusPlacement, DeviceCounters, DeviceEntry, DeviceKind, Interrupt, Inventory, NoCounters,
    VirtioSpec,
};
use super::pci_bus::{PciBus, Placing};
use super::platform::Platform;
use super::virtio_placement::{self, Placer, VirtioBackends, VirtioWiring};
use super::MachineError;

/// What to build.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub memory: MemoryLayout,
    pub cpus: u8,
    pub doorbell: Doorbell,
    /// Offer VIRTIO_RING_F_EVENT_IDX (`Cures::event_idx`).
    pub event_idx: bool,
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
    /// COM1, whose held output the event loop resumes when its destination has room.
    pub com1: Arc<Mutex<Com1>>,
    /// The virtio devices' doorbells, input and resample fds, for the event loop.
    pub virtio: Vec<VirtioWiring>,
    /// Every device, by id.
    pub inventory: Inventory,
    /// The saved state of each device, by id (`acpi-pm/...` for its parts), for
    /// snapshots: the port devices, PCI's host bridge and configuration ports, then the
    /// virtio devices.
    pub states: DeviceStates,
}

/// Device state handles by id, in build order.
pub type DeviceStates = Vec<(String, Arc<dyn DeviceStateHandle>)>;

/// A device's saved state, reached through its lock.
pub trait DeviceStateHandle: Send + Sync {
    fn save(&self) -> Result<SavedState, StateError>;
    /// Restores the device; on an error it is unchanged.
    fn restore(&self, saved: &SavedState) -> Result<(), StateError>;
}

impl<T: DynPersist + Send> DeviceStateHandle for Mutex<T> {
    fn save(&self) -> Result<SavedState, StateError> {
        self.locked().save_saved()
    }

    fn restore(&self, saved: &SavedState) -> Result<(), StateError> {
        self.locked().restore_saved(saved)
    }
}

/// COM1 as the machine builds it: a 16550A writing to the serial destination.
pub type Com1 = Uart<Output>;

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

fn shared<T>(device: T) -> Arc<Mutex<T>> {
    Arc::new(Mutex::new(device))
}

/// The devices on the port bus: the RTC and COM1 (`devices` and their `lines`, in that
/// order), the other PC devices, and the ACPI power-management registers; and the saved
/// state handles of those it makes.
fn port_devices<P: Clock + 'static>(
    spec: &DeviceSpec,
    [rtc, com1]: [SharedDevice; 2],
    [(rtc_gsi, rtc_line), (com1_gsi, com1_line)]: [(u32, Arc<dyn InterruptLine>); 2],
    serial_name: String,
    pm_clock: P,
) -> (Vec<PortDevice>, DeviceStates) {
    let fw_cfg = shared(FwCfg::new(spec.memory.ram_bytes(), u16::from(spec.cpus)));
    let (debug_exit, i8042, post_code) = (
        shared(DebugExit),
        shared(I8042::default()),
        shared(PostCode::default()),
    );
    let data_port = shared(DataPort::default());
    let (pm1_event, pm1_control) = (shared(Pm1Event::default()), shared(Pm1Control::default()));
    let pm_timer = shared(PmTimer::new(pm_clock));
    let states: DeviceStates = vec![
        ("isa-debug-exit".into(), debug_exit.clone()),
        ("i8042".into(), i8042.clone()),
        ("post-code".into(), post_code.clone()),
        ("fw_cfg".into(), fw_cfg.clone()),
        ("data-port".into(), data_port.clone()),
        ("acpi-pm/pm1-event".into(), pm1_event.clone()),
        ("acpi-pm/pm1-control".into(), pm1_control.clone()),
        ("acpi-pm/pm-timer".into(), pm_timer.clone()),
    ];
    let devices = vec![
        PortDevice {
            id: "rtc",
            kind: DeviceKind::Rtc,
            ranges: vec![("rtc", ports::RTC, ports::RTC_COUNT, rtc)],
            lines: vec![(rtc_gsi, rtc_line)],
            backend: "clock".into(),
        },
        PortDevice {
            id: "com1",
            kind: DeviceKind::Uart,
            ranges: vec![("com1", ports::COM1, ports::COM1_COUNT, com1)],
            lines: vec![(com1_gsi, com1_line)],
            backend: serial_name,
        },
        plain(
            "isa-debug-exit",
            DeviceKind::DebugExit,
            ports::DEBUG_EXIT,
            ports::DEBUG_EXIT_COUNT,
            debug_exit,
        ),
        plain(
            "i8042",
            DeviceKind::I8042,
            ports::I8042,
            ports::I8042_COUNT,
            i8042,
        ),
        plain(
            "post-code",
            DeviceKind::PostCode,
            ports::POST_CODE,
            1,
            post_code,
        ),
        plain(
            "fw_cfg",
            DeviceKind::FwCfg,
            ports::FW_CFG,
            ports::FW_CFG_COUNT,
            fw_cfg,
        ),
        plain(
            "data-port",
            DeviceKind::DataPort,
            ports::DATA_PORT,
            ports::DATA_PORT_COUNT,
            data_port,
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
                    pm1_event,
                ),
                (
                    "acpi-pm1-control",
                    ports::ACPI_PM1_CONTROL,
                    ports::ACPI_PM1_CONTROL_COUNT,
                    pm1_control,
                ),
                (
                    "acpi-pm-timer",
                    ports::ACPI_PM_TIMER,
                    ports::ACPI_PM_TIMER_COUNT,
                    pm_timer,
                ),
            ],
            lines: Vec::new(),
            backend: "clock".into(),
        },
    ];
    (devices, states)
}

/// Bus 0's root, as the inventory lists it; the entry owns the BAR mover.
fn pci_host(mover: Arc<dyn DeviceCounters>) -> DeviceEntry {
    DeviceEntry {
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
        device: mover,
    }
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
    // the guest writes it, and never without the bounded drain (`machine/posted_setup.rs`).
    let com1 = Arc::new(Mutex::new(Uart::with_options(
        backends.serial,
        com1_line.clone(),
        UartOptions {
            post_transmit: true,
        },
    )));
    let lines = [(gsi::RTC, rtc_line), (gsi::COM1, com1_line)];
    let (port_devices, port_states) = port_devices(
        spec,
        [rtc.clone(), com1.clone()],
        lines,
        backends.serial_name,
        clocks.pm_timer,
    );
    let mut states: DeviceStates = vec![("rtc".into(), rtc.clone()), ("com1".into(), com1.clone())];
    states.extend(port_states);
    for device in port_devices {
        device.place(&mut buses, &mut inventory)?;
    }
    let mut pci = PciBus::new(&buses, platform);
    let mut placer = Placer {
        placing: Placing {
            memory,
            platform,
            doorbell: spec.doorbell,
            event_idx: spec.event_idx,
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
        vsock: backends.vsock,
        nets: backends.nets.into_iter().map(Some).collect(),
    };
    let (wirings, entries) = virtio_placement::build(&spec.virtio, virtio_backends, &mut placer)?;
    let (mover, pci_states) = pci.finish(&mut buses, ResetControl::default())?;
    states.extend(pci_states);
    inventory.add(pci_host(mover));
    entries.into_iter().for_each(|entry| inventory.add(entry));
    states.extend(
        wirings
            .iter()
            .map(|wiring| (wiring.id.clone(), wiring.state.clone())),
    );
    let mut inputs = vec![InputService::new(InputTarget::Com1, com1.clone())];
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
        com1,
        virtio: wirings,
        inventory,
        states,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VirtioTransport;
    use crate::devices::rtc::Clock;
    use crate::machine::backends::CountingSink;
    use crate::machine::inventory::{plan_virtio, VirtioRequest};
    use crate::machine::platform::Unplugged;

    struct Epoch;

    impl Clock for Epoch {
        fn now(&self) -> std::time::Duration {
            std::time::Duration::ZERO
        }
    }

    /// A machine with two disks (PCI, then virtio-mmio), entropy on PCI, a console on
    /// virtio-mmio.
    fn mixed() -> Devices<Epoch> {
        let memory = MemoryLayout::new(16 << 20).unwrap();
        let request = VirtioRequest {
            disks: vec![
                (None, None),
                (Some("data".into()), Some(VirtioTransport::Mmio)),
            ],
            rng: Some(VirtioTransport::Pci),
            console: Some(VirtioTransport::Mmio),
            vsock: None,
            nets: 0,
            default: VirtioTransport::Pci,
        };
        let spec = DeviceSpec {
            memory,
            cpus: 1,
            doorbell: Doorbell::Exit,
            event_idx: true,
            virtio: plan_virtio(&request).unwrap(),
        };
        let backends = Backends::for_replay(&[4096, 8192], true, true, &CountingSink::default());
        let guest = crate::machine::guest_memory(&memory).unwrap();
        let clocks = Clocks {
            rtc: Epoch,
            pm_timer: Epoch,
        };
        build(&spec, &Unplugged, backends, clocks, &guest).unwrap()
    }

    #[test]
    fn the_inventory_names_every_device_with_its_placement() {
        let devices = mixed();
        let ids: Vec<&str> = devices
            .inventory
            .entries()
            .iter()
            .map(|entry| entry.id.as_str())
            .collect();
        assert_eq!(
            ids,
            [
                "rtc",
                "com1",
                "isa-debug-exit",
                "i8042",
                "post-code",
                "fw_cfg",
                "data-port",
                "acpi-pm",
                "pci-host",
                "blk0",
                "data",
                "rng0",
                "console0"
            ]
        );
        let entry = |id| devices.inventory.get(id).unwrap();
        assert_eq!(entry("com1").interrupt, Interrupt::Line { gsi: gsi::COM1 });
        assert_eq!(
            entry("blk0").placements,
            [BusPlacement::Pci {
                device: 1,
                bar_size: 0x8000
            }]
        );
        assert_eq!(
            entry("blk0").interrupt,
            Interrupt::Pci {
                intx_gsi: 17,
                msix_vectors: 2
            }
        );
        assert_eq!(
            entry("rng0").placements[0],
            BusPlacement::Pci {
                device: 2,
                bar_size: 0x8000
            }
        );
        // The second disk takes the first free window: 0 (the console keeps 2).
        assert_eq!(
            entry("data").placements[0],
            BusPlacement::Mmio {
                base: layout::virtio_mmio_slot(0),
                size: 0x1000
            }
        );
        assert_eq!(entry("data").interrupt, Interrupt::Line { gsi: 5 });
        assert_eq!(entry("console0").interrupt, Interrupt::Line { gsi: 7 });
        assert_eq!(entry("data").kind, DeviceKind::VirtioBlock);
        assert_eq!(entry("data").backend, "memory");
        assert_eq!(entry("data").counter("doorbells"), 0);
        let windows: Vec<_> = devices.virtio.iter().map(|w| w.mmio_window).collect();
        assert_eq!(windows, [None, Some(0), None, Some(2)]);
    }

    #[test]
    fn counters_come_from_the_devices() {
        let devices = mixed();
        let data = devices
            .services
            .doorbell(3)
            .expect("the second disk is slot 3");
        data.ring(
            &crate::access::DeviceAccess::plain(Arc::new(IoBuses::default())),
            None,
        );
        let entry = devices.inventory.get("data").unwrap();
        assert_eq!(entry.counter("doorbells"), 1);
        assert_eq!(entry.counter("notifications"), 0, "no driver: no work");
        assert_eq!(devices.inventory.total("doorbells"), 1);
        assert_eq!(
            entry.counters(),
            [("doorbells", 1), ("notifications", 0), ("interrupts", 0)]
        );
    }
}

/// A machine's devices go with it: nothing keeps them (or a disk image's lock) alive
/// after the machine is dropped (`hushvm bench blk` reopens its image for each variant).
#[cfg(test)]
mod lifetime_tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::config::VirtioTransport;
    use crate::devices::virtio::block::DiskBackend;
    use crate::machine::backends::{CountingSink, DiskBackendSpec};
    use crate::machine::inventory::{plan_virtio, VirtioRequest};
    use crate::machine::platform::Unplugged;

    struct Epoch;

    impl Clock for Epoch {
        fn now(&self) -> std::time::Duration {
            std::time::Duration::ZERO
        }
    }

    /// A disk that says when it is dropped.
    struct Watched(Arc<AtomicBool>);

    impl Drop for Watched {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    impl DiskBackend for Watched {
        fn size(&self) -> u64 {
            4096
        }

        fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<()> {
            Ok(())
        }

        fn write_at(&mut self, _: &[u8], _: u64) -> std::io::Result<()> {
            Ok(())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_dropped_machine_drops_its_disk_on_either_transport() {
        for transport in [VirtioTransport::Mmio, VirtioTransport::Pci] {
            let dropped = Arc::new(AtomicBool::new(false));
            let memory = MemoryLayout::new(16 << 20).unwrap();
            let request = VirtioRequest {
                disks: vec![(None, None)],
                default: transport,
                ..VirtioRequest::default()
            };
            let spec = DeviceSpec {
                memory,
                cpus: 1,
                doorbell: Doorbell::Exit,
                event_idx: true,
                virtio: plan_virtio(&request).unwrap(),
            };
            let mut backends = Backends::for_replay(&[], false, false, &CountingSink::default());
            backends.disks.push(DiskBackendSpec {
                disk: Box::new(Watched(dropped.clone())),
                readonly: false,
                describe: String::new(),
            });
            let guest = crate::machine::guest_memory(&memory).unwrap();
            let clocks = Clocks {
                rtc: Epoch,
                pm_timer: Epoch,
            };
            drop(build(&spec, &Unplugged, backends, clocks, &guest).unwrap());
            assert!(dropped.load(Ordering::SeqCst), "{transport:?}");
        }
    }
}
