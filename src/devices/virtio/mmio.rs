//! The virtio-mmio transport, version 2 ("modern"): virtio-mmio's register layout over
//! the shared [`VirtioCore`], and its one interrupt line.

use std::sync::Arc;

use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::transport::{self, Cause, CommonRegisters, Delivery, VirtioCore, INTERRUPT_QUEUE};
use super::{QueueNotify, SharedBusDevice, VirtioDevice};
use crate::bus::{le_value, Access, BusDevice, StopRequest};
use crate::irq::InterruptLine;

mod state;
pub use state::SavedMmioInterrupt;

/// Bytes of MMIO space one device takes.
pub const MMIO_SIZE: u64 = 0x1000;
/// Offset of QueueNotify, the doorbell.
pub const QUEUE_NOTIFY: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

const MAGIC: u32 = u32::from_le_bytes(*b"virt");
const VERSION: u32 = 2;
const VENDOR: u32 = u32::from_le_bytes(*b"hush");
const CONFIG: u64 = VIRTIO_MMIO_CONFIG as u64;

const INTERRUPT_VRING: u8 = VIRTIO_MMIO_INT_VRING as u8;
const INTERRUPT_CONFIG: u8 = VIRTIO_MMIO_INT_CONFIG as u8;
const _: () =
    assert!(INTERRUPT_VRING == INTERRUPT_QUEUE && INTERRUPT_CONFIG == transport::INTERRUPT_CONFIG);

/// virtio-mmio's interrupt: one edge-triggered line; InterruptStatus says why.
pub struct MmioInterrupt {
    line: Arc<dyn InterruptLine>,
}

impl Delivery for MmioInterrupt {
    fn raise(&mut self, common: &mut CommonRegisters, cause: Cause) {
        common.raise_status(match cause {
            Cause::Queues(_) => INTERRUPT_VRING,
            Cause::Config => INTERRUPT_CONFIG,
        });
        self.line.pulse();
    }
}

/// A virtio device on the MMIO bus: the transport core behind virtio-mmio's registers.
pub struct MmioTransport<D: VirtioDevice> {
    core: VirtioCore<D, MmioInterrupt>,
}

impl<D: VirtioDevice> std::fmt::Debug for MmioTransport<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("core", &self.core)
            .finish()
    }
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// `device` over `memory`, raising `interrupt` when it uses buffers.
    pub fn new(device: D, memory: GuestMemoryMmap, interrupt: Arc<dyn InterruptLine>) -> Self {
        Self {
            core: VirtioCore::new(device, memory, MmioInterrupt { line: interrupt }),
        }
    }

    /// The shared core (the device, its counters, doorbells).
    pub fn core(&self) -> &VirtioCore<D, MmioInterrupt> {
        &self.core
    }

    /// The device, to hand it host input; call [`QueueNotify::notify`] afterwards.
    pub fn device(&self) -> &D {
        self.core.device()
    }

    /// Doorbells that made the device use buffers.
    pub fn notifications(&self) -> u64 {
        self.core.notifications()
    }

    /// Doorbells rung, whether or not they found work or the driver was ready.
    pub fn doorbells(&self) -> u64 {
        self.core.doorbells()
    }

    fn read_register(&self, offset: u64) -> u32 {
        let device = self.core.device();
        let registers = self.core.registers();
        let common = &registers.common;
        let queue = common.selected();
        // Register offsets are below CONFIG: the cast is exact.
        match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR,
            VIRTIO_MMIO_DEVICE_FEATURES => common.features().offered_word(self.core.offered()),
            VIRTIO_MMIO_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => u32::from(common.interrupt_status()),
            VIRTIO_MMIO_STATUS => u32::from(common.status()),
            // No device here changes its configuration: the generation stays 0.
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_register(&self, offset: u64, value: u32) {
        if offset as u32 == VIRTIO_MMIO_QUEUE_NOTIFY {
            // Served under the queue lock, not the register lock.
            return self.core.notify(Some(value));
        }
        let mut registers = self.core.registers();
        let common = &mut registers.common;
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => common.features_mut().set_device_select(value),
            VIRTIO_MMIO_DRIVER_FEATURES => common.features_mut().accept_word(value),
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => common.features_mut().set_driver_select(value),
            VIRTIO_MMIO_QUEUE_SEL => common.set_queue_select(value),
            VIRTIO_MMIO_QUEUE_NUM => {
                if let Some(queue) = common.selected_mut() {
                    queue.set_size(value as u16);
                }
            }
            VIRTIO_MMIO_QUEUE_READY => {
                if let Some(queue) = common.selected_mut() {
                    queue.set_ready(value == 1);
                }
            }
            VIRTIO_MMIO_INTERRUPT_ACK => common.acknowledge(value as u8),
            // Every status bit is in the low byte.
            VIRTIO_MMIO_STATUS => registers.write_status(value as u8, self.core.offered()),
            VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => {
                write_queue_address(common.selected_mut(), offset as u32, value)
            }
            _ => {}
        }
    }
}

/// One half of a queue address of the selected queue.
fn write_queue_address(queue: Option<&mut Queue>, offset: u32, value: u32) {
    let Some(queue) = queue else {
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

impl<D: VirtioDevice> QueueNotify for MmioTransport<D> {
    fn notify(&self, index: Option<u32>) {
        self.core.notify(index);
    }

    fn avail_moved(&self) -> bool {
        self.core.avail_moved()
    }
}

impl<D: VirtioDevice> SharedBusDevice for MmioTransport<D> {
    fn access(&self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        match access {
            Access::Read(data) if offset >= CONFIG => {
                self.core.device().read_config(offset - CONFIG, data)
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

/// Owned (tests, fuzzing): an access goes straight to the shared path.
impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest> {
        SharedBusDevice::access(self, offset, access)
    }
}
