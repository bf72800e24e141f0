//! Unit tests for the transport and the devices, against hand-built queues: good
//! requests, and the malformed chains a guest may build.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::block::{Block, SECTOR};
use super::console::Console;
use super::driver::{DriverQueue, NEXT, WRITE};
use super::mmio::{MmioTransport, QUEUE_NOTIFY};
use super::rng::Rng;
use super::QueueNotify;
use super::{VirtioDevice, VIRTIO_F_VERSION_1};
use crate::bus::{Access, BusDevice};
use crate::irq::{CountingLine, InterruptLine};

const QUEUE_BASE: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;

pub(super) fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
}

fn disk(sectors: u64) -> Vec<u8> {
    (0..sectors * SECTOR).map(|i| (i / SECTOR) as u8).collect()
}

fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[0..4].copy_from_slice(&kind.to_le_bytes());
    bytes[8..16].copy_from_slice(&sector.to_le_bytes());
    bytes
}

/// Sends one block request: header at DATA, data buffers, status byte; returns
/// (status, used length).
fn block_request(
    device: &Block<Vec<u8>>,
    memory: &GuestMemoryMmap,
    kind: u32,
    sector: u64,
    data: Option<(u32, bool)>,
) -> (u8, u32) {
    let mut queue = DriverQueue::new(QUEUE_BASE, 16);
    memory
        .write_slice(&header(kind, sector), GuestAddress(DATA))
        .unwrap();
    let mut buffers = vec![(DATA, 16, false)];
    if let Some((len, writable)) = data {
        buffers.push((DATA + 0x1000, len, writable));
    }
    buffers.push((DATA + 0x10_0000, 1, true));
    queue.add_chain(memory, &buffers);
    let mut device_queue = queue.device_queue(128);
    assert!(device.process_queue(0, &mut device_queue, memory).unwrap());
    let status: u8 = memory.read_obj(GuestAddress(DATA + 0x10_0000)).unwrap();
    (status, queue.used(memory, 0).1)
}

#[test]
fn block_reads_writes_flushes_and_identifies() {
    let memory = memory();
    let device = Block::new(disk(16), false, "hushvm-test-disk");
    assert_eq!(
        block_request(&device, &memory, 0, 3, Some((1024, true))),
        (0, 1025)
    );
    let mut read = vec![0u8; 1024];
    memory
        .read_slice(&mut read, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert!(read[..512].iter().all(|b| *b == 3) && read[512..].iter().all(|b| *b == 4));

    memory
        .write_slice(&[0xab; 512], GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(
        block_request(&device, &memory, 1, 15, Some((512, false))),
        (0, 1)
    );
    assert!(device.with_disk(|disk| disk[15 * 512..].iter().all(|b| *b == 0xab)));
    assert_eq!(block_request(&device, &memory, 4, 0, None), (0, 1));

    assert_eq!(
        block_request(&device, &memory, 8, 0, Some((20, true))),
        (0, 21)
    );
    let mut id = [0u8; 20];
    memory
        .read_slice(&mut id, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(&id[..16], b"hushvm-test-disk");
    assert_eq!(device.features() & VIRTIO_F_VERSION_1, VIRTIO_F_VERSION_1);
    let mut capacity = [0u8; 8];
    device.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 16);
}

#[test]
fn block_rejects_short_odd_out_of_range_and_readonly_requests() {
    let memory = memory();
    let device = Block::new(disk(16), false, "d");
    assert_eq!(
        block_request(&device, &memory, 0, 16, Some((512, true))).0,
        1,
        "past the end"
    );
    assert_eq!(
        block_request(&device, &memory, 0, 15, Some((1024, true))).0,
        1,
        "runs past the end"
    );
    assert_eq!(
        block_request(&device, &memory, 0, 0, Some((100, true))).0,
        1,
        "not whole sectors"
    );
    assert_eq!(
        block_request(&device, &memory, 0, u64::MAX / 256, Some((512, true))).0,
        1,
        "overflow"
    );
    assert_eq!(
        block_request(&device, &memory, 99, 0, None).0,
        2,
        "unsupported type"
    );
    let readonly = Block::new(disk(16), true, "d");
    assert_eq!(
        block_request(&readonly, &memory, 1, 0, Some((512, false))).0,
        1,
        "read-only"
    );
    assert_eq!(readonly.with_disk(|disk| disk[0]), 0);
    assert_ne!(readonly.features() & (1 << 5), 0, "VIRTIO_BLK_F_RO");
}

/// Runs one chain through a block device and returns the used length.
fn run_raw_chain(build: impl FnOnce(&GuestMemoryMmap, &mut DriverQueue)) -> u32 {
    let memory = memory();
    let device = Block::new(disk(16), false, "d");
    let mut queue = DriverQueue::new(QUEUE_BASE, 8);
    build(&memory, &mut queue);
    let mut device_queue = queue.device_queue(128);
    device.process_queue(0, &mut device_queue, &memory).unwrap();
    assert_eq!(queue.used_idx(&memory), 1, "the chain is used, not dropped");
    queue.used(&memory, 0).1
}

#[test]
fn malformed_chains_get_an_answer_and_the_device_goes_on() {
    // A chain that loops back on itself.
    let looped = run_raw_chain(|memory, queue| {
        memory
            .write_slice(&header(0, 0), GuestAddress(DATA))
            .unwrap();
        queue.write_descriptor(memory, 0, DATA, 16, NEXT, 1);
        queue.write_descriptor(memory, 1, DATA + 0x1000, 512, WRITE | NEXT, 0);
        queue.publish(memory, 0);
    });
    assert_eq!(
        looped, 1,
        "cut at the queue size, answered with an I/O error status"
    );
    // A buffer outside guest memory.
    let outside = run_raw_chain(|memory, queue| {
        memory
            .write_slice(&header(0, 0), GuestAddress(DATA))
            .unwrap();
        queue.add_chain(
            memory,
            &[
                (DATA, 16, false),
                (1 << 40, 512, true),
                (DATA + 0x2000, 1, true),
            ],
        );
    });
    assert_eq!(outside, 0);
    // No writable byte for the status.
    let no_status = run_raw_chain(|memory, queue| {
        memory
            .write_slice(&header(0, 0), GuestAddress(DATA))
            .unwrap();
        queue.add_chain(memory, &[(DATA, 16, false)]);
    });
    assert_eq!(no_status, 0);
    // A header that is too short, and a read buffer the device may not write.
    let short = run_raw_chain(|memory, queue| {
        queue.add_chain(memory, &[(DATA, 8, false), (DATA + 0x2000, 1, true)]);
    });
    assert_eq!(short, 1, "status IOERR only");
    let wrong_direction = run_raw_chain(|memory, queue| {
        memory
            .write_slice(&header(0, 0), GuestAddress(DATA))
            .unwrap();
        queue.add_chain(
            memory,
            &[
                (DATA, 16, false),
                (DATA + 0x1000, 512, false),
                (DATA + 0x2000, 1, true),
            ],
        );
    });
    assert_eq!(
        wrong_direction, 1,
        "a read into a read-only buffer moves no data"
    );
    // A descriptor index past the table.
    let memory = memory();
    let device = Block::new(disk(16), false, "d");
    let mut queue = DriverQueue::new(QUEUE_BASE, 8);
    queue.publish(&memory, 200);
    let mut device_queue = queue.device_queue(128);
    assert!(device.process_queue(0, &mut device_queue, &memory).is_err());
}

#[test]
fn rng_fills_buffers_and_console_forwards_output() {
    let memory = memory();
    let rng = Rng::new(std::io::repeat(0x5a));
    let mut queue = DriverQueue::new(QUEUE_BASE, 8);
    queue.add_chain(&memory, &[(DATA, 16, true), (DATA + 16, 16, true)]);
    let mut device_queue = queue.device_queue(64);
    assert!(rng.process_queue(0, &mut device_queue, &memory).unwrap());
    assert_eq!(queue.used(&memory, 0).1, 32);
    let mut bytes = [0u8; 32];
    memory.read_slice(&mut bytes, GuestAddress(DATA)).unwrap();
    assert_eq!(bytes, [0x5a; 32]);

    let console = Console::new(Vec::new());
    memory.write_slice(b"hello", GuestAddress(DATA)).unwrap();
    let mut queue = DriverQueue::new(QUEUE_BASE, 8);
    queue.add_chain(&memory, &[(DATA, 5, false)]);
    let mut device_queue = queue.device_queue(64);
    assert!(console
        .process_queue(1, &mut device_queue, &memory)
        .unwrap());
    assert_eq!(console.with_output(|output| output.clone()), b"hello");
}

#[test]
fn console_input_fills_posted_receive_buffers_only() {
    let memory = memory();
    let console = Console::new(Vec::new());
    let mut queue = DriverQueue::new(QUEUE_BASE, 8);
    let mut device_queue = queue.device_queue(64);
    assert_eq!(console.receive(b"typed"), 5);
    assert!(
        !console
            .process_queue(0, &mut device_queue, &memory)
            .unwrap(),
        "no buffer yet"
    );
    queue.add_chain(&memory, &[(DATA, 3, true)]);
    queue.add_chain(&memory, &[(DATA + 16, 8, true)]);
    queue.add_chain(&memory, &[(DATA + 32, 8, true)]);
    assert!(console
        .process_queue(0, &mut device_queue, &memory)
        .unwrap());
    assert_eq!(queue.used_idx(&memory), 2, "the third buffer stays posted");
    assert_eq!((queue.used(&memory, 0).1, queue.used(&memory, 1).1), (3, 2));
    let mut bytes = [0u8; 5];
    memory
        .read_slice(&mut bytes[..3], GuestAddress(DATA))
        .unwrap();
    memory
        .read_slice(&mut bytes[3..], GuestAddress(DATA + 16))
        .unwrap();
    assert_eq!(&bytes, b"typed");
}

pub(super) fn write32(transport: &mut impl BusDevice, offset: u64, value: u32) {
    transport.access(offset, Access::Write(&value.to_le_bytes()));
}

pub(super) fn read32(transport: &mut impl BusDevice, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    transport.access(offset, Access::Read(&mut data));
    u32::from_le_bytes(data)
}

/// Drives a transport as a driver would, up to DRIVER_OK with queue 0 set up.
fn bring_up<D: VirtioDevice>(
    transport: &mut MmioTransport<D>,
    queue: &DriverQueue,
    features_high: u32,
) -> u32 {
    write32(transport, 0x070, 1 | 2);
    write32(transport, 0x024, 1);
    write32(transport, 0x020, features_high);
    write32(transport, 0x070, 1 | 2 | 8);
    let status = read32(transport, 0x070);
    write32(transport, 0x030, 0);
    write32(transport, 0x038, u32::from(queue.size()));
    let (desc, avail, used) = queue.addresses();
    write32(transport, 0x080, desc as u32);
    write32(transport, 0x090, avail as u32);
    write32(transport, 0x0a0, used as u32);
    write32(transport, 0x044, 1);
    write32(transport, 0x070, status | 4);
    status
}

#[test]
fn the_transport_negotiates_runs_queues_and_interrupts() {
    let memory = memory();
    let line = Arc::new(CountingLine::default());
    let mut transport =
        MmioTransport::new(Rng::new(std::io::repeat(1)), memory.clone(), line.clone());
    assert_eq!(read32(&mut transport, 0x000), 0x7472_6976);
    assert_eq!(read32(&mut transport, 0x004), 2);
    assert_eq!(read32(&mut transport, 0x008), 4);
    write32(&mut transport, QUEUE_NOTIFY, 0);
    assert_eq!(
        (transport.doorbells(), transport.notifications()),
        (1, 0),
        "a doorbell before DRIVER_OK is counted as rung, and finds no work"
    );
    write32(&mut transport, 0x014, 1);
    assert_eq!(
        read32(&mut transport, 0x010),
        1,
        "VERSION_1 in the high word"
    );
    write32(&mut transport, 0x030, 0);
    assert_eq!(read32(&mut transport, 0x034), 64);
    write32(&mut transport, 0x030, 1);
    assert_eq!(read32(&mut transport, 0x034), 0, "no queue 1");

    let mut queue = DriverQueue::new(QUEUE_BASE, 8);
    assert_eq!(
        bring_up(&mut transport, &queue, 1) & 8,
        8,
        "FEATURES_OK accepted"
    );
    queue.add_chain(&memory, &[(DATA, 8, true)]);
    write32(&mut transport, QUEUE_NOTIFY, 0);
    assert_eq!(queue.used_idx(&memory), 1);
    assert_eq!(line.pulses(), 1);
    assert_eq!(read32(&mut transport, 0x060), 1, "used-buffer interrupt");
    write32(&mut transport, 0x064, 1);
    assert_eq!(read32(&mut transport, 0x060), 0, "acknowledged");

    // A length-0 doorbell does not say which queue: every queue is looked at.
    queue.add_chain(&memory, &[(DATA, 8, true)]);
    transport.notify(None);
    assert_eq!(queue.used_idx(&memory), 2);
    assert_eq!(transport.notifications(), 2);
    assert_eq!(transport.doorbells(), 3);

    write32(&mut transport, 0x070, 0);
    assert_eq!(read32(&mut transport, 0x070), 0, "reset");
    write32(&mut transport, 0x030, 0);
    assert_eq!(read32(&mut transport, 0x044), 0, "queues reset too");
}

#[test]
fn a_polled_transport_sees_published_buffers_once_and_only_when_ready() {
    let memory = memory();
    let line = Arc::new(CountingLine::default());
    let mut transport =
        MmioTransport::new(Rng::new(std::io::repeat(1)), memory.clone(), line.clone());
    let mut queue = DriverQueue::new(QUEUE_BASE, 8);
    assert!(!transport.avail_moved(), "no driver yet");
    queue.add_chain(&memory, &[(DATA, 8, true)]);
    assert!(!transport.avail_moved(), "the queue is not ready");
    bring_up(&mut transport, &queue, 1);
    assert!(
        transport.avail_moved(),
        "published before DRIVER_OK, seen now"
    );
    assert!(!transport.avail_moved(), "seen once");
    transport.notify(None);
    assert_eq!(queue.used_idx(&memory), 1);
    assert!(
        !transport.avail_moved(),
        "serving does not move the available index"
    );
    queue.add_chain(&memory, &[(DATA, 8, true)]);
    assert!(
        transport.avail_moved(),
        "a new buffer is seen without a doorbell"
    );
    transport.notify(None);
    assert_eq!(queue.used_idx(&memory), 2);
    assert_eq!(line.pulses(), 2);
}

#[test]
fn the_transport_refuses_features_without_version_1_and_breaks_on_bad_rings() {
    let memory = memory();
    let line = Arc::new(CountingLine::default());
    let mut transport =
        MmioTransport::new(Rng::new(std::io::repeat(1)), memory.clone(), line.clone());
    let queue = DriverQueue::new(QUEUE_BASE, 8);
    assert_eq!(
        bring_up(&mut transport, &queue, 0) & 8,
        0,
        "legacy drivers are refused"
    );
    write32(&mut transport, QUEUE_NOTIFY, 0);
    assert_eq!(
        line.pulses(),
        0,
        "nothing runs before FEATURES_OK and DRIVER_OK"
    );

    let mut transport =
        MmioTransport::new(Rng::new(std::io::repeat(1)), memory.clone(), line.clone());
    let mut queue = DriverQueue::new(QUEUE_BASE, 8);
    bring_up(&mut transport, &queue, 1);
    queue.publish(&memory, 300);
    write32(&mut transport, QUEUE_NOTIFY, 0);
    assert_ne!(read32(&mut transport, 0x070) & 64, 0, "DEVICE_NEEDS_RESET");
    assert_eq!(
        read32(&mut transport, 0x060) & 2,
        2,
        "configuration-change interrupt"
    );
    // Narrow accesses below the configuration space read zero and do nothing.
    let mut narrow = [0xffu8; 2];
    transport.access(0, Access::Read(&mut narrow));
    assert_eq!(narrow, [0, 0]);
}
