//! The virtio transport core that virtio-mmio and virtio-pci share: device status,
//! feature negotiation, queue selection and configuration, doorbells serving queues,
//! the interrupt status, reset and the NEEDS_RESET rules. A transport adds only its
//! register layout (`mmio.rs`, `pci.rs`) and how an interrupt reaches the guest
//! ([`Delivery`]: a line, or MSI-X vectors and INTx).
//!
//! # Locks
//!
//! - **the register lock** (`registers`): the common registers and the transport's own
//!   state (PCI's configuration space and MSI-X table). Every register access takes it,
//!   briefly; under it only eventfd writes happen (an interrupt).
//! - **the queue lock** (`work`): the queues being served. A doorbell (on the event
//!   loop, or on the vCPU for an exit doorbell) takes it for the whole of serving, so
//!   the device's I/O (a disk's pread/pwrite/fdatasync) runs under it and never under
//!   the register lock; it takes the register lock inside, briefly, to check the status
//!   and to raise interrupts. Order: queue lock, then register lock; a register access
//!   never takes the queue lock.
//!
//! The registers keep the queue *configuration* the driver wrote; the queue lock keeps
//! the served copies, rebuilt from the configuration whenever it changed (its
//! `layout` number moves on every queue-configuration write and every reset). A reset
//! therefore never waits for a request in flight: one that was being served when the
//! driver reset completes into the old rings and raises nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::features::Negotiation;
use super::{avail_moved, serve_queue, VirtioDevice};
use crate::sync::LockExt;

mod state;
pub use state::{PersistDelivery, SavedCommon, SavedCore, SavedTransport};

/// Status bits (virtio 1.2 section 2.1); every one is in the low byte.
pub const STATUS_ACKNOWLEDGE: u8 = VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
pub const STATUS_DRIVER: u8 = VIRTIO_CONFIG_S_DRIVER as u8;
pub const STATUS_DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
pub const STATUS_FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
pub const STATUS_NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;
/// Interrupt status bits: virtio-mmio's InterruptStatus and virtio-pci's ISR agree.
pub const INTERRUPT_QUEUE: u8 = 1 << 0;
pub const INTERRUPT_CONFIG: u8 = 1 << 1;

/// What raised an interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// These queues (bit n: queue n) used buffers.
    Queues(u64),
    /// The configuration changed (here: the device needs a reset).
    Config,
}

/// The registers every virtio transport has, as plain data.
#[derive(Debug)]
pub struct CommonRegisters {
    status: u8,
    features: Negotiation,
    queue_select: u32,
    /// The configuration the driver wrote: these queues are never served.
    queues: Vec<Queue>,
    interrupt_status: u8,
    /// Moves on every write to a queue's configuration and every reset.
    layout: u64,
}

impl CommonRegisters {
    fn new(max_sizes: &[u16]) -> Self {
        Self {
            status: 0,
            features: Negotiation::default(),
            queue_select: 0,
            queues: max_sizes
                .iter()
                .map(|max| Queue::new(*max).expect("queue sizes are powers of two"))
                .collect(),
            interrupt_status: 0,
            layout: 0,
        }
    }

    /// The device status.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// The feature windows and what the driver accepted.
    pub fn features(&self) -> &Negotiation {
        &self.features
    }

    pub fn features_mut(&mut self) -> &mut Negotiation {
        &mut self.features
    }

    pub fn queue_select(&self) -> u32 {
        self.queue_select
    }

    pub fn set_queue_select(&mut self, select: u32) {
        self.queue_select = select;
    }

    /// How many queues the device has.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// The selected queue's configuration, if the select names one.
    pub fn selected(&self) -> Option<&Queue> {
        self.queues.get(self.queue_select as usize)
    }

    /// The selected queue's configuration, to change it.
    pub fn selected_mut(&mut self) -> Option<&mut Queue> {
        self.layout = self.layout.wrapping_add(1);
        self.queues.get_mut(self.queue_select as usize)
    }

    pub fn interrupt_status(&self) -> u8 {
        self.interrupt_status
    }

    /// The driver acknowledges `bits` (virtio-mmio's InterruptACK).
    pub fn acknowledge(&mut self, bits: u8) {
        self.interrupt_status &= !bits;
    }

    /// Reads and clears the interrupt status (virtio-pci's ISR).
    pub fn take_interrupt_status(&mut self) -> u8 {
        std::mem::take(&mut self.interrupt_status)
    }

    /// Sets interrupt status `bits`; returns the status before.
    pub fn raise_status(&mut self, bits: u8) -> u8 {
        let before = self.interrupt_status;
        self.interrupt_status |= bits;
        before
    }

    /// True once the driver has set DRIVER_OK (after FEATURES_OK) and the device has not
    /// asked for a reset: queues may be served and polled.
    pub fn driver_ok(&self) -> bool {
        let ready = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        self.status & ready == ready && self.status & STATUS_NEEDS_RESET == 0
    }

    fn reset(&mut self) {
        self.queues.iter_mut().for_each(QueueT::reset);
        self.queue_select = 0;
        self.features = Negotiation::default();
        self.status = 0;
        self.interrupt_status = 0;
        self.layout = self.layout.wrapping_add(1);
    }
}

/// The registers of one device: the common ones and the transport's own.
#[derive(Debug)]
pub struct Registers<T> {
    pub common: CommonRegisters,
    pub transport: T,
}

impl<T: Delivery> Registers<T> {
    /// The driver wrote `value` to the status register: 0 resets the device; otherwise
    /// FEATURES_OK needs acceptable features among `offered` and NEEDS_RESET stays
    /// ([`Negotiation::status_after_write`]).
    pub fn write_status(&mut self, value: u8, offered: u64) {
        if value == 0 {
            self.common.reset();
            self.transport.reset();
            return;
        }
        let common = &mut self.common;
        let status =
            common
                .features
                .status_after_write(u32::from(common.status), u32::from(value), offered);
        common.status = status as u8;
    }
}

/// How a transport tells the driver, and what else it keeps under the register lock.
pub trait Delivery: Send {
    /// Whether the device may touch guest memory and interrupt now (PCI: bus mastering
    /// on). Queues are served and polled only while this and `driver_ok` hold.
    fn may_serve(&self) -> bool {
        true
    }
    /// Tells the driver about `cause`; the transport sets the interrupt status bits it
    /// wants (`common.raise_status`).
    fn raise(&mut self, common: &mut CommonRegisters, cause: Cause);
    /// The device was reset (after the common registers were).
    fn reset(&mut self) {}
}

/// The queues being served, under the queue lock.
#[derive(Debug, Default)]
struct Work {
    queues: Vec<Queue>,
    /// The configuration's `layout` the queues were built from.
    layout: Option<u64>,
    /// Each queue's available index at the last poll.
    polled_avail: Vec<u16>,
}

/// Counts kept without a lock.
#[derive(Debug, Default)]
struct Counts {
    doorbells: AtomicU64,
    notifications: AtomicU64,
}

/// One virtio device behind a transport: the state machine both transports share.
pub struct VirtioCore<D: VirtioDevice, T: Delivery> {
    device: D,
    memory: GuestMemoryMmap,
    registers: Mutex<Registers<T>>,
    work: Mutex<Work>,
    counts: Counts,
    /// VIRTIO_RING_F_EVENT_IDX is offered (`--no-event-idx` turns it off).
    event_idx: AtomicBool,
}

/// The feature bit of VIRTIO_RING_F_EVENT_IDX.
pub const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;

impl<D: VirtioDevice, T: Delivery> std::fmt::Debug for VirtioCore<D, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioCore")
            .field("device_type", &self.device.device_type())
            .field("status", &self.registers.locked().common.status)
            .finish()
    }
}

impl<D: VirtioDevice, T: Delivery> VirtioCore<D, T> {
    /// `device` over `memory`, telling its driver through `delivery`.
    pub fn new(device: D, memory: GuestMemoryMmap, delivery: T) -> Self {
        let common = CommonRegisters::new(device.queue_max_sizes());
        Self {
            device,
            memory,
            registers: Mutex::new(Registers {
                common,
                transport: delivery,
            }),
            work: Mutex::default(),
            counts: Counts::default(),
            event_idx: AtomicBool::new(true),
        }
    }

    /// Whether VIRTIO_RING_F_EVENT_IDX is offered (it is unless turned off here, before
    /// the driver first reads the features).
    pub fn offer_event_idx(&self, offered: bool) {
        self.event_idx.store(offered, Ordering::Relaxed);
    }

    /// The features the transport offers: the device's, and EVENT_IDX (the core keeps
    /// the ring side of it for every device).
    pub fn offered(&self) -> u64 {
        match self.event_idx.load(Ordering::Relaxed) {
            true => self.device.features() | EVENT_IDX,
            false => self.device.features(),
        }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Takes the register lock.
    pub fn registers(&self) -> std::sync::MutexGuard<'_, Registers<T>> {
        self.registers.locked()
    }

    /// Doorbells that made the device use buffers.
    pub fn notifications(&self) -> u64 {
        self.counts.notifications.load(Ordering::Relaxed)
    }

    /// Doorbells rung, whether or not they found work or the driver was ready.
    pub fn doorbells(&self) -> u64 {
        self.counts.doorbells.load(Ordering::Relaxed)
    }

    /// Rebuilds the served queues if the configuration changed; returns the layout they
    /// follow, or None if queues may not be served now.
    fn activate(&self, work: &mut Work) -> Option<u64> {
        let registers = self.registers.locked();
        if !registers.common.driver_ok() || !registers.transport.may_serve() {
            return None;
        }
        let layout = registers.common.layout;
        if work.layout != Some(layout) {
            work.queues = registers
                .common
                .queues
                .iter()
                .map(|config| {
                    Queue::try_from(config.state())
                        .unwrap_or_else(|_| Queue::new(config.max_size()).expect("a power of two"))
                })
                .collect();
            work.layout = Some(layout);
            work.polled_avail.clear();
            let accepted = registers.common.features.accepted();
            let event_idx = accepted & EVENT_IDX != 0;
            work.queues
                .iter_mut()
                .for_each(|queue| queue.set_event_idx(event_idx));
            // The device sees only its own features.
            self.device.activate(accepted & !EVENT_IDX);
        }
        Some(layout)
    }

    /// A doorbell: queue `index` has new buffers (`None`: any queue may have). Serves
    /// under the queue lock; interrupts under the register lock, afterwards.
    pub fn notify(&self, index: Option<u32>) {
        self.counts.doorbells.fetch_add(1, Ordering::Relaxed);
        let mut work = self.work.locked();
        let Some(layout) = self.activate(&mut work) else {
            return;
        };
        let count = work.queues.len();
        let queues = match index {
            Some(index) => index as usize..(index as usize).saturating_add(1).min(count),
            None => 0..count,
        };
        let (mut used, mut broken) = (0u64, false);
        for index in queues {
            match serve_queue(
                &self.device,
                index,
                work.queues.get_mut(index),
                &self.memory,
            ) {
                // Queues past 64 share the last bit: the transports raise per bit.
                Ok(true) => used |= 1 << index.min(63),
                Ok(false) => {}
                Err(_) => broken = true,
            }
        }
        drop(work);
        if used == 0 && !broken {
            return;
        }
        let mut registers = self.registers.locked();
        if registers.common.layout != layout {
            // Reset (or reconfigured) while being served: the driver no longer waits.
            return;
        }
        let Registers { common, transport } = &mut *registers;
        if used != 0 {
            self.counts.notifications.fetch_add(1, Ordering::Relaxed);
            transport.raise(common, Cause::Queues(used));
        }
        if broken {
            // The driver broke the ring: the device asks for a reset, as virtio lets it.
            common.status |= STATUS_NEEDS_RESET;
            transport.raise(common, Cause::Config);
        }
    }

    /// True if the driver published buffers in a queue since the last call, without a
    /// doorbell; false whenever queues may not be served.
    pub fn avail_moved(&self) -> bool {
        let mut work = self.work.locked();
        if self.activate(&mut work).is_none() {
            return false;
        }
        let Work {
            queues,
            polled_avail,
            ..
        } = &mut *work;
        avail_moved(queues, polled_avail, &self.memory)
    }
}

#[cfg(test)]
mod tests;
