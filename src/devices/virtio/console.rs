//! virtio-console (ID 3), one port: what the driver transmits goes to a host writer, and
//! host input fills the buffers the driver posts on the receive queue.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::Mutex;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;

use super::{serve_chains, QueueError, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::sync::LockExt;

mod state;
pub use state::SavedConsole;

/// Input waiting for receive buffers is capped; beyond it, input is refused.
const MAX_PENDING_INPUT: usize = 64 * 1024;

/// The most bytes one transmit request is taken from.
const MAX_TRANSMIT: usize = 64 * 1024;
const RECEIVE: usize = 0;
const QUEUE_SIZES: &[u16] = &[64, 64];

/// Where transmitted bytes go, and the buffer they pass through.
struct Transmit<W> {
    output: W,
    /// It keeps its capacity between requests.
    bytes: Vec<u8>,
}

/// The device, writing what the guest sends to `output`. Host input and transmission
/// each have their own lock, so input is taken while a transmission writes out.
pub struct Console<W: Write + Send> {
    transmit: Mutex<Transmit<W>>,
    input: Mutex<VecDeque<u8>>,
}

impl<W: Write + Send> Console<W> {
    /// A console whose output goes to `output`.
    pub fn new(output: W) -> Self {
        Self {
            transmit: Mutex::new(Transmit {
                output,
                bytes: Vec::with_capacity(MAX_TRANSMIT),
            }),
            input: Mutex::new(VecDeque::with_capacity(MAX_PENDING_INPUT)),
        }
    }

    /// Queues host input; returns how many bytes were taken. The transport then runs the
    /// receive queue to deliver them.
    pub fn receive(&self, bytes: &[u8]) -> usize {
        let mut input = self.input.locked();
        let taken = bytes.len().min(MAX_PENDING_INPUT - input.len());
        input.extend(&bytes[..taken]);
        taken
    }

    /// Fills posted receive buffers from the pending input; leaves other buffers posted.
    fn deliver_input(
        &self,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut input = self.input.locked();
        let mut used = false;
        while !input.is_empty() {
            let Some(chain) = queue.iter(memory)?.next() else {
                break;
            };
            let head = chain.head_index();
            let mut written = 0;
            if let Ok(mut writer) = chain.writer(memory) {
                let count = writer.available_bytes().min(input.len());
                let (front, back) = input.as_slices();
                let back = &back[..count.saturating_sub(front.len())];
                let front = &front[..count.min(front.len())];
                if writer
                    .write_all(front)
                    .and_then(|()| writer.write_all(back))
                    .is_ok()
                {
                    written = count as u32;
                }
                input.drain(..count);
            }
            queue.add_used(memory, head, written)?;
            used = true;
        }
        Ok(used)
    }

    /// Runs `look` on where the output went.
    pub fn with_output<R>(&self, look: impl FnOnce(&W) -> R) -> R {
        look(&self.transmit.locked().output)
    }
}

impl<W: Write + Send> VirtioDevice for Console<W> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows, max_nr_ports, emerg_wr: no size, one port.
        super::read_config_bytes(&[0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], offset, data);
    }

    fn process_queue(
        &self,
        index: usize,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        if index == RECEIVE {
            return self.deliver_input(queue, memory);
        }
        let mut transmit = self.transmit.locked();
        let Transmit { output, bytes } = &mut *transmit;
        serve_chains(queue, memory, |chain| {
            if let Ok(reader) = chain.reader(memory) {
                bytes.clear();
                if reader.take(MAX_TRANSMIT as u64).read_to_end(bytes).is_ok() {
                    // A failing host writer must not stall the guest.
                    let _ = output.write_all(bytes).and_then(|()| output.flush());
                }
            }
            0
        })
    }
}
