//! The legacy PC devices and where they sit.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::bus::IoBuses;
use crate::devices::data_port::{DataPort, DATA_PORT_BASE, DATA_PORT_COUNT};
use crate::devices::debug_exit::{DebugExit, DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_COUNT};
use crate::devices::fw_cfg::{FwCfg, FW_CFG_PORT, FW_CFG_PORT_COUNT};
use crate::devices::i8042::{I8042, I8042_PORT, I8042_PORT_COUNT};
use crate::devices::post_code::{PostCode, POST_CODE_PORT};
use crate::devices::rtc::{Clock, Rtc};
use crate::devices::serial::{SerialPort, SERIAL_PORT_COUNT};
use crate::irq::InterruptLine;

use super::MachineError;

const COM1: u16 = 0x3f8;
const RTC_PORT: u16 = 0x70;
const RTC_PORT_COUNT: u16 = 2;
/// ISA interrupts, as GSIs of the in-kernel PIC and IOAPIC.
pub const COM1_GSI: u32 = 4;
/// The RTC's interrupt.
pub const RTC_GSI: u32 = 8;

/// COM1 as the machine builds it.
pub type Com1 = SerialPort<Box<dyn Write + Send>>;

/// The devices the machine keeps handles to.
pub struct Devices<C: Clock> {
    /// Both buses, for the virtio devices to join before they are frozen.
    pub buses: IoBuses,
    pub rtc: Arc<Mutex<Rtc<C>>>,
    pub com1: Arc<Mutex<Com1>>,
}

/// The interrupt lines the devices drive.
pub struct Lines {
    pub com1: Arc<dyn InterruptLine>,
    pub rtc: Arc<dyn InterruptLine>,
}

/// Builds the devices of a machine with `memory` bytes and `cpus` vCPUs around `rtc`, and
/// places them on the buses.
pub fn build<C: Clock + 'static>(
    memory: u64,
    cpus: u8,
    mut rtc: Rtc<C>,
    serial_out: Box<dyn Write + Send>,
    lines: Lines,
) -> Result<Devices<C>, MachineError> {
    let mut buses = IoBuses::default();
    rtc.set_memory_size(memory);
    rtc.connect_interrupt(lines.rtc);
    let rtc = Arc::new(Mutex::new(rtc));
    let com1 = Arc::new(Mutex::new(SerialPort::with_interrupt(
        serial_out, lines.com1,
    )));
    let fw_cfg = FwCfg::new(memory, u16::from(cpus));
    let pio = &mut buses.pio;
    pio.insert("rtc", RTC_PORT, RTC_PORT_COUNT, rtc.clone())?;
    pio.insert("com1", COM1, SERIAL_PORT_COUNT, com1.clone())?;
    pio.insert(
        "isa-debug-exit",
        DEBUG_EXIT_PORT,
        DEBUG_EXIT_PORT_COUNT,
        Arc::new(Mutex::new(DebugExit)),
    )?;
    pio.insert(
        "i8042",
        I8042_PORT,
        I8042_PORT_COUNT,
        Arc::new(Mutex::new(I8042::default())),
    )?;
    pio.insert(
        "post-code",
        POST_CODE_PORT,
        1,
        Arc::new(Mutex::new(PostCode::default())),
    )?;
    pio.insert(
        "fw_cfg",
        FW_CFG_PORT,
        FW_CFG_PORT_COUNT,
        Arc::new(Mutex::new(fw_cfg)),
    )?;
    let data_port = Arc::new(Mutex::new(DataPort::default()));
    pio.insert("data-port", DATA_PORT_BASE, DATA_PORT_COUNT, data_port)?;
    Ok(Devices { buses, rtc, com1 })
}
