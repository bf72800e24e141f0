//! A virtio-blk disk on virtio-mmio, saved with requests done and one published but
//! not yet rung, restored into a fresh transport over a copy of guest memory and of the
//! disk, and driven on: both answer the same.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::persist::testing::{restores_identically, run, through_json, Step};
use crate::devices::persist::{open, restore};
use crate::devices::virtio::block::{Block, SECTOR};
use crate::devices::virtio::driver::DriverQueue;
use crate::devices::virtio::mmio::QUEUE_NOTIFY;
use crate::irq::{CountingLine, InterruptLine};

const MEMORY: usize = 4 << 20;
const QUEUE_BASE: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const DISK_SECTORS: u64 = 16;
const STATUS: u64 = 0x070;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;

type Disk = MmioTransport<Block<Vec<u8>>>;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY)]).unwrap()
}

fn copy_of(memory: &GuestMemoryMmap) -> GuestMemoryMmap {
    let mut bytes = vec![0u8; MEMORY];
    memory.read_slice(&mut bytes, GuestAddress(0)).unwrap();
    let copy = self::memory();
    copy.write_slice(&bytes, GuestAddress(0)).unwrap();
    copy
}

fn write32(offset: u64, value: u32) -> Step {
    Step::Write(offset, value.to_le_bytes().to_vec())
}

/// The driver's side up to DRIVER_OK with queue 0 at `queue`.
fn bring_up(queue: &DriverQueue) -> Vec<Step> {
    let (desc, avail, used) = queue.addresses();
    vec![
        write32(STATUS, 1 | 2),
        write32(0x024, 1),
        write32(0x020, 1),
        write32(STATUS, 1 | 2 | 8),
        write32(0x030, 0),
        write32(0x038, u32::from(queue.size())),
        write32(0x080, desc as u32),
        write32(0x090, avail as u32),
        write32(0x0a0, used as u32),
        write32(0x044, 1),
        write32(STATUS, 1 | 2 | 4 | 8),
    ]
}

/// Request `n`: a write of sector `n` (filled with `n`) or a read of it, each with its
/// own header, data and status buffers.
fn request(queue: &mut DriverQueue, memory: &GuestMemoryMmap, n: u64, write: bool) {
    let base = DATA + n * 0x2000;
    let mut header = [0u8; 16];
    header[0] = u8::from(write);
    header[8..16].copy_from_slice(&n.to_le_bytes());
    memory.write_slice(&header, GuestAddress(base)).unwrap();
    if write {
        memory
            .write_slice(&[n as u8; SECTOR as usize], GuestAddress(base + 0x100))
            .unwrap();
    }
    let data = (base + 0x100, SECTOR as u32, !write);
    queue.add_chain(memory, &[(base, 16, false), data, (base + 0x1000, 1, true)]);
}

/// The requests before the save: two served, the third published without a doorbell.
fn first_requests(queue: &mut DriverQueue, memory: &GuestMemoryMmap, disk: &mut Disk) {
    request(queue, memory, 1, true);
    request(queue, memory, 2, false);
    run(disk, &[write32(QUEUE_NOTIFY, 0)]);
    request(queue, memory, 3, true);
}

fn disk_over(memory: &GuestMemoryMmap, contents: Vec<u8>) -> (Disk, Arc<CountingLine>) {
    let line = Arc::new(CountingLine::default());
    let device = Block::new(contents, false, "blk0");
    (
        MmioTransport::new(device, memory.clone(), line.clone()),
        line,
    )
}

fn contents() -> Vec<u8> {
    (0..DISK_SECTORS * SECTOR)
        .map(|i| (i / SECTOR) as u8 ^ 0xa0)
        .collect()
}

#[test]
fn a_disk_with_requests_done_and_one_in_flight_goes_on_identically() {
    let memory_a = memory();
    let (mut original, line) = disk_over(&memory_a, contents());
    let mut queue_a = DriverQueue::new(QUEUE_BASE, 8);
    run(&mut original, &bring_up(&queue_a));
    first_requests(&mut queue_a, &memory_a, &mut original);
    assert_eq!(queue_a.used_idx(&memory_a), 2);
    assert_eq!(line.pulses(), 1);

    // The snapshot: guest memory and the disk are copied; the device state is saved.
    let memory_b = copy_of(&memory_a);
    let (mut fresh, fresh_line) = disk_over(&memory_b, original.device().with_disk(Vec::clone));
    // The driver's own bookkeeping, as it stood (replayed against scratch memory).
    let mut queue_b = DriverQueue::new(QUEUE_BASE, 8);
    let scratch = memory();
    let (mut scratch_disk, _) = disk_over(&scratch, contents());
    run(&mut scratch_disk, &bring_up(&queue_b));
    first_requests(&mut queue_b, &scratch, &mut scratch_disk);

    let steps = [
        Step::Read(STATUS, 4),
        Step::Read(INTERRUPT_STATUS, 4),
        write32(INTERRUPT_ACK, 1),
        // The doorbell for the request in flight at the save.
        write32(QUEUE_NOTIFY, 0),
        Step::Read(INTERRUPT_STATUS, 4),
        Step::Read(0x044, 4),
        Step::Read(0x100, 8),
    ];
    let replies = restores_identically(&mut original, &mut fresh, &steps);
    assert_eq!(replies[0].0, [0x0f, 0, 0, 0], "DRIVER_OK");
    assert_eq!(
        replies[1].0,
        [1, 0, 0, 0],
        "the first interrupt, not yet acknowledged"
    );
    assert_eq!(
        replies[4].0,
        [1, 0, 0, 0],
        "the request in flight was served"
    );
    assert_eq!(replies[6].0, DISK_SECTORS.to_le_bytes(), "capacity");
    assert_eq!(queue_b.used_idx(&memory_b), 3);
    assert_eq!(fresh_line.pulses(), 1, "the restored one's own interrupt");
    assert_eq!(fresh.notifications(), original.notifications());

    request(&mut queue_a, &memory_a, 4, false);
    request(&mut queue_b, &memory_b, 4, false);
    let doorbell = [write32(QUEUE_NOTIFY, 0), Step::Read(INTERRUPT_STATUS, 4)];
    assert_eq!(run(&mut fresh, &doorbell), run(&mut original, &doorbell));
    for n in 0..4 {
        assert_eq!(
            queue_b.used(&memory_b, n),
            queue_a.used(&memory_a, n),
            "used entry {n}"
        );
    }
    let mut a = vec![0u8; 0x10000];
    let mut b = vec![0u8; 0x10000];
    memory_a.read_slice(&mut a, GuestAddress(DATA)).unwrap();
    memory_b.read_slice(&mut b, GuestAddress(DATA)).unwrap();
    assert!(a == b, "the same data and statuses in guest memory");
    let disk_a = original.device().with_disk(Vec::clone);
    assert!(fresh.device().with_disk(|b| *b == disk_a), "the same disk");
    assert_eq!(
        &b[0x4000 + 0x100..0x4000 + 0x104],
        [0xa2; 4],
        "sector 2 was read"
    );
}

#[test]
fn a_restore_over_another_disk_or_an_impossible_queue_is_refused() {
    let memory = memory();
    let (mut original, _) = disk_over(&memory, contents());
    let queue = DriverQueue::new(QUEUE_BASE, 8);
    run(&mut original, &bring_up(&queue));
    let saved = through_json(&original);
    let (mut smaller, _) = disk_over(&memory, vec![0; SECTOR as usize]);
    let error = restore(&mut smaller, &saved).unwrap_err().to_string();
    assert!(error.contains("configuration byte 0"), "{error}");
    let mut state = open::<Disk>(&saved).unwrap();
    state.common.queues[0].size = 6;
    let (mut fresh, _) = disk_over(&memory, contents());
    assert!(matches!(
        fresh.restore(&state),
        Err(StateError::Invalid { .. })
    ));
    assert_eq!(
        run(&mut fresh, &[Step::Read(STATUS, 4)])[0].0,
        [0; 4],
        "unchanged"
    );
    state.common.queues.push(state.common.queues[0]);
    assert!(
        fresh.restore(&state).is_err(),
        "a queue the device does not have"
    );
}

#[test]
fn console_input_waiting_for_receive_buffers_survives() {
    use crate::devices::virtio::console::Console;
    type Terminal = MmioTransport<Console<Vec<u8>>>;
    let over = |memory: &GuestMemoryMmap| -> Terminal {
        let line = Arc::new(CountingLine::default());
        MmioTransport::new(Console::new(Vec::new()), memory.clone(), line)
    };
    let memory_a = memory();
    let mut original = over(&memory_a);
    let mut queue_a = DriverQueue::new(QUEUE_BASE, 8);
    run(&mut original, &bring_up(&queue_a));
    // Typed before the driver posted any receive buffer.
    assert_eq!(original.device().receive(b"typed ahead"), 11);

    let memory_b = copy_of(&memory_a);
    let mut fresh = over(&memory_b);
    let mut queue_b = DriverQueue::new(QUEUE_BASE, 8);
    restores_identically(&mut original, &mut fresh, &[]);
    for (queue, memory, device) in [
        (&mut queue_a, &memory_a, &mut original),
        (&mut queue_b, &memory_b, &mut fresh),
    ] {
        queue.add_chain(memory, &[(DATA, 64, true)]);
        run(device, &[write32(QUEUE_NOTIFY, 0)]);
    }
    assert_eq!(queue_b.used(&memory_b, 0), (0, 11));
    assert_eq!(queue_b.used(&memory_b, 0), queue_a.used(&memory_a, 0));
    let mut typed = [0u8; 11];
    memory_b.read_slice(&mut typed, GuestAddress(DATA)).unwrap();
    assert_eq!(&typed, b"typed ahead");
}
