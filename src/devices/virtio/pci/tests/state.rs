//! A virtio-blk function saved mid-use (BAR 0 moved, MSI-X on with the queue's vector
//! masked and pending, a request served and one published without its doorbell) and
//! restored into a fresh function over a copy of guest memory and of the disk.

use super::*;
use crate::devices::pci::config::BarKind;
use crate::devices::persist::StateError;

type BlockTransport = VirtioPciTransport<Block<Vec<u8>>>;

fn block_over(memory: GuestMemoryMmap, disk: Vec<u8>) -> Harness<Block<Vec<u8>>> {
    let sink = Arc::new(Sink::default());
    let line = Arc::new(CountingLine::default());
    let device = Block::new(disk, false, "blk0");
    let transport =
        VirtioPciTransport::new(device, memory.clone(), sink.clone(), line.clone()).unwrap();
    Harness {
        transport,
        memory,
        sink,
        line,
    }
}

fn copy_of(memory: &GuestMemoryMmap) -> GuestMemoryMmap {
    let mut bytes = vec![0u8; 4 << 20];
    memory.read_slice(&mut bytes, GuestAddress(0)).unwrap();
    let copy = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    copy.write_slice(&bytes, GuestAddress(0)).unwrap();
    copy
}

/// A read of sector `n` into its own buffers.
fn read_request(driver: &mut DriverQueue, memory: &GuestMemoryMmap, n: u64) {
    let base = DATA + n * 0x4000;
    let mut header = [0u8; 16];
    header[8..16].copy_from_slice(&n.to_le_bytes());
    memory.write_slice(&header, GuestAddress(base)).unwrap();
    let buffers = [
        (base, 16, false),
        (base + 0x1000, 512, true),
        (base + 0x2000, 1, true),
    ];
    driver.add_chain(memory, &buffers);
}

/// Up to the save: BAR 0 moved, MSI-X with the queue's vector 0 masked, one read served
/// (left pending) and one published without a doorbell.
fn first_half(h: &mut Harness<Block<Vec<u8>>>) -> DriverQueue {
    assert!(h.config_write(BAR0, 0xe000_0000, 4).is_some());
    assert!(
        h.config_write(BAR0 + 4, 0x1, 4).is_some(),
        "each half moves it"
    );
    assert_ne!(h.negotiate(VIRTIO_F_VERSION_1) & STATUS_FEATURES_OK, 0);
    let mut driver = DriverQueue::new(QUEUE_BASE, 8);
    h.setup_queue(0, &driver, 0);
    h.write(CONFIG_MSIX_VECTOR, 1, 2);
    h.enable_msix(1);
    let entry = MSIX_TABLE_OFFSET;
    h.write(entry, 0xfee0_0000, 8);
    h.write(entry + 8, 0x30, 4);
    h.driver_ok();
    read_request(&mut driver, &h.memory, 1);
    h.write(BlockTransport::notify_address(0), 0, 2);
    read_request(&mut driver, &h.memory, 2);
    driver
}

/// After the restore: the doorbell for the request in flight, unmasking the vector,
/// and what the driver reads meanwhile.
fn second_half(h: &mut Harness<Block<Vec<u8>>>) -> Vec<u64> {
    let mut seen = vec![
        h.read(MSIX_PBA_OFFSET, 8),
        h.read(MSIX_TABLE_OFFSET + 12, 4),
        h.config_read(BAR0, 4),
        h.config_read(BAR0 + 4, 4),
        h.config_read(COMMAND, 2),
        h.read(DEVICE_STATUS, 1),
    ];
    h.write(QUEUE_SELECT, 0, 2);
    seen.push(h.read(QUEUE_MSIX_VECTOR, 2));
    seen.push(h.read(CONFIG_MSIX_VECTOR, 2));
    h.write(BlockTransport::notify_address(0), 0, 2);
    seen.push(h.read(MSIX_PBA_OFFSET, 8));
    h.write(MSIX_TABLE_OFFSET + 12, 0, 4);
    seen.push(h.read(MSIX_PBA_OFFSET, 8));
    seen.push(h.read(ISR_OFFSET, 1));
    seen
}

fn disk() -> Vec<u8> {
    (0..8 * 512).map(|i| (i / 512) as u8 | 0x40).collect()
}

#[test]
fn a_moved_bar_msix_with_a_pending_vector_and_a_request_in_flight_go_on_identically() {
    let mut original = block_over(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap(),
        disk(),
    );
    let mut driver = first_half(&mut original);
    assert_eq!(driver.used_idx(&original.memory), 1);
    assert_eq!(original.read(MSIX_PBA_OFFSET, 8), 0b1, "vector 0 pending");
    let text = serde_json::to_string(&original.transport.save_saved().unwrap()).unwrap();

    let memory = copy_of(&original.memory);
    let mut fresh = block_over(memory, original.transport.device().with_disk(Vec::clone));
    let moves = fresh
        .transport
        .restore_saved(&serde_json::from_str(&text).unwrap())
        .unwrap();
    assert_eq!(moves.len(), 1, "BAR 0, for the machine to move");
    assert_eq!((moves[0].bar, moves[0].old), (0, 0));
    assert_eq!(
        (moves[0].new, moves[0].kind),
        (0x1_e000_0000, BarKind::Memory64)
    );
    let config_route = Some(MsiMessage {
        address: 0xfee0_0000,
        data: 0x31,
    });
    assert_eq!(
        *fresh.sink.programmed.lock().unwrap(),
        vec![(1, config_route)],
        "the unmasked configuration vector is routed again; the masked queue vector is not"
    );
    original.sink.signalled.lock().unwrap().clear();

    let seen = second_half(&mut original);
    assert_eq!(second_half(&mut fresh), seen, "the same registers read");
    assert_eq!(seen[0], 0b1);
    assert_eq!(seen[2..4], [0xe000_0004, 0x1], "the moved 64-bit BAR");
    assert_eq!(
        seen[8], 0b1,
        "the second read is done, its vector still masked"
    );
    assert_eq!(seen[9], 0, "unmasking delivered it");
    assert_eq!(*fresh.sink.signalled.lock().unwrap(), vec![0]);
    assert_eq!(*original.sink.signalled.lock().unwrap(), vec![0]);

    let mut fresh_driver = DriverQueue::new(QUEUE_BASE, 8);
    let scratch = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    read_request(&mut fresh_driver, &scratch, 1);
    read_request(&mut fresh_driver, &scratch, 2);
    assert_eq!(
        fresh_driver.used_idx(&fresh.memory),
        2,
        "served once, not again"
    );
    for n in 0..2 {
        assert_eq!(
            fresh_driver.used(&fresh.memory, n),
            driver.used(&original.memory, n)
        );
    }
    let sector: u8 = fresh
        .memory
        .read_obj(GuestAddress(DATA + 0x8000 + 0x1000))
        .unwrap();
    assert_eq!(
        sector, 0x42,
        "sector 2 read into the restored guest's memory"
    );
    read_request(&mut driver, &original.memory, 3);
    read_request(&mut fresh_driver, &fresh.memory, 3);
    for h in [&mut original, &mut fresh] {
        h.write(BlockTransport::notify_address(0), 0, 2);
    }
    assert_eq!(
        fresh_driver.used(&fresh.memory, 2),
        driver.used(&original.memory, 2)
    );
}

#[test]
fn a_state_for_another_function_or_with_missing_vectors_is_refused() {
    let mut original = rng();
    original.enable();
    let saved = original.transport.save_state();
    let mut fresh = block_over(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap(),
        disk(),
    );
    // An entropy device's state over a disk: its identity gives it away.
    let error = fresh.transport.restore_state(&saved).unwrap_err();
    assert!(matches!(error, StateError::Invalid { .. }), "{error}");
    assert!(error.to_string().contains("type 4"), "{error}");
    let mut own = fresh.transport.save_state();
    own.transport.queue_vectors.clear();
    assert!(fresh.transport.restore_state(&own).is_err());
    own.transport.queue_vectors.push(0);
    own.transport.msix.entries.pop();
    assert!(fresh.transport.restore_state(&own).is_err());
    assert_eq!(fresh.config_read(COMMAND, 2), 0, "unchanged");
}
