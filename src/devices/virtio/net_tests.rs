use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::virtio::driver::DriverQueue;
use crate::rate_limiter::{RateLimiterConfig, TokenBucketConfig};

const RX_QUEUE: u64 = 0x10_0000;
const TX_QUEUE: u64 = 0x12_0000;
const DATA: u64 = 0x20_0000;
const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

/// A backend in memory: frames waiting to be received, frames sent, and a switch that
/// makes it full.
#[derive(Default)]
struct Fake {
    incoming: Mutex<VecDeque<Vec<u8>>>,
    sent: Mutex<Vec<Vec<u8>>>,
    full: AtomicBool,
    /// Report a cut frame's full length, as a backend may.
    overlong: AtomicBool,
    features: AtomicU64,
}

impl NetBackend for Fake {
    fn read_frame(&self, buffers: &[VolatileSlice<'_, ()>]) -> io::Result<usize> {
        let frame = self.incoming.lock().unwrap().pop_front();
        let frame = frame.ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?;
        // As the tap does: as much as fits.
        let mut done = 0;
        for buffer in buffers {
            let n = buffer.len().min(frame.len() - done);
            buffer.copy_from(&frame[done..done + n]);
            done += n;
        }
        if self.overlong.load(Ordering::Relaxed) {
            return Ok(frame.len());
        }
        Ok(done)
    }

    fn write_frame(&self, buffers: &[VolatileSlice<'_, ()>]) -> io::Result<usize> {
        if self.full.load(Ordering::Relaxed) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut frame = vec![0u8; total_len(buffers)];
        assert!(gather(buffers, &mut frame));
        let len = frame.len();
        self.sent.lock().unwrap().push(frame);
        Ok(len)
    }

    fn set_features(&self, features: u64) -> io::Result<()> {
        self.features.store(features, Ordering::Relaxed);
        Ok(())
    }
}

struct Rig {
    memory: GuestMemoryMmap,
    net: Net<Fake>,
    rx: DriverQueue,
    tx: DriverQueue,
    rx_queue: Queue,
    tx_queue: Queue,
}

fn no_clock() -> u64 {
    0
}

fn rig(features: u64) -> Rig {
    rig_with(features, [None, None], no_clock)
}

/// With limiters `[rx, tx]`.
fn rig_with(features: u64, limiters: [Option<RateLimiter>; 2], clock: fn() -> u64) -> Rig {
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let [rx_limiter, tx_limiter] = limiters;
    let net = Net::new(Fake::default(), MAC, rx_limiter, tx_limiter, clock);
    net.activate(VIRTIO_F_VERSION_1 | features);
    let (rx, tx) = (
        DriverQueue::new(RX_QUEUE, 16),
        DriverQueue::new(TX_QUEUE, 16),
    );
    let (rx_queue, tx_queue) = (rx.device_queue(256), tx.device_queue(256));
    Rig {
        memory,
        net,
        rx,
        tx,
        rx_queue,
        tx_queue,
    }
}

fn bit(feature: u32) -> u64 {
    1 << feature
}

impl Rig {
    fn run_tx(&mut self) -> bool {
        self.net
            .process_queue(TX, &mut self.tx_queue, &self.memory)
            .unwrap()
    }

    fn run_rx(&mut self) -> bool {
        self.net
            .process_queue(RX, &mut self.rx_queue, &self.memory)
            .unwrap()
    }

    /// A transmit chain at `at`: the header and the frame in two buffers.
    fn send(&mut self, at: u64, header: [u8; HEADER_LEN], frame: &[u8]) {
        self.memory.write_slice(&header, GuestAddress(at)).unwrap();
        self.memory
            .write_slice(frame, GuestAddress(at + 64))
            .unwrap();
        self.tx.add_chain(
            &self.memory,
            &[
                (at, HEADER_LEN as u32, false),
                (at + 64, frame.len() as u32, false),
            ],
        );
    }

    fn sent(&self) -> Vec<Vec<u8>> {
        self.net.backend().sent.lock().unwrap().clone()
    }

    fn arrive(&self, frame: Vec<u8>) {
        self.net.backend().incoming.lock().unwrap().push_back(frame);
    }

    fn read(&self, at: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        self.memory
            .read_slice(&mut bytes, GuestAddress(at))
            .unwrap();
        bytes
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

/// A frame from the backend: a zero header with the given num_buffers garbage.
fn from_tap(payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; HEADER_LEN];
    bytes[10..12].copy_from_slice(&[0xaa, 0xbb]);
    bytes.extend_from_slice(payload);
    bytes
}

#[test]
fn frames_go_to_the_backend_straight_from_the_chains() {
    let mut rig = rig(0);
    let first = frame(60, 1);
    let second = frame(1514, 2);
    rig.send(DATA, [0; HEADER_LEN], &first);
    rig.send(DATA + 0x1000, [0; HEADER_LEN], &second);
    assert!(rig.run_tx());
    let sent = rig.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(&sent[0][HEADER_LEN..], &first[..]);
    assert_eq!(&sent[1][HEADER_LEN..], &second[..]);
    assert_eq!(rig.tx.used_idx(&rig.memory), 2);
    assert_eq!(rig.tx.used(&rig.memory, 1), (2, 0));
    assert_eq!(rig.net.counters.tx_frames.load(Ordering::Relaxed), 2);
    assert_eq!(rig.net.counters.tx_bytes.load(Ordering::Relaxed), 60 + 1514);
}

#[test]
fn a_full_backend_leaves_the_frame_in_the_ring_until_it_has_room() {
    let mut rig = rig(0);
    rig.net.backend().full.store(true, Ordering::Relaxed);
    rig.send(DATA, [0; HEADER_LEN], &frame(100, 3));
    assert!(!rig.run_tx());
    assert!(rig.net.tx_blocked());
    assert_eq!(
        rig.tx.used_idx(&rig.memory),
        0,
        "nothing used, nothing dropped"
    );
    rig.net.backend().full.store(false, Ordering::Relaxed);
    assert!(rig.run_tx());
    assert!(!rig.net.tx_blocked());
    assert_eq!(rig.sent().len(), 1);
    assert_eq!(rig.net.counters.tx_dropped.load(Ordering::Relaxed), 0);
    assert_eq!(rig.net.counters.tx_blocked.load(Ordering::Relaxed), 1);
}

#[test]
fn malformed_frames_and_unnegotiated_offloads_are_dropped_and_counted() {
    let mut rig = rig(bit(VIRTIO_NET_F_CSUM));
    let payload = frame(100, 4);
    // A writable buffer in a transmit chain.
    rig.tx.add_chain(&rig.memory, &[(DATA, 200, true)]);
    // Shorter than a header.
    rig.tx.add_chain(&rig.memory, &[(DATA, 8, false)]);
    // Outside guest memory.
    rig.tx.add_chain(&rig.memory, &[(1 << 40, 200, false)]);
    // TSO without HOST_TSO4.
    let mut tso = [0u8; HEADER_LEN];
    tso[0] = NEEDS_CSUM;
    tso[1] = GSO_TCPV4;
    rig.send(DATA + 0x1000, tso, &payload);
    // A checksum position past the frame's end.
    let mut beyond = [0u8; HEADER_LEN];
    beyond[0] = NEEDS_CSUM;
    beyond[6..8].copy_from_slice(&90u16.to_le_bytes());
    beyond[8..10].copy_from_slice(&16u16.to_le_bytes());
    rig.send(DATA + 0x2000, beyond, &payload);
    // Unknown header flags.
    let mut flags = [0u8; HEADER_LEN];
    flags[0] = 0x80;
    rig.send(DATA + 0x3000, flags, &payload);
    // And a good one, with a checksum request the driver may make.
    let mut good = [0u8; HEADER_LEN];
    good[0] = NEEDS_CSUM;
    good[6..8].copy_from_slice(&34u16.to_le_bytes());
    good[8..10].copy_from_slice(&6u16.to_le_bytes());
    rig.send(DATA + 0x4000, good, &payload);
    assert!(rig.run_tx());
    assert_eq!(
        rig.tx.used_idx(&rig.memory),
        7,
        "every chain gets an answer"
    );
    assert_eq!(rig.net.counters.tx_dropped.load(Ordering::Relaxed), 6);
    let sent = rig.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(&sent[0][HEADER_LEN..], &payload[..]);
}

#[test]
fn the_backend_is_read_only_while_buffers_are_posted() {
    let mut rig = rig(0);
    rig.arrive(from_tap(&frame(60, 5)));
    assert!(!rig.run_rx());
    assert!(rig.net.rx_starved());
    assert_eq!(
        rig.net.backend().incoming.lock().unwrap().len(),
        1,
        "the frame waits"
    );
    rig.rx.add_chain(&rig.memory, &[(DATA, 2048, true)]);
    assert!(rig.run_rx());
    assert_eq!(rig.rx.used(&rig.memory, 0), (0, (HEADER_LEN + 60) as u32));
    let delivered = rig.read(DATA, HEADER_LEN + 60);
    assert_eq!(&delivered[HEADER_LEN..], &frame(60, 5)[..]);
    assert_eq!(
        &delivered[10..12],
        &[1, 0],
        "num_buffers is 1 without MRG_RXBUF"
    );
    assert!(rig.net.rx_starved(), "the queue is empty again");
}

#[test]
fn an_empty_backend_leaves_the_buffers_posted() {
    let mut rig = rig(0);
    rig.rx.add_chain(&rig.memory, &[(DATA, 2048, true)]);
    assert!(!rig.run_rx());
    assert!(!rig.net.rx_starved());
    assert_eq!(rig.rx.used_idx(&rig.memory), 0);
    rig.arrive(from_tap(&frame(42, 6)));
    assert!(rig.run_rx());
    assert_eq!(rig.rx.used(&rig.memory, 0), (0, (HEADER_LEN + 42) as u32));
}

#[test]
fn merged_buffers_take_as_many_chains_as_the_frame_needs() {
    let mut rig = rig(bit(VIRTIO_NET_F_MRG_RXBUF));
    for n in 0..4u64 {
        rig.rx
            .add_chain(&rig.memory, &[(DATA + n * 0x1000, 1024, true)]);
    }
    let payload = frame(1500, 7);
    rig.arrive(from_tap(&payload));
    rig.arrive(from_tap(&frame(100, 8)));
    assert!(rig.run_rx());
    // 1512 bytes: 1024 + 488; the next frame takes the third chain, the fourth stays.
    assert_eq!(rig.rx.used_idx(&rig.memory), 3);
    let lens: Vec<u32> = (0..3).map(|n| rig.rx.used(&rig.memory, n).1).collect();
    assert_eq!(lens, [1024, 488, (HEADER_LEN + 100) as u32]);
    let first = rig.read(DATA, 1024);
    assert_eq!(&first[10..12], &[2, 0], "num_buffers");
    let mut whole = first[HEADER_LEN..].to_vec();
    whole.extend(rig.read(DATA + 0x1000, 488));
    assert_eq!(whole, payload);
    assert_eq!(&rig.read(DATA + 0x2000, HEADER_LEN)[10..12], &[1, 0]);
    assert!(!rig.net.rx_starved());
    assert_eq!(rig.net.counters.rx_frames.load(Ordering::Relaxed), 2);
}

#[test]
fn chains_the_device_cannot_write_are_used_empty_and_counted() {
    let mut rig = rig(0);
    rig.rx.add_chain(&rig.memory, &[(DATA, 2048, false)]);
    rig.rx.add_chain(&rig.memory, &[(DATA, 4, true)]);
    rig.rx
        .add_chain(&rig.memory, &[(DATA + 0x1000, 2048, true)]);
    rig.arrive(from_tap(&frame(60, 9)));
    assert!(rig.run_rx());
    assert_eq!(rig.rx.used_idx(&rig.memory), 3);
    assert_eq!(rig.rx.used(&rig.memory, 0).1, 0);
    assert_eq!(rig.rx.used(&rig.memory, 1).1, 0);
    assert_eq!(rig.rx.used(&rig.memory, 2).1, (HEADER_LEN + 60) as u32);
    assert_eq!(rig.net.counters.rx_dropped.load(Ordering::Relaxed), 2);
}

#[test]
fn activation_tells_the_backend_and_the_configuration_space_has_the_mac() {
    let rig = rig(bit(VIRTIO_NET_F_GUEST_CSUM));
    assert_eq!(
        rig.net.backend().features.load(Ordering::Relaxed),
        VIRTIO_F_VERSION_1 | bit(VIRTIO_NET_F_GUEST_CSUM)
    );
    let mut config = [0u8; 12];
    rig.net.read_config(0, &mut config);
    assert_eq!(&config[..6], &MAC);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), 1, "link up");
    assert_eq!(
        u16::from_le_bytes([config[8], config[9]]),
        1,
        "one queue pair"
    );
    assert_eq!(u16::from_le_bytes([config[10], config[11]]), MTU);
    let offered = rig.net.features();
    for feature in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_STATUS,
    ] {
        assert_ne!(offered & bit(feature), 0);
    }
}

static TX_CLOCK_NS: AtomicU64 = AtomicU64::new(0);
static RX_CLOCK_NS: AtomicU64 = AtomicU64::new(0);

fn tx_clock() -> u64 {
    TX_CLOCK_NS.load(Ordering::Relaxed)
}

fn rx_clock() -> u64 {
    RX_CLOCK_NS.load(Ordering::Relaxed)
}

/// One operation per 100 ms.
fn one_per_100ms() -> Option<RateLimiter> {
    RateLimiterConfig {
        bandwidth: None,
        ops: Some(TokenBucketConfig {
            size: 1,
            one_time_burst: None,
            refill_time: 100,
        }),
    }
    .build(0)
}

#[test]
fn a_limited_transmit_queue_waits_and_drops_nothing() {
    let mut rig = rig_with(0, [None, one_per_100ms()], tx_clock);
    for n in 0..3 {
        rig.send(DATA + n * 0x1000, [0; HEADER_LEN], &frame(60, n as u8));
    }
    assert!(rig.run_tx());
    assert_eq!(rig.sent().len(), 1);
    assert_eq!(rig.net.retry_after_ns(), Some(100_000_000));
    assert_eq!(
        rig.tx.used_idx(&rig.memory),
        1,
        "the others stay in the ring"
    );
    TX_CLOCK_NS.store(100_000_000, Ordering::Relaxed);
    assert!(rig.run_tx());
    TX_CLOCK_NS.store(200_000_000, Ordering::Relaxed);
    assert!(rig.run_tx());
    assert_eq!(rig.sent().len(), 3);
    assert_eq!(rig.net.counters.tx_dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn a_limited_receive_queue_leaves_frames_in_the_backend() {
    let mut rig = rig_with(0, [one_per_100ms(), None], rx_clock);
    for n in 0..3u64 {
        rig.rx
            .add_chain(&rig.memory, &[(DATA + n * 0x1000, 2048, true)]);
    }
    for n in 0..2 {
        rig.arrive(from_tap(&frame(60, n)));
    }
    assert!(rig.run_rx());
    assert_eq!(rig.rx.used_idx(&rig.memory), 1);
    assert_eq!(
        rig.net.backend().incoming.lock().unwrap().len(),
        1,
        "not read, not dropped"
    );
    assert_eq!(rig.net.retry_after_ns(), Some(100_000_000));
    RX_CLOCK_NS.store(100_000_000, Ordering::Relaxed);
    assert!(rig.run_rx());
    assert_eq!(rig.rx.used_idx(&rig.memory), 2);
    assert_eq!(rig.net.counters.rx_dropped.load(Ordering::Relaxed), 0);
    assert!(!rig.net.rx_starved(), "a buffer is still posted");
}

#[test]
fn looking_at_an_empty_backend_costs_a_limited_queue_nothing() {
    let mut rig = rig_with(0, [one_per_100ms(), None], no_clock);
    rig.rx.add_chain(&rig.memory, &[(DATA, 2048, true)]);
    for _ in 0..3 {
        assert!(!rig.run_rx());
    }
    rig.arrive(from_tap(&frame(60, 1)));
    assert!(
        rig.run_rx(),
        "the one operation of the bucket is still there"
    );
    assert_eq!(rig.net.counters.rx_frames.load(Ordering::Relaxed), 1);
}

#[test]
fn a_frame_longer_than_the_buffers_is_dropped_not_handed_over_cut() {
    let mut rig = rig(0);
    rig.net.backend().overlong.store(true, Ordering::Relaxed);
    rig.rx.add_chain(&rig.memory, &[(DATA, 256, true)]);
    rig.arrive(from_tap(&frame(1000, 2)));
    rig.arrive(from_tap(&frame(100, 3)));
    assert!(rig.run_rx());
    assert_eq!(rig.net.counters.rx_dropped.load(Ordering::Relaxed), 1);
    // The chain went to the next frame, which fits.
    assert_eq!(rig.rx.used_idx(&rig.memory), 1);
    assert_eq!(rig.rx.used(&rig.memory, 0).1, (HEADER_LEN + 100) as u32);
}

#[test]
fn saved_state_brings_back_the_accepted_offloads_and_counts() {
    use crate::devices::virtio::state::DeviceState;
    let device = Net::new(Fake::default(), MAC, None, None, || 0);
    let acked = VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_CSUM | 1 << VIRTIO_NET_F_HOST_TSO4;
    device.activate(acked);
    device.counters.tx_frames.store(7, Ordering::Relaxed);
    let saved = device.save_device();
    let text = serde_json::to_string(&saved).unwrap();
    let saved: state::SavedNet = serde_json::from_str(&text).unwrap();
    let fresh = Net::new(Fake::default(), MAC, None, None, || 0);
    fresh.check_device("virtio-net", &saved).unwrap();
    fresh.restore_device(&saved);
    assert_eq!(fresh.backend().features.load(Ordering::Relaxed), acked);
    assert_eq!(fresh.counters.tx_frames.load(Ordering::Relaxed), 7);
    assert!(fresh.acked(VIRTIO_NET_F_HOST_TSO4));
    let impossible = state::SavedNet {
        acked: 1 << 63,
        ..saved
    };
    assert!(fresh.check_device("virtio-net", &impossible).is_err());
}
