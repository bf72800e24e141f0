//! virtio-net's receive path: frames from the backend into the buffers the driver posted.

use std::io;
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestMemoryMmap, VolatileSlice};

use super::{bump, chain_slices, total_len, Net, NetBackend, HEADER_LEN, MAX_MERGED};
use crate::devices::virtio::QueueError;

/// Chains taken from the ring for one frame: (head, their buffers' total length).
struct Taken {
    heads: Vec<(u16, usize)>,
}

impl<B: NetBackend> Net<B> {
    /// Delivers frames while the driver has buffers and the backend has frames.
    pub(super) fn receive(
        &self,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        self.rx_starved.store(false, Ordering::Relaxed);
        let merge = self.acked(VIRTIO_NET_F_MRG_RXBUF);
        let wanted = self.max_rx_frame();
        let mut used = false;
        loop {
            let (slices, taken) = self.take_chains(queue, memory, merge, wanted, &mut used)?;
            if taken.heads.is_empty() {
                self.rx_starved.store(true, Ordering::Relaxed);
                bump(&self.counters.rx_starved, 1);
                return Ok(used);
            }
            // The frame's size is unknown until it is read: a limited queue goes on
            // while the buckets are not in debt, and is charged for what arrived.
            if total_len(&slices) < HEADER_LEN || !self.may_go(&self.rx_limit, 0) {
                give_back(queue, taken.heads.len());
                return Ok(used);
            }
            match self.backend.read_frame(&slices) {
                Ok(len) if len > total_len(&slices) => {
                    // Longer than the buffers (a backend that reports a cut frame's
                    // full size): not handed over cut.
                    bump(&self.counters.rx_dropped, 1);
                    give_back(queue, taken.heads.len());
                }
                Ok(len) if len >= HEADER_LEN => {
                    self.complete(queue, memory, &slices, &taken, len)?;
                    used = true;
                }
                Ok(_) => {
                    // A frame shorter than its header: nothing to hand the driver.
                    bump(&self.counters.rx_dropped, 1);
                    give_back(queue, taken.heads.len());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    give_back(queue, taken.heads.len());
                    return Ok(used);
                }
                Err(_) => {
                    bump(&self.counters.rx_dropped, 1);
                    give_back(queue, taken.heads.len());
                    return Ok(used);
                }
            }
        }
    }

    /// Takes chains for one frame: one without MRG_RXBUF, otherwise as many as the
    /// largest frame needs (or as are posted). Chains the device cannot write into are
    /// used empty (and `used` set).
    fn take_chains<'m>(
        &self,
        queue: &mut Queue,
        memory: &'m GuestMemoryMmap,
        merge: bool,
        wanted: usize,
        used: &mut bool,
    ) -> Result<(Vec<VolatileSlice<'m, ()>>, Taken), QueueError> {
        let mut slices = Vec::new();
        let mut taken = Taken { heads: Vec::new() };
        while taken.heads.is_empty() || (merge && total_len(&slices) < wanted) {
            if taken.heads.len() >= MAX_MERGED {
                break;
            }
            let Some(chain) = queue.iter(memory)?.next() else {
                break;
            };
            let head = chain.head_index();
            match chain_slices(chain, memory, true) {
                Some(buffers) if total_len(&buffers) >= HEADER_LEN || merge => {
                    taken.heads.push((head, total_len(&buffers)));
                    slices.extend(buffers);
                }
                // A chain the device may not write, or too small for a header.
                _ => {
                    bump(&self.counters.rx_dropped, 1);
                    queue.add_used(memory, head, 0)?;
                    *used = true;
                }
            }
        }
        Ok((slices, taken))
    }

    /// Uses the chains a frame of `len` bytes filled (num_buffers says how many) and
    /// gives the others back.
    fn complete(
        &self,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
        slices: &[VolatileSlice<'_, ()>],
        taken: &Taken,
        len: usize,
    ) -> Result<(), QueueError> {
        let mut left = len;
        let mut filled = 0;
        for (head, capacity) in &taken.heads {
            if left == 0 && filled > 0 {
                break;
            }
            let share = left.min(*capacity);
            left -= share;
            filled += 1;
            queue.add_used(memory, *head, share as u32)?;
        }
        give_back(queue, taken.heads.len() - filled);
        // num_buffers (bytes 10-11 of the header, in the first chain): 1 without
        // MRG_RXBUF, as VERSION_1 requires; the tap leaves those bytes alone.
        write_at(slices, 10, &(filled as u16).to_le_bytes());
        bump(&self.counters.rx_frames, 1);
        bump(&self.counters.rx_bytes, (len - HEADER_LEN) as u64);
        self.charge(&self.rx_limit, (len - HEADER_LEN) as u64);
        Ok(())
    }
}

/// Puts the last `count` chains taken back in the ring, newest first.
fn give_back(queue: &mut Queue, count: usize) {
    for _ in 0..count {
        queue.go_to_previous_position();
    }
}

/// Writes `bytes` at `offset` of the buffers taken as one.
fn write_at(slices: &[VolatileSlice<'_, ()>], mut offset: usize, mut bytes: &[u8]) {
    for slice in slices {
        if bytes.is_empty() {
            return;
        }
        if offset >= slice.len() {
            offset -= slice.len();
            continue;
        }
        if let Ok(sub) = slice.offset(offset) {
            let written = bytes.len().min(sub.len());
            sub.copy_from(&bytes[..written]);
            bytes = &bytes[written..];
        }
        offset = 0;
    }
}
