//! The common configuration structure of virtio-pci (virtio 1.2 section 4.1.4.3): its
//! layout over the transport core's registers (feature negotiation, device status, the
//! selected queue), plus the MSI-X vector numbers only virtio-pci has.
//!
//! Every field is handled as a little-endian value: an access inside one field reads
//! or replaces its bytes (so a driver may write a 64-bit queue address as two dwords),
//! and an access that is not inside one field reads 0 and is dropped.

use virtio_queue::QueueT;
use vm_memory::GuestAddress;

use super::VIRTIO_MSI_NO_VECTOR;
use crate::devices::virtio::transport::CommonRegisters;
pub use crate::devices::virtio::transport::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
};

// Field offsets of `struct virtio_pci_common_cfg` (virtio-bindings 0.2 has no
// virtio_pci module, so they are declared here, with the spec's names).
pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
pub const DEVICE_FEATURE: u64 = 0x04;
pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
pub const DRIVER_FEATURE: u64 = 0x0c;
pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
pub const NUM_QUEUES: u64 = 0x12;
pub const DEVICE_STATUS: u64 = 0x14;
pub const CONFIG_GENERATION: u64 = 0x15;
pub const QUEUE_SELECT: u64 = 0x16;
pub const QUEUE_SIZE: u64 = 0x18;
pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
pub const QUEUE_ENABLE: u64 = 0x1c;
pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
pub const QUEUE_DESC: u64 = 0x20;
pub const QUEUE_DRIVER: u64 = 0x28;
pub const QUEUE_DEVICE: u64 = 0x30;
/// Bytes of the structure (virtio 1.1; 1.2's notify-data and reset fields are not
/// offered, and read 0).
pub const COMMON_CFG_SIZE: u64 = 0x38;

/// Every field: (offset, width).
const FIELDS: [(u64, u64); 16] = [
    (DEVICE_FEATURE_SELECT, 4),
    (DEVICE_FEATURE, 4),
    (DRIVER_FEATURE_SELECT, 4),
    (DRIVER_FEATURE, 4),
    (CONFIG_MSIX_VECTOR, 2),
    (NUM_QUEUES, 2),
    (DEVICE_STATUS, 1),
    (CONFIG_GENERATION, 1),
    (QUEUE_SELECT, 2),
    (QUEUE_SIZE, 2),
    (QUEUE_MSIX_VECTOR, 2),
    (QUEUE_ENABLE, 2),
    (QUEUE_NOTIFY_OFF, 2),
    (QUEUE_DESC, 8),
    (QUEUE_DRIVER, 8),
    (QUEUE_DEVICE, 8),
];

/// The common configuration over the shared registers: `vectors` are the MSI-X vector
/// numbers of each queue and of configuration changes, which only virtio-pci has.
pub struct CommonConfig<'a> {
    pub common: &'a mut CommonRegisters,
    pub vectors: &'a mut Vectors,
}

/// The MSI-X vector of each queue and of configuration changes, or
/// [`VIRTIO_MSI_NO_VECTOR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vectors {
    pub queues: Vec<u16>,
    pub config: u16,
    /// How many vectors the table has: a vector past it reads back as NO_VECTOR.
    pub table: u16,
}

impl Vectors {
    pub fn new(queues: usize, table: u16) -> Self {
        Self {
            queues: vec![VIRTIO_MSI_NO_VECTOR; queues],
            config: VIRTIO_MSI_NO_VECTOR,
            table,
        }
    }

    /// What a device reset leaves.
    pub fn reset(&mut self) {
        self.queues.fill(VIRTIO_MSI_NO_VECTOR);
        self.config = VIRTIO_MSI_NO_VECTOR;
    }
}

/// What a write asks of the core beyond the registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Nothing,
    /// device_status written with this value.
    Status(u8),
}

impl CommonConfig<'_> {
    /// Reads at `offset`; the device offers `features`.
    pub fn read(&self, offset: u64, data: &mut [u8], features: u64) {
        data.fill(0);
        if let Some((start, _)) = field(offset, data.len()) {
            let bytes = self.get(start, features).to_le_bytes();
            let at = (offset - start) as usize;
            data.copy_from_slice(&bytes[at..at + data.len()]);
        }
    }

    /// Writes at `offset`; the device offers `features`. A status write is the caller's
    /// to apply (the core's reset and FEATURES_OK rules).
    pub fn write(&mut self, offset: u64, data: &[u8], features: u64) -> Written {
        let Some((start, _)) = field(offset, data.len()) else {
            return Written::Nothing;
        };
        let mut bytes = self.get(start, features).to_le_bytes();
        let at = (offset - start) as usize;
        bytes[at..at + data.len()].copy_from_slice(data);
        self.set(start, u64::from_le_bytes(bytes))
    }

    fn select(&self) -> usize {
        self.common.queue_select() as usize
    }

    /// The value of the field at `start`.
    fn get(&self, start: u64, features: u64) -> u64 {
        let common = &*self.common;
        let queue = common.selected();
        let vector = self.vectors.queues.get(self.select());
        match start {
            DEVICE_FEATURE_SELECT => u64::from(common.features().device_select()),
            DEVICE_FEATURE => u64::from(common.features().offered_word(features)),
            DRIVER_FEATURE_SELECT => u64::from(common.features().driver_select()),
            DRIVER_FEATURE => u64::from(common.features().accepted_word()),
            CONFIG_MSIX_VECTOR => u64::from(self.vectors.config),
            NUM_QUEUES => common.queue_count() as u64,
            DEVICE_STATUS => u64::from(common.status()),
            // No device here changes its configuration: the generation stays 0.
            CONFIG_GENERATION => 0,
            QUEUE_SELECT => u64::from(common.queue_select()),
            QUEUE_SIZE => queue.map_or(0, |q| u64::from(q.size())),
            QUEUE_MSIX_VECTOR => vector.map_or(VIRTIO_MSI_NO_VECTOR, |v| *v).into(),
            QUEUE_ENABLE => queue.map_or(0, |q| u64::from(q.ready())),
            QUEUE_NOTIFY_OFF => queue.map_or(0, |_| u64::from(common.queue_select())),
            QUEUE_DESC => queue.map_or(0, |q| q.desc_table()),
            QUEUE_DRIVER => queue.map_or(0, |q| q.avail_ring()),
            QUEUE_DEVICE => queue.map_or(0, |q| q.used_ring()),
            _ => 0,
        }
    }

    /// Sets the field at `start` to `value` (already merged with the bytes not written).
    fn set(&mut self, start: u64, value: u64) -> Written {
        // A vector the table lacks reads back as NO_VECTOR: how the driver learns.
        let table = self.vectors.table;
        let vector = |value: u64| match value as u16 {
            v if v < table => v,
            _ => VIRTIO_MSI_NO_VECTOR,
        };
        let select = self.select();
        let features = self.common.features_mut();
        match start {
            DEVICE_FEATURE_SELECT => features.set_device_select(value as u32),
            DRIVER_FEATURE_SELECT => features.set_driver_select(value as u32),
            DRIVER_FEATURE => features.accept_word(value as u32),
            CONFIG_MSIX_VECTOR => self.vectors.config = vector(value),
            DEVICE_STATUS => return Written::Status(value as u8),
            // The field is 16 bits wide.
            QUEUE_SELECT => self.common.set_queue_select(u32::from(value as u16)),
            QUEUE_MSIX_VECTOR => {
                if let Some(slot) = self.vectors.queues.get_mut(select) {
                    *slot = vector(value);
                }
            }
            _ => self.set_queue_field(start, value),
        }
        Written::Nothing
    }

    fn set_queue_field(&mut self, start: u64, value: u64) {
        if !matches!(
            start,
            QUEUE_SIZE | QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE | QUEUE_ENABLE
        ) {
            return;
        }
        let Some(queue) = self.common.selected_mut() else {
            return;
        };
        // Bad sizes and misaligned addresses are refused by the queue and leave the old
        // value, which the driver reads back; the `try_` setters do not log.
        let _refused = match start {
            QUEUE_SIZE => queue.try_set_size(value as u16).is_err(),
            QUEUE_DESC => queue
                .try_set_desc_table_address(GuestAddress(value))
                .is_err(),
            QUEUE_DRIVER => queue
                .try_set_avail_ring_address(GuestAddress(value))
                .is_err(),
            QUEUE_DEVICE => queue
                .try_set_used_ring_address(GuestAddress(value))
                .is_err(),
            // The driver writes 1 to enable; 0 is not allowed (no queue reset offered).
            QUEUE_ENABLE if value == 1 => {
                queue.set_ready(true);
                false
            }
            _ => false,
        };
    }
}

/// The field holding all of `[offset, offset + len)`: (start, width).
fn field(offset: u64, len: usize) -> Option<(u64, u64)> {
    let len = len as u64;
    FIELDS.iter().copied().find(|(start, width)| {
        len > 0 && offset >= *start && offset.saturating_add(len) <= start + width
    })
}
