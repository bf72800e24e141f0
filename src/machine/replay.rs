//! The machine of a trace, rebuilt with no KVM: the same devices at the same places.

use crate::sync::LockExt;
use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::devices::{self, Com1, Lines};
use super::virtio;
use super::MachineError;
use crate::bus::IoBuses;
use crate::devices::rtc::{Clock, Rtc};
use crate::devices::virtio::mmio::QueueNotify;
use crate::event_loop::InputSink;
use crate::irq::CountingLine;
use crate::trace::MachineDescription;

/// What a replay drives.
pub struct ReplayMachine<C: Clock> {
    pub buses: IoBuses,
    pub rtc: Arc<Mutex<Rtc<C>>>,
    com1: Arc<Mutex<Com1>>,
    /// virtio devices by slot.
    pub virtio: Vec<Option<Arc<Mutex<dyn QueueNotify>>>>,
    console_input: Option<Arc<Mutex<dyn InputSink>>>,
}

impl<C: Clock> ReplayMachine<C> {
    /// Host input, as recorded: sink 0 is COM1, 1 the virtio console.
    pub fn receive(&self, sink: u8, data: &[u8]) {
        match sink {
            0 => {
                InputSink::receive(&mut *self.com1.locked(), data);
            }
            _ => {
                if let Some(console) = &self.console_input {
                    console.locked().receive(data);
                }
            }
        }
    }
}

/// Rebuilds the devices of `description` around `rtc`.
pub fn replay_devices<C: Clock + 'static>(
    description: &MachineDescription,
    rtc: Rtc<C>,
    serial_out: Box<dyn Write + Send>,
) -> Result<ReplayMachine<C>, MachineError> {
    let lines = Lines {
        com1: Arc::new(CountingLine::default()),
        rtc: Arc::new(CountingLine::default()),
    };
    let mut devices = devices::build(
        description.memory,
        description.cpus.max(1),
        rtc,
        serial_out,
        lines,
    )?;
    let memory =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), description.memory as usize)])
            .map_err(|source| MachineError::Memory {
                bytes: description.memory,
                source,
            })?;
    let slots = virtio::build_for_replay(
        description.disk_bytes,
        description.rng,
        description.console,
        &memory,
        &mut devices.buses,
    )?;
    let mut virtio_devices: Vec<Option<Arc<Mutex<dyn QueueNotify>>>> = vec![None, None, None];
    let mut console_input = None;
    for slot in slots {
        virtio_devices[usize::from(slot.index)] = Some(slot.notify);
        console_input = console_input.or(slot.input);
    }
    Ok(ReplayMachine {
        buses: devices.buses,
        rtc: devices.rtc,
        com1: devices.com1,
        virtio: virtio_devices,
        console_input,
    })
}
