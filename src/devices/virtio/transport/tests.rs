//! The core's locks and rules, through the MMIO transport: registers answer while a
//! queue is served, a reset during serving raises nothing, NEEDS_RESET stops serving
//! and polling alike.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::super::driver::DriverQueue;
use super::super::mmio::{MmioTransport, QUEUE_NOTIFY};
use super::super::{serve_chains, QueueError, QueueNotify, SharedBusDevice, VirtioDevice};
use super::*;
use crate::bus::Access;
use crate::irq::{CountingLine, InterruptLine};

const QUEUE_BASE: u64 = 0x1_0000;
const DATA: u64 = 0x8000;
const STATUS: u64 = 0x070;
const INTERRUPT_STATUS: u64 = 0x060;

/// A device whose requests wait for the test: it says when it started serving and
/// finishes when released, as a slow disk would.
struct Gate {
    entered: Mutex<Sender<()>>,
    release: Mutex<Receiver<()>>,
}

impl VirtioDevice for Gate {
    fn device_type(&self) -> u32 {
        4
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[8]
    }

    fn features(&self) -> u64 {
        super::super::VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn process_queue(
        &self,
        _index: usize,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let _ = self.entered.locked().send(());
        let _ = self.release.locked().recv_timeout(Duration::from_secs(10));
        serve_chains(queue, memory, |_| 0)
    }
}

fn write32(transport: &dyn SharedBusDevice, offset: u64, value: u32) {
    transport.access(offset, Access::Write(&value.to_le_bytes()));
}

fn read32(transport: &dyn SharedBusDevice, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    transport.access(offset, Access::Read(&mut data));
    u32::from_le_bytes(data)
}

/// Up to DRIVER_OK with queue 0 at `queue`.
fn bring_up(transport: &dyn SharedBusDevice, queue: &DriverQueue) {
    write32(transport, STATUS, 1 | 2);
    write32(transport, 0x024, 1);
    write32(transport, 0x020, 1);
    write32(transport, STATUS, 1 | 2 | 8);
    write32(transport, 0x030, 0);
    write32(transport, 0x038, u32::from(queue.size()));
    let (desc, avail, used) = queue.addresses();
    write32(transport, 0x080, desc as u32);
    write32(transport, 0x090, avail as u32);
    write32(transport, 0x0a0, used as u32);
    write32(transport, 0x044, 1);
    write32(transport, STATUS, 1 | 2 | 8 | 4);
}

struct Harness {
    transport: Arc<MmioTransport<Gate>>,
    line: Arc<CountingLine>,
    memory: GuestMemoryMmap,
    queue: DriverQueue,
    entered: Receiver<()>,
    release: Sender<()>,
}

fn gated() -> Harness {
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let (entered_tx, entered) = channel();
    let (release, release_rx) = channel();
    let device = Gate {
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
    };
    let line = Arc::new(CountingLine::default());
    let transport = Arc::new(MmioTransport::new(device, memory.clone(), line.clone()));
    let mut queue = DriverQueue::new(QUEUE_BASE, 8);
    bring_up(&*transport, &queue);
    queue.add_chain(&memory, &[(DATA, 8, true)]);
    Harness {
        transport,
        line,
        memory,
        queue,
        entered,
        release,
    }
}

/// Rings the doorbell on another thread (the event loop's part) and waits until the
/// device is inside its request.
fn serve_in_background(h: &Harness) -> std::thread::JoinHandle<()> {
    let transport = h.transport.clone();
    let serving = std::thread::spawn(move || transport.notify(Some(0)));
    h.entered
        .recv_timeout(Duration::from_secs(10))
        .expect("the device is serving");
    serving
}

#[test]
fn registers_answer_while_a_queue_is_being_served() {
    let h = gated();
    let serving = serve_in_background(&h);
    // The read runs on a third thread so that a lock held by the server would show as
    // a timeout here rather than hang the test.
    let (done, answer) = channel();
    let transport = h.transport.clone();
    std::thread::spawn(move || {
        let _ = done.send((read32(&*transport, STATUS), read32(&*transport, 0x000)));
    });
    let (status, magic) = answer
        .recv_timeout(Duration::from_secs(5))
        .expect("a register read does not wait for the request in flight");
    assert_eq!(status, 0xf);
    assert_eq!(magic, u32::from_le_bytes(*b"virt"));
    h.release.send(()).unwrap();
    serving.join().unwrap();
    assert_eq!(h.queue.used_idx(&h.memory), 1);
    assert_eq!(h.line.pulses(), 1);
    assert_eq!(read32(&*h.transport, INTERRUPT_STATUS), 1);
}

#[test]
fn a_reset_during_serving_raises_nothing_and_takes_effect_at_once() {
    let h = gated();
    let serving = serve_in_background(&h);
    write32(&*h.transport, STATUS, 0);
    assert_eq!(read32(&*h.transport, STATUS), 0, "the reset did not wait");
    h.release.send(()).unwrap();
    serving.join().unwrap();
    assert_eq!(h.line.pulses(), 0, "the driver reset: no interrupt for it");
    assert_eq!(read32(&*h.transport, INTERRUPT_STATUS), 0);
    assert!(
        !h.transport.avail_moved(),
        "nothing is polled after a reset"
    );
}

#[test]
fn needs_reset_stops_serving_and_polling_until_the_driver_resets() {
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let line = Arc::new(CountingLine::default());
    let device = super::super::rng::Rng::new(std::io::repeat(1));
    let transport = MmioTransport::new(device, memory.clone(), line.clone());
    let mut queue = DriverQueue::new(QUEUE_BASE, 8);
    bring_up(&transport, &queue);
    queue.publish(&memory, 300);
    write32(&transport, QUEUE_NOTIFY, 0);
    assert_ne!(read32(&transport, STATUS) & 64, 0, "DEVICE_NEEDS_RESET");
    assert_eq!(line.pulses(), 1, "a configuration interrupt");
    queue.publish(&memory, 1);
    assert!(
        !transport.avail_moved(),
        "a broken device is not polled (virtio-mmio polled it before the shared core)"
    );
    write32(&transport, QUEUE_NOTIFY, 0);
    assert_eq!(line.pulses(), 1, "nor served");
    write32(&transport, STATUS, 0xf);
    assert_ne!(read32(&transport, STATUS) & 64, 0, "only a reset clears it");
    write32(&transport, STATUS, 0);
    assert_eq!(read32(&transport, STATUS), 0);
}
