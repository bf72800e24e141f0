//! A split virtqueue as a driver lays it out in guest memory: for tests, the fuzz target
//! and replay, which have no guest to drive the devices.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Descriptor flags.
pub const NEXT: u16 = 1;
/// The device writes this buffer.
pub const WRITE: u16 = 2;

/// A queue of `size` entries at `base`: descriptors, then the available ring, then the
/// used ring on the next 4 KiB boundary.
#[derive(Debug)]
pub struct DriverQueue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
}

impl DriverQueue {
    /// An empty queue.
    pub fn new(base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).div_ceil(4096) * 4096;
        Self {
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// Writes descriptor `index` as it is, links and all (tests build bad chains too).
    pub fn write_descriptor(
        &self,
        memory: &GuestMemoryMmap,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = GuestAddress(self.desc + 16 * u64::from(index));
        let mut bytes = [0u8; 16];
        bytes[0..8].copy_from_slice(&addr.to_le_bytes());
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        bytes[12..14].copy_from_slice(&flags.to_le_bytes());
        bytes[14..16].copy_from_slice(&next.to_le_bytes());
        memory
            .write_slice(&bytes, at)
            .expect("descriptor table in memory");
    }

    /// Makes descriptor `head` available.
    pub fn publish(&mut self, memory: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        memory
            .write_obj(head, GuestAddress(slot))
            .expect("avail ring in memory");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        memory
            .write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .expect("avail idx");
    }

    /// Adds a chain of `(address, length, device-writable)` buffers and publishes it;
    /// returns its head.
    pub fn add_chain(&mut self, memory: &GuestMemoryMmap, buffers: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, (addr, len, writable)) in buffers.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let last = i + 1 == buffers.len();
            let flags = if *writable { WRITE } else { 0 } | if last { 0 } else { NEXT };
            self.write_descriptor(memory, index, *addr, *len, flags, (index + 1) % self.size);
        }
        self.next_desc = (head + buffers.len() as u16) % self.size;
        self.publish(memory, head);
        head
    }

    /// The device's side of this queue, ready.
    pub fn device_queue(&self, max_size: u16) -> Queue {
        let mut queue = Queue::new(max_size).expect("power of two");
        queue.set_size(self.size);
        queue.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        queue.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        queue.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        queue.set_ready(true);
        queue
    }

    /// The used ring's index.
    pub fn used_idx(&self, memory: &GuestMemoryMmap) -> u16 {
        memory
            .read_obj(GuestAddress(self.used + 2))
            .expect("used idx")
    }

    /// Used entry `n`: (head, length).
    pub fn used(&self, memory: &GuestMemoryMmap, n: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(n % self.size);
        let id = memory.read_obj(GuestAddress(at)).expect("used entry");
        let len = memory.read_obj(GuestAddress(at + 4)).expect("used entry");
        (id, len)
    }

    /// Sets the avail ring's used_event (VIRTIO_RING_F_EVENT_IDX): interrupt once the used
    /// index passes `index`.
    pub fn set_used_event(&self, memory: &GuestMemoryMmap, index: u16) {
        let at = self.avail + 4 + 2 * u64::from(self.size);
        memory
            .write_obj(index, GuestAddress(at))
            .expect("used_event in memory");
    }

    /// The used ring's avail_event (VIRTIO_RING_F_EVENT_IDX): the device wants a doorbell
    /// once the available index passes it.
    pub fn avail_event(&self, memory: &GuestMemoryMmap) -> u16 {
        let at = self.used + 4 + 8 * u64::from(self.size);
        memory.read_obj(GuestAddress(at)).expect("avail_event")
    }

    /// Where the registers of a transport should point: (descriptors, avail, used).
    pub fn addresses(&self) -> (u64, u64, u64) {
        (self.desc, self.avail, self.used)
    }

    /// Entries.
    pub fn size(&self) -> u16 {
        self.size
    }
}
