//! virtio 1.x devices behind the virtio-mmio transport (version 2 registers) or the
//! modern virtio-pci transport (`pci.rs`).
//!
//! A device sees only its queues (`virtio-queue`) and guest memory; the transport core
//! (`transport.rs`) owns the register state machine both transports share, each
//! transport adds its register layout and interrupt delivery, and the machine decides
//! how doorbells arrive: as exits, or as ioeventfds serviced by the event loop.
//!
//! Devices take `&self` and lock their own parts (Cloud Hypervisor's shape): a device's
//! configuration space is read without any lock a request holds.

pub mod block;
pub mod console;
pub mod driver;
pub mod features;
pub mod mmio;
pub mod net;
pub mod pci;
pub mod rng;
pub mod state;
pub mod transport;
pub mod vsock;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use thiserror::Error;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::bus::{Access, BusDevice, StopRequest};

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
pub trait VirtioDevice: Send + Sync {
    /// Its virtio device ID (2 block, 3 console, 4 entropy).
    fn device_type(&self) -> u32;
    /// The largest size of each of its queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits it offers (with [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Reads its configuration space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver set DRIVER_OK having accepted `acked_features`: called before the
    /// first queue of that configuration is served.
    fn activate(&self, _acked_features: u64) {}
    /// Handles the available chains of queue `index`; returns true if any was used.
    /// Called with the transport's queue lock held, never its register lock.
    fn process_queue(
        &self,
        index: usize,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> Result<bool, QueueError>;
    /// Counters of its own, by name, for the inventory (the transport counts doorbells
    /// and notifications).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// Something that can be told a queue has work: a transport, from a doorbell.
pub trait QueueNotify: Send + Sync {
    /// Queue `index` has new buffers; `None`: any queue may have (a length-0 doorbell
    /// does not say which).
    fn notify(&self, index: Option<u32>);
    /// True if the driver published buffers in a ready queue since the last call (no
    /// doorbell needed); a transport that cannot tell says false.
    fn avail_moved(&self) -> bool {
        false
    }
}

/// A bus device that locks its own parts, so it is shared (`Arc`) rather than owned by
/// its bus slot.
pub trait SharedBusDevice: Send + Sync {
    fn access(&self, offset: u64, access: Access<'_>) -> Option<StopRequest>;
}

/// A [`SharedBusDevice`] in a bus slot. The slot's mutex then guards only this handle:
/// the device's own locks do the work (a doorbell that exits is served on the vCPU
/// under the slot's mutex, so only that device's other registers wait for it).
pub struct OnBus<T: ?Sized>(pub Arc<T>);

impl<T: SharedBusDevice + ?Sized> BusDevice for OnBus<T> {
    fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        self.0.access(offset, access)
    }
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
/// made it ready and its rings lie in guest memory. `Ok(true)` if buffers were used and
/// the driver wants to hear of it; an error means the driver broke the ring, and the
/// transport asks for a reset.
///
/// With VIRTIO_RING_F_EVENT_IDX (virtio-queue keeps the ring side): after serving, the
/// device publishes avail_event (`enable_notification`, which says whether buffers came
/// meanwhile, served then in another pass) and interrupts only once it passed the
/// driver's used_event (`needs_notification`). Another pass runs only if the last one
/// took buffers: a device that leaves buffers posted on purpose (virtio-net's receive
/// queue with no frame waiting, a transmission the tap refused) does not spin.
pub fn serve_queue<D: VirtioDevice + ?Sized>(
    device: &D,
    index: usize,
    queue: Option<&mut Queue>,
    memory: &GuestMemoryMmap,
) -> Result<bool, QueueError> {
    let queue = match queue {
        Some(queue) if queue.ready() && queue.is_valid(memory) => queue,
        _ => return Ok(false),
    };
    if !queue.event_idx_enabled() {
        return device.process_queue(index, queue, memory);
    }
    let mut used = false;
    loop {
        let before = queue.next_avail();
        used |= device.process_queue(index, queue, memory)?;
        let more = queue.enable_notification(memory)?;
        if !more || queue.next_avail() == before {
            break;
        }
    }
    Ok(used && queue.needs_notification(memory)?)
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

#[cfg(test)]
#[path = "event_idx_tests.rs"]
mod event_idx_tests;
