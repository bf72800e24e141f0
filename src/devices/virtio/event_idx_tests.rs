//! VIRTIO_RING_F_EVENT_IDX in the transport core: offered, avail_event published after
//! serving, interrupts only past used_event; off, every used batch interrupts.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::driver::DriverQueue;
use super::mmio::{MmioTransport, QUEUE_NOTIFY};
use super::rng::Rng;
use super::tests::{memory, read32, write32};
use super::transport::EVENT_IDX;
use super::{serve_queue, QueueError, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::irq::{CountingLine, InterruptLine};

const QUEUE_BASE: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;

/// A driver's bring-up of virtio-mmio accepting `features`, queue 0 on `queue`; returns
/// the status after FEATURES_OK.
fn bring_up<D: VirtioDevice>(
    transport: &mut MmioTransport<D>,
    queue: &DriverQueue,
    features: u64,
) -> u32 {
    write32(transport, 0x070, 1 | 2);
    for word in 0..2 {
        write32(transport, 0x024, word);
        write32(transport, 0x020, (features >> (32 * word)) as u32);
    }
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

fn entropy(
    memory: &GuestMemoryMmap,
    line: &Arc<CountingLine>,
) -> MmioTransport<Rng<std::io::Repeat>> {
    MmioTransport::new(Rng::new(std::io::repeat(1)), memory.clone(), line.clone())
}

#[test]
fn event_idx_is_offered_and_interrupts_only_past_used_event() {
    let memory = memory();
    let line = Arc::new(CountingLine::default());
    let mut transport = entropy(&memory, &line);
    write32(&mut transport, 0x014, 0);
    assert_eq!(read32(&mut transport, 0x010), 1 << 29, "EVENT_IDX offered");
    let mut queue = DriverQueue::new(QUEUE_BASE, 8);
    let status = bring_up(&mut transport, &queue, VIRTIO_F_VERSION_1 | EVENT_IDX);
    assert_eq!(status & 8, 8, "FEATURES_OK with EVENT_IDX");
    // The driver wants an interrupt once the second buffer is used.
    queue.set_used_event(&memory, 1);
    queue.add_chain(&memory, &[(DATA, 8, true)]);
    write32(&mut transport, QUEUE_NOTIFY, 0);
    assert_eq!(queue.used_idx(&memory), 1);
    assert_eq!(line.pulses(), 0, "used index 1 is not past used_event 1");
    assert_eq!(
        queue.avail_event(&memory),
        1,
        "doorbell wanted for the next buffer"
    );
    queue.add_chain(&memory, &[(DATA, 8, true)]);
    queue.add_chain(&memory, &[(DATA + 8, 8, true)]);
    write32(&mut transport, QUEUE_NOTIFY, 0);
    assert_eq!(queue.used_idx(&memory), 3);
    assert_eq!(line.pulses(), 1, "used index 3 passed used_event 1");
    assert_eq!(queue.avail_event(&memory), 3);
    // used_event left behind (the driver did not move it): no interrupt.
    queue.add_chain(&memory, &[(DATA, 8, true)]);
    write32(&mut transport, QUEUE_NOTIFY, 0);
    assert_eq!((queue.used_idx(&memory), line.pulses()), (4, 1));
}

#[test]
fn without_event_idx_every_used_batch_interrupts() {
    let memory = memory();
    let line = Arc::new(CountingLine::default());
    let mut transport = entropy(&memory, &line);
    transport.core().offer_event_idx(false);
    write32(&mut transport, 0x014, 0);
    assert_eq!(read32(&mut transport, 0x010), 0, "EVENT_IDX not offered");
    let mut queue = DriverQueue::new(QUEUE_BASE, 8);
    let status = bring_up(&mut transport, &queue, VIRTIO_F_VERSION_1 | EVENT_IDX);
    assert_eq!(
        status & 8,
        0,
        "FEATURES_OK refused: EVENT_IDX was not offered"
    );
    let status = bring_up(&mut transport, &queue, VIRTIO_F_VERSION_1);
    assert_eq!(status & 8, 8);
    queue.set_used_event(&memory, 5);
    for used in 1..=2 {
        queue.add_chain(&memory, &[(DATA, 8, true)]);
        write32(&mut transport, QUEUE_NOTIFY, 0);
        assert_eq!(
            (queue.used_idx(&memory), line.pulses()),
            (used, u64::from(used))
        );
    }
    assert_eq!(queue.avail_event(&memory), 0, "avail_event never written");
}

/// A device that leaves every buffer posted (as virtio-net's receive queue does with no
/// frame waiting), counting how often it is asked.
#[derive(Default)]
struct Keeps {
    served: AtomicU32,
}

impl VirtioDevice for Keeps {
    fn device_type(&self) -> u32 {
        1
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[8]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn read_config(&self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn process_queue(
        &self,
        _: usize,
        _: &mut Queue,
        _: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        self.served.fetch_add(1, Ordering::Relaxed);
        Ok(false)
    }
}

#[test]
fn buffers_left_posted_on_purpose_are_not_served_again_and_again() {
    let memory = memory();
    let mut driver = DriverQueue::new(QUEUE_BASE, 8);
    driver.add_chain(&memory, &[(DATA, 8, true)]);
    let mut queue = driver.device_queue(8);
    queue.set_event_idx(true);
    let device = Keeps::default();
    assert!(!serve_queue(&device, 0, Some(&mut queue), &memory).unwrap());
    assert_eq!(device.served.load(Ordering::Relaxed), 1);
    assert_eq!(
        driver.avail_event(&memory),
        0,
        "the posted buffer is still next"
    );
}
