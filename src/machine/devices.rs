//! The devices of a machine, built and placed the same way for a live run and for a
//! replay: only the [`Platform`] (interrupt lines, doorbells), the [`Backends`] and the
//! RTC's clock differ.

use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;

use crate::bus::IoBuses;
use crate::config::{Doorbell, VirtioTransport};
use crate::devices::acpi_pm::{Pm1Control, Pm1Event, PmTimer, ResetControl};
use crate::devices::data_port::DataPort;
use crate::devices::debug_exit::DebugExit;
use crate::devices::fw_cfg::FwCfg;
use crate::devices::i8042::I8042;
use crate::devices::post_code::PostCode;
use crate::devices::rtc::{Clock, Rtc};
use crate::devices::uart::{Uart, UartOptions};
use crate::layout::{gsi, ports, MemoryLayout};
use crate::services::{InputService, InputTarget, RtcService, Services};

use super::backends::{Backends, Output};
use super::pci;
use super::platform::Platform;
use super::virtio::{self, Counter, VirtioSlot};
use super::MachineError;

/// COM1 as the machine builds it.
pub type Com1 = Uart<Output>;

/// What to build.
#[derive(Debug, Clone, Copy)]
pub struct DeviceSpec {
    pub memory: MemoryLayout,
    pub cpus: u8,
    pub doorbell: Doorbell,
    /// Where the virtio devices sit.
    pub transport: VirtioTransport,
}

/// The clocks the devices read: the RTC's wall clock and the PM timer's monotonic one
/// (recorded live, replayed from the trace).
pub struct Clocks<C: Clock, P: Clock> {
    pub rtc: C,
    pub pm_timer: P,
}

/// A device's interrupts, by name, to count what it raised.
pub struct NamedLine {
    pub name: &'static str,
    pub count: Counter,
}

/// The built devices, placed on the buses.
pub struct Devices<C: Clock> {
    pub buses: IoBuses,
    pub services: Services<C>,
    /// The RTC, to report its state at the end.
    pub rtc: Arc<Mutex<Rtc<C>>>,
    /// COM1, whose held output the event loop resumes when its destination has room.
    pub com1: Arc<Mutex<Com1>>,
    /// The virtio devices, with their doorbells for the event loop.
    pub virtio: Vec<VirtioSlot>,
    /// Every line a device drives.
    pub lines: Vec<NamedLine>,
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
    place_pc_devices(&mut buses, spec, rtc.clone(), com1.clone())?;
    let com1_device = com1.clone();
    place_acpi_devices(&mut buses, clocks.pm_timer)?;
    let virtio_backends = virtio::VirtioBackends {
        disk: backends.disk,
        entropy: backends.entropy,
        console: backends.console,
    };
    let on_pci = spec.transport == VirtioTransport::Pci;
    let (pci_devices, mmio_devices) = match on_pci {
        true => (virtio_backends, virtio::VirtioBackends::none()),
        false => (virtio::VirtioBackends::none(), virtio_backends),
    };
    let reset = ResetControl::default();
    let mut slots = pci::build(
        pci_devices,
        spec.doorbell,
        memory,
        platform,
        &mut buses,
        reset,
    )?;
    slots.extend(virtio::build(
        mmio_devices,
        spec.doorbell,
        memory,
        platform,
        &mut buses,
    )?);
    let mut inputs = vec![InputService::new(InputTarget::Com1, com1)];
    inputs.extend(slots.iter().filter_map(|slot| slot.input.clone()));
    let mut lines = vec![
        NamedLine {
            name: "com1",
            count: Arc::new(move || com1_line.pulses()),
        },
        NamedLine {
            name: "rtc",
            count: {
                let rtc_line = rtc_line.clone();
                Arc::new(move || rtc_line.pulses())
            },
        },
    ];
    lines.extend(slots.iter().map(|slot| NamedLine {
        name: slot.name,
        count: slot.interrupts.clone(),
    }));
    Ok(Devices {
        buses,
        services: Services {
            rtc: RtcService::new(rtc.clone()),
            doorbells: slots.iter().map(|slot| slot.service.clone()).collect(),
            inputs,
        },
        rtc,
        com1: com1_device,
        virtio: slots,
        lines,
    })
}

/// The PC devices at their ports.
fn place_pc_devices<C: Clock + 'static>(
    buses: &mut IoBuses,
    spec: &DeviceSpec,
    rtc: Arc<Mutex<Rtc<C>>>,
    com1: Arc<Mutex<Com1>>,
) -> Result<(), MachineError> {
    let fw_cfg = FwCfg::new(spec.memory.ram_bytes(), u16::from(spec.cpus));
    let pio = &mut buses.pio;
    pio.insert("rtc", ports::RTC, ports::RTC_COUNT, rtc)?;
    pio.insert("com1", ports::COM1, ports::COM1_COUNT, com1)?;
    pio.insert(
        "isa-debug-exit",
        ports::DEBUG_EXIT,
        ports::DEBUG_EXIT_COUNT,
        Arc::new(Mutex::new(DebugExit)),
    )?;
    pio.insert(
        "i8042",
        ports::I8042,
        ports::I8042_COUNT,
        Arc::new(Mutex::new(I8042::default())),
    )?;
    pio.insert(
        "post-code",
        ports::POST_CODE,
        1,
        Arc::new(Mutex::new(PostCode::default())),
    )?;
    pio.insert(
        "fw_cfg",
        ports::FW_CFG,
        ports::FW_CFG_COUNT,
        Arc::new(Mutex::new(fw_cfg)),
    )?;
    pio.insert(
        "data-port",
        ports::DATA_PORT,
        ports::DATA_PORT_COUNT,
        Arc::new(Mutex::new(DataPort::default())),
    )?;
    Ok(())
}

/// The ACPI power-management registers the FADT describes, and the reset register.
fn place_acpi_devices<P: Clock + 'static>(
    buses: &mut IoBuses,
    pm_clock: P,
) -> Result<(), MachineError> {
    let pio = &mut buses.pio;
    pio.insert(
        "acpi-pm1-event",
        ports::ACPI_PM1_EVENT,
        ports::ACPI_PM1_EVENT_COUNT,
        Arc::new(Mutex::new(Pm1Event::default())),
    )?;
    pio.insert(
        "acpi-pm1-control",
        ports::ACPI_PM1_CONTROL,
        ports::ACPI_PM1_CONTROL_COUNT,
        Arc::new(Mutex::new(Pm1Control::default())),
    )?;
    pio.insert(
        "acpi-pm-timer",
        ports::ACPI_PM_TIMER,
        ports::ACPI_PM_TIMER_COUNT,
        Arc::new(Mutex::new(PmTimer::new(pm_clock))),
    )?;
    // The reset register (0xcf9) sits inside PCI's configuration ports: pci::build
    // places it.
    Ok(())
}
