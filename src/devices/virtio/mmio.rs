//! The virtio-mmio transport, version 2 ("modern"): the register state machine between a
//! driver and a [`VirtioDevice`].

use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::features::Negotiation;
use super::{avail_moved, serve_queue, VirtioDevice};
use crate::bus::{le_value, Access, BusDevice, StopRequest};
use crate::irq::InterruptLine;

/// Bytes of MMIO space one device takes.
pub const MMIO_SIZE: u64 = 0x1000;
/// Offset of QueueNotify, the doorbell.
pub const QUEUE_NOTIFY: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

const MAGIC: u32 = u32::from_le_bytes(*b"virt");
const VERSION: u32 = 2;
const VENDOR: u32 = u32::from_le_bytes(*b"hush");
const CONFIG: u64 = VIRTIO_MMIO_CONFIG as u64;

const STATUS_ACKNOWLEDGE: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const STATUS_DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const STATUS_DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const STATUS_FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const STATUS_NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
const INTERRUPT_VRING: u32 = VIRTIO_MMIO_INT_VRING;
const INTERRUPT_CONFIG: u32 = VIRTIO_MMIO_INT_CONFIG;

/// Something that can be told a queue has work: the transport, from a doorbell.
pub trait QueueNotify: Send {
    /// Queue `index` has new buffers; `None`: any queue may have (a length-0 doorbell
    /// does not say which).
    fn notify(&mut self, index: Option<u32>);
    /// True if the driver published buffers in a ready queue since the last call (no
    /// doorbell needed); a transport that cannot tell says false.
    fn avail_moved(&mut self) -> bool {
        false
    }
}

/// A virtio device on the MMIO bus.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    memory: GuestMemoryMmap,
    interrupt: Arc<dyn InterruptLine>,
    queues: Vec<Queue>,
    queue_select: u32,
    features: Negotiation,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
    /// Doorbells that found work, for the profiler and benches.
    notifications: u64,
    /// Every doorbell, work or none: the advisor counts a write that rang one.
    doorbells: u64,
    /// Each queue's available index at the last [`QueueNotify::avail_moved`].
    polled_avail: Vec<u16>,
}

impl<D: VirtioDevice> std::fmt::Debug for MmioTransport<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .finish()
    }
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// `device` over `memory`, raising `interrupt` when it uses buffers.
    pub fn new(device: D, memory: GuestMemoryMmap, interrupt: Arc<dyn InterruptLine>) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|max| Queue::new(*max).expect("queue sizes are powers of two"))
            .collect();
        Self {
            device,
            memory,
            interrupt,
            queues,
            queue_select: 0,
            features: Negotiation::default(),
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            notifications: 0,
            doorbells: 0,
            polled_avail: Vec::new(),
        }
    }

    /// The device, to hand it host input; call [`QueueNotify::notify`] afterwards.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Doorbells that made the device use buffers.
    pub fn notifications(&self) -> u64 {
        self.notifications
    }

    /// Doorbells rung, whether or not they found work or the driver was ready.
    pub fn doorbells(&self) -> u64 {
        self.doorbells
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn reset(&mut self) {
        self.queues.iter_mut().for_each(QueueT::reset);
        self.queue_select = 0;
        self.features = Negotiation::default();
        self.status = 0;
        self.interrupt_status = 0;
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_select as usize);
        // Register offsets are below CONFIG: the cast is exact.
        match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR,
            VIRTIO_MMIO_DEVICE_FEATURES => self.features.offered_word(self.device.features()),
            VIRTIO_MMIO_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status,
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.features.set_device_select(value),
            VIRTIO_MMIO_DRIVER_FEATURES => self.features.accept_word(value),
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.features.set_driver_select(value),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            VIRTIO_MMIO_QUEUE_NUM => {
                if let Some(queue) = self.selected_queue() {
                    queue.set_size(value as u16);
                }
            }
            VIRTIO_MMIO_QUEUE_READY => {
                if let Some(queue) = self.selected_queue() {
                    queue.set_ready(value == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(Some(value)),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt_status &= !value,
            VIRTIO_MMIO_STATUS => self.write_status(value),
            VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_address(offset as u32, value),
            _ => {}
        }
    }

    fn write_queue_address(&mut self, offset: u32, value: u32) {
        let Some(queue) = self.selected_queue() else {
            return;
        };
        let (low, high) = if offset & 4 == 0 {
            (Some(value), None)
        } else {
            (None, Some(value))
        };
        match offset & !4 {
            VIRTIO_MMIO_QUEUE_DESC_LOW => queue.set_desc_table_address(low, high),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => queue.set_avail_ring_address(low, high),
            _ => queue.set_used_ring_address(low, high),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        self.status = self
            .features
            .status_after_write(self.status, value, self.device.features());
    }

    /// Marks the device broken, as the virtio spec lets a device do when its driver
    /// breaks the protocol, and tells the driver.
    fn needs_reset(&mut self) {
        self.status |= STATUS_NEEDS_RESET;
        self.interrupt_status |= INTERRUPT_CONFIG;
        self.interrupt.pulse();
    }

    fn process(&mut self, index: usize) -> bool {
        let queue = self.queues.get_mut(index);
        match serve_queue(&mut self.device, index, queue, &self.memory) {
            Ok(used) => used,
            Err(_) => {
                self.needs_reset();
                false
            }
        }
    }
}

impl<D: VirtioDevice> QueueNotify for MmioTransport<D> {
    fn notify(&mut self, index: Option<u32>) {
        self.doorbells += 1;
        let ready = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        if self.status & ready != ready || self.status & STATUS_NEEDS_RESET != 0 {
            return;
        }
        let used = match index {
            Some(index) => self.process(index as usize),
            None => (0..self.queues.len()).fold(false, |used, i| self.process(i) | used),
        };
        if used {
            self.notifications += 1;
            self.interrupt_status |= INTERRUPT_VRING;
            self.interrupt.pulse();
        }
    }

    fn avail_moved(&mut self) -> bool {
        self.status & STATUS_DRIVER_OK != 0
            && avail_moved(&self.queues, &mut self.polled_avail, &self.memory)
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        match access {
            Access::Read(data) if offset >= CONFIG => {
                self.device.read_config(offset - CONFIG, data)
            }
            // Configuration writes are ignored: no device here has writable configuration.
            Access::Write(_) if offset >= CONFIG => {}
            Access::Read(data) if data.len() == 4 => {
                data.copy_from_slice(&self.read_register(offset).to_le_bytes())
            }
            Access::Write(data) if data.len() == 4 => {
                self.write_register(offset, le_value(data) as u32)
            }
            // Registers below the configuration space are 32-bit only.
            Access::Read(data) => data.fill(0),
            Access::Write(_) => {}
        }
        None
    }
}
