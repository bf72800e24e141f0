//! virtio-rng (entropy device, ID 4): fills the driver's buffers with host randomness.

use std::io::{Read, Write};
use std::sync::Mutex;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;

use super::{serve_chains, QueueError, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::sync::LockExt;

/// The largest buffer served per request; a bigger one gets this many bytes.
const MAX_REQUEST: usize = 64 * 1024;
const QUEUE_SIZES: &[u16] = &[64];

/// The source and the buffer requests pass through.
struct RngIo<R> {
    source: R,
    /// Allocated once: a request allocates nothing of the device's own.
    buffer: Vec<u8>,
}

/// The device, over any source of random bytes (the host's `/dev/urandom`); requests
/// run under its own lock.
pub struct Rng<R: Read + Send> {
    io: Mutex<RngIo<R>>,
}

impl<R: Read + Send> Rng<R> {
    /// A device drawing from `source`.
    pub fn new(source: R) -> Self {
        Self {
            io: Mutex::new(RngIo {
                source,
                buffer: vec![0; MAX_REQUEST],
            }),
        }
    }
}

impl<R: Read + Send> VirtioDevice for Rng<R> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn process_queue(
        &self,
        _index: usize,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut io = self.io.locked();
        let RngIo { source, buffer } = &mut *io;
        serve_chains(queue, memory, |chain| {
            let Ok(mut writer) = chain.writer(memory) else {
                return 0;
            };
            let bytes = &mut buffer[..writer.available_bytes().min(MAX_REQUEST)];
            if source.read_exact(bytes).is_err() || writer.write_all(bytes).is_err() {
                return 0;
            }
            bytes.len() as u32
        })
    }
}
