//! virtio 1.x devices behind the virtio-mmio transport (version 2 registers) or the
//! modern virtio-pci transport (`pci.rs`).
//!
//! A device sees only its queues (`virtio-queue`) and guest memory; the transport
//! (`mmio.rs`) owns the register state machine, and the machine decides how doorbells
//! arrive: as MMIO exits, or as ioeventfds serviced by the event loop.

pub mod block;
pub mod console;
pub mod driver;
pub mod features;
pub mod mmio;
pub mod pci;
pub mod rng;

use std::sync::atomic::Ordering;

use thiserror::Error;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

/// VIRTIO_F_VERSION_1: a modern (non-legacy) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// A guest-visible fault in a queue: the driver broke the protocol.
#[derive(Debug, Error)]
pub enum QueueError {
    #[error("virtqueue")]
    Queue(#[from] virtio_queue::Error),
}

/// A chain as the devices receive it.
pub type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// What the transport needs from a device.
pub trait VirtioDevice: Send {
    /// Its virtio device ID (2 block, 3 console, 4 entropy).
    fn device_type(&self) -> u32;
    /// The largest size of each of its queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits it offers (with [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Reads its configuration space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Handles the available chains of queue `index`; returns true if any was used.
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> Result<bool, QueueError>;
}

/// Serves every available chain of `queue` with `handle`, which returns how many bytes
/// it wrote into the chain; returns true if any chain was used. A chain the driver
/// built wrongly is the handler's to reject (it is used with what the handler says), so
/// one bad request never stops the queue.
pub fn serve_chains(
    queue: &mut Queue,
    memory: &GuestMemoryMmap,
    mut handle: impl FnMut(Chain<'_>) -> u32,
) -> Result<bool, QueueError> {
    let mut used = false;
    while let Some(chain) = queue.iter(memory)?.next() {
        let head = chain.head_index();
        let written = handle(chain);
        queue.add_used(memory, head, written)?;
        used = true;
    }
    Ok(used)
}

/// What a transport does when a queue may have work: serves queue `index` if the driver
/// made it ready and its rings lie in guest memory. `Ok(true)` if buffers were used; an
/// error means the driver broke the ring, and the transport asks for a reset.
pub fn serve_queue<D: VirtioDevice + ?Sized>(
    device: &mut D,
    index: usize,
    queue: Option<&mut Queue>,
    memory: &GuestMemoryMmap,
) -> Result<bool, QueueError> {
    match queue {
        Some(queue) if queue.ready() && queue.is_valid(memory) => {
            device.process_queue(index, queue, memory)
        }
        _ => Ok(false),
    }
}

/// Whether the driver published buffers since the last look, without a doorbell: the
/// available index of each ready queue is compared with `seen` (one entry per queue,
/// updated). The event loop polls this while it is busy (QEMU's IOThread polls a
/// virtqueue's available index the same way), so a request is served as soon as the
/// driver publishes it, before its doorbell has travelled through an ioeventfd and epoll.
pub fn avail_moved(queues: &[Queue], seen: &mut Vec<u16>, memory: &GuestMemoryMmap) -> bool {
    seen.resize(queues.len(), 0);
    let mut moved = false;
    for (queue, seen) in queues.iter().zip(seen.iter_mut()) {
        if !queue.ready() {
            continue;
        }
        if let Ok(index) = queue.avail_idx(memory, Ordering::Acquire) {
            moved |= index.0 != *seen;
            *seen = index.0;
        }
    }
    moved
}

/// Copies `source` into `data` from `offset`, zero past its end: configuration space.
pub fn read_config_bytes(source: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = usize::try_from(offset)
            .ok()
            .and_then(|start| source.get(start + i))
            .copied()
            .unwrap_or(0);
    }
}

#[cfg(test)]
mod tests;
