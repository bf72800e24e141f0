//! virtio-net (ID 1), one queue pair: receive queue 0, transmit queue 1, over a
//! [`NetBackend`] (the machine gives it a tap: `net::tap`). No `unsafe` here: the
//! backend does the readv/writev on the guest memory slices the chains describe.
//!
//! - TX: every available chain (header + frame, device-readable) goes to the backend
//!   in one `write_frame`, straight from guest memory. A full backend (`WouldBlock`)
//!   leaves the chain in the ring ([`Net::tx_blocked`]: the machine retries when the
//!   tap is writable); a malformed chain, or a header asking for an offload the driver
//!   did not negotiate, is used with length 0 and counted as dropped.
//! - RX: only while the driver has posted buffers is the backend read, one frame per
//!   `read_frame`, straight into them (with MRG_RXBUF into as many chains as the frame
//!   needs, `num_buffers` set); chains it did not need stay posted. With no buffer the
//!   frame stays in the backend ([`Net::rx_starved`]: the machine stops watching the
//!   tap until the driver posts buffers, so nothing spins).
//! - Rate limits (`rate_limiter`): a limited direction stops and says when to retry
//!   ([`Net::retry_after_ns`]); nothing is dropped for it. Without a limiter the data
//!   path only checks an `Option`.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use super::{QueueError, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::rate_limiter::{Admission, RateLimiter};
use crate::sync::LockExt;

/// `virtio_net_hdr_v1`, with `num_buffers` (VERSION_1 devices always have it).
pub const HEADER_LEN: usize = 12;
/// The largest frame without segmentation offloads: Ethernet with a VLAN tag.
pub const MAX_PLAIN_FRAME: usize = 1518;
/// The largest frame with TSO/UFO: a 64 KiB IP packet and its Ethernet header.
pub const MAX_GSO_FRAME: usize = 65_550;
/// The MTU the device advertises (VIRTIO_NET_F_MTU).
pub const MTU: u16 = 1500;
/// The most buffers of one chain (a queue's size; the tap takes as many iovecs).
const MAX_CHAIN: usize = 256;
/// The most chains one merged frame may take (MRG_RXBUF).
const MAX_MERGED: usize = 64;
const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: &[u16] = &[256, 256];
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_UDP: u8 = 3;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;
const NEEDS_CSUM: u8 = 1;

/// The host side of a virtio-net device: one frame per call, vnet header first.
pub trait NetBackend: Send + Sync {
    /// Reads one frame into `buffers`; `WouldBlock` when none is waiting.
    fn read_frame(&self, buffers: &[VolatileSlice<'_, ()>]) -> io::Result<usize>;
    /// Writes one frame gathered from `buffers`; `WouldBlock` when the backend is full.
    fn write_frame(&self, buffers: &[VolatileSlice<'_, ()>]) -> io::Result<usize>;
    /// The driver accepted `features`: the backend may hand it what they allow.
    fn set_features(&self, features: u64) -> io::Result<()>;
}

/// What the device did, for the run report and the tests.
#[derive(Debug, Default)]
pub struct NetCounters {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames the guest sent that were dropped: malformed chains, bad headers, too big,
    /// or refused by the backend for another reason than being full.
    pub tx_dropped: AtomicU64,
    /// Frames read from the backend that could not be delivered whole.
    pub rx_dropped: AtomicU64,
    /// Times a transmission met a full backend (the frame stayed in the ring).
    pub tx_blocked: AtomicU64,
    /// Times a frame waited for the driver to post buffers.
    pub rx_starved: AtomicU64,
}

impl NetCounters {
    /// Every counter by name, for the run's report.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        vec![
            ("rx_frames", load(&self.rx_frames)),
            ("rx_bytes", load(&self.rx_bytes)),
            ("tx_frames", load(&self.tx_frames)),
            ("tx_bytes", load(&self.tx_bytes)),
            ("rx_dropped", load(&self.rx_dropped)),
            ("tx_dropped", load(&self.tx_dropped)),
            ("tx_blocked", load(&self.tx_blocked)),
            ("rx_starved", load(&self.rx_starved)),
        ]
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// One direction's limiter and the clock it reads.
struct Limit {
    limiter: Option<RateLimiter>,
    /// When the limiter last said to wait until (ns of `clock`), 0 if not waiting.
    retry_at_ns: u64,
}

/// The device.
pub struct Net<B: NetBackend> {
    backend: B,
    mac: [u8; 6],
    acked: AtomicU64,
    rx_limit: Mutex<Limit>,
    tx_limit: Mutex<Limit>,
    clock: fn() -> u64,
    tx_blocked: AtomicBool,
    rx_starved: AtomicBool,
    warnings: Mutex<crate::ratelimit::RateLimiter>,
    /// Told when the device starts waiting for something only the host side can end (a
    /// full backend, a limiter): the machine then watches for it.
    waker: OnceLock<Box<dyn Fn() + Send + Sync>>,
    pub counters: NetCounters,
}

impl<B: NetBackend> Net<B> {
    /// A device with address `mac` on `backend`; limiters (if any) read `clock`
    /// (nanoseconds of a monotonic clock).
    pub fn new(
        backend: B,
        mac: [u8; 6],
        rx_limiter: Option<RateLimiter>,
        tx_limiter: Option<RateLimiter>,
        clock: fn() -> u64,
    ) -> Self {
        let limit = |limiter| {
            Mutex::new(Limit {
                limiter,
                retry_at_ns: 0,
            })
        };
        Self {
            backend,
            mac,
            acked: AtomicU64::new(0),
            rx_limit: limit(rx_limiter),
            tx_limit: limit(tx_limiter),
            clock,
            tx_blocked: AtomicBool::new(false),
            rx_starved: AtomicBool::new(false),
            warnings: Mutex::default(),
            waker: OnceLock::new(),
            counters: NetCounters::default(),
        }
    }

    /// Calls `wake` whenever a transmission meets a full backend or a limiter makes a
    /// direction wait (the first waker set stays).
    pub fn set_waker(&self, wake: Box<dyn Fn() + Send + Sync>) {
        let _ = self.waker.set(wake);
    }

    fn wake(&self) {
        if let Some(wake) = self.waker.get() {
            wake();
        }
    }

    /// Now, on the clock the limiters read.
    pub fn now_ns(&self) -> u64 {
        (self.clock)()
    }

    /// The host side.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// True if the last transmission found the backend full: retry (notify queue 1)
    /// once it is writable.
    pub fn tx_blocked(&self) -> bool {
        self.tx_blocked.load(Ordering::Relaxed)
    }

    /// True if the receive queue ran out of buffers: the backend need not be watched
    /// until the driver posts more (its RX doorbell serves the queue again).
    pub fn rx_starved(&self) -> bool {
        self.rx_starved.load(Ordering::Relaxed)
    }

    /// When a limited direction may go on (ns of the device's clock), if one waits.
    pub fn retry_after_ns(&self) -> Option<u64> {
        let rx = self.rx_limit.locked().retry_at_ns;
        let tx = self.tx_limit.locked().retry_at_ns;
        [rx, tx].into_iter().filter(|at| *at != 0).min()
    }

    fn acked(&self, feature: u32) -> bool {
        self.acked.load(Ordering::Relaxed) & (1u64 << feature) != 0
    }

    /// The largest frame the driver may be handed, header included.
    fn max_rx_frame(&self) -> usize {
        let gso = [
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_UFO,
        ];
        HEADER_LEN
            + if gso.iter().any(|f| self.acked(*f)) {
                MAX_GSO_FRAME
            } else {
                MAX_PLAIN_FRAME
            }
    }

    /// True if the limiter lets an operation of `bytes` go now (charging nothing);
    /// otherwise notes when to retry.
    fn may_go(&self, limit: &Mutex<Limit>, bytes: u64) -> bool {
        let mut limit = limit.locked();
        let Some(limiter) = limit.limiter.as_mut() else {
            return true;
        };
        let now = (self.clock)();
        match limiter.check(bytes, now) {
            Admission::Go => {
                limit.retry_at_ns = 0;
                true
            }
            Admission::Wait(wait) => {
                let wait = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
                limit.retry_at_ns = now.saturating_add(wait).max(1);
                drop(limit);
                self.wake();
                false
            }
        }
    }

    /// Charges an operation of `bytes` that happened.
    fn charge(&self, limit: &Mutex<Limit>, bytes: u64) {
        if let Some(limiter) = limit.locked().limiter.as_mut() {
            limiter.charge(bytes, (self.clock)());
        }
    }
}

type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// The buffers of `chain` as guest memory slices, all readable (`writable` false) or
/// all writable; None if the chain mixes them or points outside guest memory.
fn chain_slices<'m>(
    chain: Chain<'m>,
    memory: &'m GuestMemoryMmap,
    writable: bool,
) -> Option<Vec<VolatileSlice<'m, ()>>> {
    let mut slices = Vec::new();
    for descriptor in chain {
        if descriptor.is_write_only() != writable || slices.len() >= MAX_CHAIN {
            return None;
        }
        let len = usize::try_from(descriptor.len()).ok()?;
        if len > 0 {
            slices.push(memory.get_slice(descriptor.addr(), len).ok()?);
        }
    }
    Some(slices)
}

fn total_len(slices: &[VolatileSlice<'_, ()>]) -> usize {
    slices.iter().map(|s| s.len()).sum()
}

/// The first `out.len()` bytes gathered from `slices`; false if they hold fewer.
fn gather(slices: &[VolatileSlice<'_, ()>], out: &mut [u8]) -> bool {
    let mut done = 0;
    for slice in slices {
        if done == out.len() {
            break;
        }
        done += slice.copy_to(&mut out[done..]);
    }
    done == out.len()
}

impl<B: NetBackend> Net<B> {
    /// A transmit header the driver may send: offloads only as negotiated, and a
    /// checksum position inside the frame.
    fn header_allowed(&self, header: &[u8; HEADER_LEN], frame_len: usize) -> bool {
        let (flags, gso) = (header[0], header[1]);
        let csum_start = usize::from(u16::from_le_bytes([header[6], header[7]]));
        let csum_offset = usize::from(u16::from_le_bytes([header[8], header[9]]));
        if flags & !NEEDS_CSUM != 0 {
            return false;
        }
        if flags & NEEDS_CSUM != 0
            && (!self.acked(VIRTIO_NET_F_CSUM) || csum_start + csum_offset + 2 > frame_len)
        {
            return false;
        }
        let gso_allowed = match gso & !GSO_ECN {
            GSO_NONE => gso & GSO_ECN == 0,
            GSO_TCPV4 => self.acked(VIRTIO_NET_F_HOST_TSO4),
            GSO_TCPV6 => self.acked(VIRTIO_NET_F_HOST_TSO6),
            GSO_UDP => self.acked(VIRTIO_NET_F_HOST_UFO),
            _ => false,
        };
        // Segmentation needs the checksum offload too.
        gso_allowed && (gso == GSO_NONE || flags & NEEDS_CSUM != 0)
    }

    fn transmit(&self, queue: &mut Queue, memory: &GuestMemoryMmap) -> Result<bool, QueueError> {
        self.tx_blocked.store(false, Ordering::Relaxed);
        let mut used = false;
        while let Some(chain) = queue.iter(memory)?.next() {
            let head = chain.head_index();
            let frame = chain_slices(chain, memory, false).filter(|slices| {
                let len = total_len(slices);
                let mut header = [0u8; HEADER_LEN];
                (HEADER_LEN..=HEADER_LEN + MAX_GSO_FRAME).contains(&len)
                    && gather(slices, &mut header)
                    && self.header_allowed(&header, len - HEADER_LEN)
            });
            let Some(slices) = frame else {
                bump(&self.counters.tx_dropped, 1);
                queue.add_used(memory, head, 0)?;
                used = true;
                continue;
            };
            let len = total_len(&slices);
            let bytes = (len - HEADER_LEN) as u64;
            if !self.may_go(&self.tx_limit, bytes) {
                queue.go_to_previous_position();
                break;
            }
            match self.backend.write_frame(&slices) {
                Ok(_) => {
                    bump(&self.counters.tx_frames, 1);
                    bump(&self.counters.tx_bytes, bytes);
                    self.charge(&self.tx_limit, bytes);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Not charged: it goes first when the tap has room.
                    self.tx_blocked.store(true, Ordering::Relaxed);
                    bump(&self.counters.tx_blocked, 1);
                    self.wake();
                    queue.go_to_previous_position();
                    break;
                }
                Err(_) => bump(&self.counters.tx_dropped, 1),
            }
            queue.add_used(memory, head, 0)?;
            used = true;
        }
        Ok(used)
    }
}

#[path = "net_rx.rs"]
mod rx;

#[path = "net_state.rs"]
pub mod state;

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        [
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_MTU,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_UFO,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_HOST_UFO,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_STATUS,
        ]
        .iter()
        .fold(VIRTIO_F_VERSION_1, |all, bit| all | 1u64 << bit)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac, status, max_virtqueue_pairs, mtu.
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&MTU.to_le_bytes());
        super::read_config_bytes(&config, offset, data);
    }

    fn activate(&self, acked_features: u64) {
        self.acked.store(acked_features, Ordering::Relaxed);
        self.tx_blocked.store(false, Ordering::Relaxed);
        self.rx_starved.store(false, Ordering::Relaxed);
        if let Err(error) = self.backend.set_features(acked_features) {
            self.warnings
                .locked()
                .warn(|| format!("virtio-net: the backend refused the offloads: {error}"));
        }
    }

    fn process_queue(
        &self,
        index: usize,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        match index {
            RX => self.receive(queue, memory),
            TX => self.transmit(queue, memory),
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
