//! virtio-console (ID 3), one port: what the driver transmits goes to a host writer; the
//! receive queue's buffers wait for input, of which there is none yet.

use std::io::{Read, Write};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::{serve_chains, QueueError, VirtioDevice, VIRTIO_F_VERSION_1};

const RECEIVE: usize = 0;
const QUEUE_SIZES: &[u16] = &[64, 64];

/// The device, writing what the guest sends to `output`.
pub struct Console<W: Write + Send> {
    output: W,
}

impl<W: Write + Send> Console<W> {
    /// A console whose output goes to `output`.
    pub fn new(output: W) -> Self {
        Self { output }
    }

    /// Where the output went.
    pub fn output(&self) -> &W {
        &self.output
    }
}

impl<W: Write + Send> VirtioDevice for Console<W> {
    fn device_type(&self) -> u32 {
        3
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
        &mut self,
        index: usize,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        if index == RECEIVE {
            return Ok(false);
        }
        let output = &mut self.output;
        serve_chains(queue, memory, |chain| {
            if let Ok(mut reader) = chain.reader(memory) {
                let mut bytes = Vec::with_capacity(reader.available_bytes().min(1 << 16));
                if reader.read_to_end(&mut bytes).is_ok() {
                    // A failing host writer must not stall the guest.
                    let _ = output.write_all(&bytes).and_then(|()| output.flush());
                }
            }
            0
        })
    }
}
