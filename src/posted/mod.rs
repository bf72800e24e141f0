//! Posted writes (seeds 000/001): writes KVM records in the coalesced ring instead of
//! exiting, and the one rule that makes them correct.
//!
//! The rule: every entry in the ring is applied to its device, in ring order, before any
//! access that follows it is dispatched. The exit path calls [`PostedWrites::apply_pending`]
//! first thing after `KVM_RUN` returns, for every exit; anything else that touches a
//! device with posted registers (the event loop, later) must call it first as well.
//!
//! Zones whose register has an outside effect ([`crate::bus::Flush::Bounded`]) are
//! registered only while the guest uses them: [`bounded`].

pub mod bounded;

use crate::sync::LockExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::bus::{Access, AddressSpace, Dispatch, IoBuses, StopRequest};
pub use bounded::{BoundedDrain, BoundedDrainPolicy, DrainError, DrainTimer, Tick, ZoneSwitch};

/// One write taken from the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostedWrite {
    /// Port or MMIO.
    pub space: AddressSpace,
    /// Port or physical address.
    pub addr: u64,
    /// Bytes used in `data`.
    pub len: u32,
    /// The written bytes.
    pub data: [u8; 8],
}

impl PostedWrite {
    /// The written bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.data[..(self.len as usize).min(self.data.len())]
    }
}

/// Where posted writes come from: KVM's ring, or a queue in tests.
pub trait PostedWriteRing: Send + Sync {
    /// True if no entry is waiting. Must be cheap: it runs on every exit. It must read the
    /// consumer index with Acquire, so that a reader that sees a pop sees what the
    /// popper wrote before it.
    fn is_empty(&self) -> bool;
    /// Takes the oldest entry. Callers serialise calls to `pop`.
    fn pop(&self) -> Option<PostedWrite>;
}

/// The VM's posted writes: a ring, if the kernel gave one, and the lock that keeps its
/// entries in order when several threads drain it.
#[derive(Default)]
pub struct PostedWrites {
    ring: Option<Arc<dyn PostedWriteRing>>,
    /// Held while popping *and* applying, so that two drainers cannot apply entries out
    /// of order. Taken only when the ring is not empty or a drain is under way.
    drain: Mutex<()>,
    /// Raised (under `drain`) before a drainer pops and lowered after it has applied:
    /// an entry popped but not yet applied leaves the ring empty, and a reader that saw
    /// the ring empty must still wait for it (a data read after a posted address).
    draining: AtomicBool,
    /// Entries applied so far, by every drainer.
    applied: AtomicU64,
    /// The zones with a bounded flush, registered only while in use (`None`: there are
    /// none, or they are never posted: `--posted-drain-us 0`, replay).
    bounded: Option<BoundedDrain>,
}

impl std::fmt::Debug for PostedWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostedWrites")
            .field("ring", &self.ring.is_some())
            .field("bounded", &self.bounded)
            .finish()
    }
}

impl PostedWrites {
    /// Posted writes drained from `ring`.
    pub fn new(ring: Arc<dyn PostedWriteRing>) -> Self {
        Self {
            ring: Some(ring),
            drain: Mutex::new(()),
            draining: AtomicBool::new(false),
            applied: AtomicU64::new(0),
            bounded: None,
        }
    }

    /// The same, with bounded zones that activate on their first exited write.
    pub fn with_bounded(mut self, bounded: BoundedDrain) -> Self {
        self.bounded = Some(bounded);
        self
    }

    /// The bounded zones, if any.
    pub fn bounded(&self) -> Option<&BoundedDrain> {
        self.bounded.as_ref()
    }

    /// The exit path, after serving a write that exited: a write to an inactive bounded
    /// zone activates it (one atomic load otherwise).
    pub fn exited_write(&self, space: AddressSpace, addr: u64) -> Result<(), DrainError> {
        match &self.bounded {
            Some(bounded) => bounded.exited_write(space, addr),
            None => Ok(()),
        }
    }

    /// No ring: every write exits as usual.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Entries applied so far.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// True if entries wait in the ring (a cheap check of its indices).
    pub fn has_pending(&self) -> bool {
        self.ring.as_ref().is_some_and(|ring| !ring.is_empty())
    }

    /// True if writes may be posted.
    pub fn is_enabled(&self) -> bool {
        self.ring.is_some()
    }

    /// Applies every waiting entry to its device, in order, calling `observe` for each
    /// with what the write asked of the VM (a posted write to 0xcf9 inside PCI's 0xcf8
    /// zone may reset it: that must not be lost). Returns how many were applied.
    pub fn apply_pending(
        &self,
        buses: &IoBuses,
        mut observe: impl FnMut(&PostedWrite, Option<StopRequest>),
    ) -> u64 {
        let Some(ring) = &self.ring else { return 0 };
        // `is_empty` reads the ring's consumer index with Acquire: seeing a drainer's pop
        // means seeing the `draining` it raised before popping.
        if ring.is_empty() && !self.draining.load(Ordering::Acquire) {
            return 0;
        }
        let _order = self.drain.locked();
        // Relaxed is enough: `pop` advances the consumer index with Release, so a reader
        // that sees the pop (with Acquire) sees this store too. No locked instruction
        // here, nor in the lowering below: this runs on every exit that finds an entry.
        self.draining.store(true, Ordering::Relaxed);
        let (mut applied, mut bounded) = (0, 0);
        while let Some(write) = ring.pop() {
            let stop = match buses.dispatch(write.space, write.addr, Access::Write(write.bytes())) {
                Dispatch::Handled(stop) => stop,
                Dispatch::Unclaimed => None,
            };
            observe(&write, stop);
            applied += 1;
            if let Some(zones) = &self.bounded {
                bounded += u64::from(zones.covers(write.space, write.addr));
            }
        }
        self.draining.store(false, Ordering::Release);
        // Only the holder of `drain` writes `applied`: a plain add, not a locked one.
        let total = self.applied.load(Ordering::Relaxed) + applied;
        self.applied.store(total, Ordering::Relaxed);
        if let Some(zones) = &self.bounded {
            zones.saw(bounded);
        }
        applied
    }
}

/// A ring in memory, for tests and replay.
#[derive(Debug, Default)]
pub struct MemoryRing {
    entries: Mutex<std::collections::VecDeque<PostedWrite>>,
}

impl MemoryRing {
    /// Appends an entry, as KVM would on a posted write.
    pub fn push(&self, write: PostedWrite) {
        self.entries.locked().push_back(write);
    }
}

impl PostedWriteRing for MemoryRing {
    fn is_empty(&self) -> bool {
        self.entries.locked().is_empty()
    }

    fn pop(&self) -> Option<PostedWrite> {
        self.entries.locked().pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::rtc::{Rtc, SystemClock};

    fn pio_write(port: u16, value: u8) -> PostedWrite {
        let mut data = [0; 8];
        data[0] = value;
        PostedWrite {
            space: AddressSpace::Pio,
            addr: u64::from(port),
            len: 1,
            data,
        }
    }

    fn machine() -> (IoBuses, Arc<MemoryRing>, PostedWrites) {
        let mut buses = IoBuses::default();
        let rtc = Arc::new(Mutex::new(Rtc::new(SystemClock)));
        buses.pio.insert("rtc", 0x70, 2, rtc).unwrap();
        let ring = Arc::new(MemoryRing::default());
        let posted = PostedWrites::new(ring.clone());
        (buses, ring, posted)
    }

    fn read_data_port(buses: &IoBuses) -> u8 {
        let mut data = [0u8];
        buses.dispatch(AddressSpace::Pio, 0x71, Access::Read(&mut data));
        data[0]
    }

    #[test]
    fn the_rtc_declares_its_index_port_as_posted() {
        let (buses, _, _) = machine();
        let zones = buses.posted_zones();
        assert_eq!(zones.len(), 1);
        assert_eq!(
            (zones[0].space, zones[0].addr, zones[0].size),
            (AddressSpace::Pio, 0x70, 1)
        );
    }

    #[test]
    fn a_read_after_posted_index_writes_sees_the_last_one() {
        let (buses, ring, posted) = machine();
        // Program NVRAM 0x40 = 0xaa and 0x41 = 0xbb through ordinary exits.
        for (index, value) in [(0x40u8, 0xaau8), (0x41, 0xbb)] {
            buses.dispatch(AddressSpace::Pio, 0x70, Access::Write(&[index]));
            buses.dispatch(AddressSpace::Pio, 0x71, Access::Write(&[value]));
        }
        // The guest writes 0x40, then 0x41 to the index port; KVM posts both.
        ring.push(pio_write(0x70, 0x40));
        ring.push(pio_write(0x70, 0x41));
        // The read of 0x71 exits; the ring is applied first, in order.
        let mut seen = Vec::new();
        assert_eq!(posted.apply_pending(&buses, |w, _| seen.push(w.data[0])), 2);
        assert_eq!(seen, vec![0x40, 0x41]);
        assert_eq!(read_data_port(&buses), 0xbb);
        assert!(ring.is_empty());
    }

    #[test]
    fn dispatching_before_applying_is_the_bug_the_rule_prevents() {
        let (buses, ring, posted) = machine();
        for (index, value) in [(0x40u8, 0xaau8), (0x41, 0xbb)] {
            buses.dispatch(AddressSpace::Pio, 0x70, Access::Write(&[index]));
            buses.dispatch(AddressSpace::Pio, 0x71, Access::Write(&[value]));
        }
        ring.push(pio_write(0x70, 0x40));
        // Wrong order: the read sees the stale index 0x41.
        assert_eq!(read_data_port(&buses), 0xbb);
        posted.apply_pending(&buses, |_, _| {});
        assert_eq!(read_data_port(&buses), 0xaa);
    }

    #[test]
    fn a_disabled_ring_applies_nothing() {
        let (buses, _, _) = machine();
        let posted = PostedWrites::disabled();
        assert!(!posted.is_enabled());
        assert_eq!(posted.apply_pending(&buses, |_, _| panic!("no entries")), 0);
    }

    #[test]
    fn posted_writes_to_several_devices_keep_their_order_across_devices() {
        use crate::devices::uart::Uart;
        // The RTC index and COM1's THR share the ring: a byte written between two index
        // writes reaches the output between them, and each device sees its own order.
        let (mut buses, ring, posted) = machine();
        let output = std::sync::Arc::new(Mutex::new(Vec::new()));
        struct Log(std::sync::Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Log {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                self.0.locked().extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let uart = Arc::new(Mutex::new(Uart::new(Log(output.clone()))));
        buses.pio.insert("com1", 0x3f8, 8, uart).unwrap();
        let mut order = Vec::new();
        for (port, value) in [(0x70, 0x40), (0x3f8, b'a'), (0x70, 0x41), (0x3f8, b'b')] {
            ring.push(pio_write(port, value));
        }
        posted.apply_pending(&buses, |w, _| order.push((w.addr, w.data[0])));
        assert_eq!(
            order,
            [(0x70, 0x40), (0x3f8, b'a'), (0x70, 0x41), (0x3f8, b'b')]
        );
        assert_eq!(*output.locked(), b"ab");
        assert_eq!(posted.applied(), 4);
    }

    /// COM1's destination is full (a pipe nobody reads). A driver that honours THRE reads
    /// LSR (an exit, which drains the ring), sees the FIFO empty and posts a FIFO's
    /// worth: applied in order, they all fit, and THRE stays clear until the destination
    /// takes them. Only a driver that ignores THRE overflows the FIFO; that byte is lost,
    /// as on a 16550, and counted.
    #[test]
    fn posted_thr_writes_from_a_driver_that_honours_thre_fit_a_full_destination() {
        use crate::devices::uart::{Uart, TX_FIFO_DEPTH};
        use std::sync::atomic::AtomicBool;
        #[derive(Clone, Default)]
        struct Full(Arc<AtomicBool>, Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Full {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                if self.0.load(Ordering::Relaxed) {
                    return Err(std::io::ErrorKind::WouldBlock.into());
                }
                self.1.locked().extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (mut buses, ring, posted) = machine();
        let full = Full::default();
        let uart = Arc::new(Mutex::new(Uart::new(full.clone())));
        buses.pio.insert("com1", 0x3f8, 8, uart.clone()).unwrap();
        let lsr = |buses: &IoBuses| {
            let mut data = [0u8];
            buses.dispatch(AddressSpace::Pio, 0x3fd, Access::Read(&mut data));
            data[0] & 0x60
        };
        buses.dispatch(AddressSpace::Pio, 0x3fa, Access::Write(&[0x01])); // FIFOs on
        full.0.store(true, Ordering::Relaxed);
        assert_eq!(lsr(&buses), 0x60, "THRE and TEMT: the driver may send 16");
        for byte in 0..TX_FIFO_DEPTH as u8 {
            ring.push(pio_write(0x3f8, b'a' + byte));
        }
        // The driver's next LSR read exits; the ring is applied first.
        posted.apply_pending(&buses, |_, _| {});
        assert_eq!(lsr(&buses), 0, "the FIFO holds them: THRE and TEMT clear");
        assert_eq!(uart.locked().lost_bytes(), 0);
        // A driver that ignores THRE: the shift register takes one more, then bytes go.
        ring.push(pio_write(0x3f8, b'y'));
        ring.push(pio_write(0x3f8, b'z'));
        posted.apply_pending(&buses, |_, _| {});
        assert_eq!(uart.locked().lost_bytes(), 1);
        full.0.store(false, Ordering::Relaxed);
        uart.locked().flush_transmit();
        let expected: Vec<u8> = (0..TX_FIFO_DEPTH as u8)
            .map(|b| b'a' + b)
            .chain([b'y'])
            .collect();
        assert_eq!(*full.1.locked(), expected);
        assert_eq!(lsr(&buses), 0x60);
    }
}
