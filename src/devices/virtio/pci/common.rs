//! The common configuration structure of virtio-pci (virtio 1.2 section 4.1.4.3):
//! feature negotiation, device status, and the selected queue's registers.
//!
//! Every field is handled as a little-endian value: an access inside one field reads
//! or replaces its bytes (so a driver may write a 64-bit queue address as two dwords),
//! and an access that is not inside one field reads 0 and is dropped.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::VIRTIO_MSI_NO_VECTOR;
use crate::devices::virtio::features::Negotiation;

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

/// Status bits (virtio-bindings' values are u32; device_status is a byte here).
pub const STATUS_ACKNOWLEDGE: u8 = VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
pub const STATUS_DRIVER: u8 = VIRTIO_CONFIG_S_DRIVER as u8;
pub const STATUS_DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
pub const STATUS_FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
pub const STATUS_NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;

/// The state behind the common configuration structure.
#[derive(Debug)]
pub struct CommonConfig {
    pub queues: Vec<Queue>,
    /// MSI-X vector of each queue, or [`VIRTIO_MSI_NO_VECTOR`].
    pub queue_vectors: Vec<u16>,
    /// MSI-X vector of configuration changes, or [`VIRTIO_MSI_NO_VECTOR`].
    pub config_vector: u16,
    pub status: u8,
    features: Negotiation,
    queue_select: u16,
}

impl CommonConfig {
    /// The registers of a device whose queues have these largest sizes (powers of two).
    pub fn new(max_sizes: &[u16]) -> Self {
        let queues: Vec<Queue> = max_sizes
            .iter()
            .map(|max| Queue::new(*max).expect("queue sizes are powers of two"))
            .collect();
        Self {
            queue_vectors: vec![VIRTIO_MSI_NO_VECTOR; queues.len()],
            queues,
            config_vector: VIRTIO_MSI_NO_VECTOR,
            status: 0,
            features: Negotiation::default(),
            queue_select: 0,
        }
    }

    /// What a device reset leaves (device_status written 0).
    pub fn reset(&mut self) {
        self.queues.iter_mut().for_each(QueueT::reset);
        self.queue_vectors.fill(VIRTIO_MSI_NO_VECTOR);
        self.config_vector = VIRTIO_MSI_NO_VECTOR;
        self.status = 0;
        self.features = Negotiation::default();
        self.queue_select = 0;
    }

    /// True once the driver has set DRIVER_OK (after FEATURES_OK) and the device has not
    /// asked for a reset: queues may be served.
    pub fn driver_ok(&self) -> bool {
        let ready = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        self.status & ready == ready && self.status & STATUS_NEEDS_RESET == 0
    }

    /// Features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.features.accepted()
    }

    /// Reads at `offset`; the device offers `features`.
    pub fn read(&self, offset: u64, data: &mut [u8], features: u64) {
        data.fill(0);
        if let Some((start, _)) = field(offset, data.len()) {
            let bytes = self.get(start, features).to_le_bytes();
            let at = (offset - start) as usize;
            data.copy_from_slice(&bytes[at..at + data.len()]);
        }
    }

    /// Writes at `offset`; the device offers `features` and has `vectors` MSI-X vectors.
    pub fn write(&mut self, offset: u64, data: &[u8], features: u64, vectors: u16) {
        if let Some((start, _)) = field(offset, data.len()) {
            let mut bytes = self.get(start, features).to_le_bytes();
            let at = (offset - start) as usize;
            bytes[at..at + data.len()].copy_from_slice(data);
            self.set(start, u64::from_le_bytes(bytes), features, vectors);
        }
    }

    fn selected(&self) -> Option<&Queue> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// The value of the field at `start`.
    fn get(&self, start: u64, features: u64) -> u64 {
        let queue = self.selected();
        let vector = self.queue_vectors.get(usize::from(self.queue_select));
        match start {
            DEVICE_FEATURE_SELECT => u64::from(self.features.device_select()),
            DEVICE_FEATURE => u64::from(self.features.offered_word(features)),
            DRIVER_FEATURE_SELECT => u64::from(self.features.driver_select()),
            DRIVER_FEATURE => u64::from(self.features.accepted_word()),
            CONFIG_MSIX_VECTOR => u64::from(self.config_vector),
            NUM_QUEUES => self.queues.len() as u64,
            DEVICE_STATUS => u64::from(self.status),
            // No device here changes its configuration: the generation stays 0.
            CONFIG_GENERATION => 0,
            QUEUE_SELECT => u64::from(self.queue_select),
            QUEUE_SIZE => queue.map_or(0, |q| u64::from(q.size())),
            QUEUE_MSIX_VECTOR => vector.map_or(VIRTIO_MSI_NO_VECTOR, |v| *v).into(),
            QUEUE_ENABLE => queue.map_or(0, |q| u64::from(q.ready())),
            QUEUE_NOTIFY_OFF => queue.map_or(0, |_| u64::from(self.queue_select)),
            QUEUE_DESC => queue.map_or(0, |q| q.desc_table()),
            QUEUE_DRIVER => queue.map_or(0, |q| q.avail_ring()),
            QUEUE_DEVICE => queue.map_or(0, |q| q.used_ring()),
            _ => 0,
        }
    }

    /// Sets the field at `start` to `value` (already merged with the bytes not written).
    fn set(&mut self, start: u64, value: u64, features: u64, vectors: u16) {
        // A vector the table lacks reads back as NO_VECTOR: how the driver learns.
        let vector = |value: u64| match value as u16 {
            v if v < vectors => v,
            _ => VIRTIO_MSI_NO_VECTOR,
        };
        let select = usize::from(self.queue_select);
        match start {
            DEVICE_FEATURE_SELECT => self.features.set_device_select(value as u32),
            DRIVER_FEATURE_SELECT => self.features.set_driver_select(value as u32),
            DRIVER_FEATURE => self.features.accept_word(value as u32),
            CONFIG_MSIX_VECTOR => self.config_vector = vector(value),
            DEVICE_STATUS => self.write_status(value as u8, features),
            QUEUE_SELECT => self.queue_select = value as u16,
            QUEUE_MSIX_VECTOR => {
                if let Some(slot) = self.queue_vectors.get_mut(select) {
                    *slot = vector(value);
                }
            }
            _ => self.set_queue_field(start, value),
        }
    }

    fn set_queue_field(&mut self, start: u64, value: u64) {
        let Some(queue) = self.queues.get_mut(usize::from(self.queue_select)) else {
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

    /// A status write: 0 resets; otherwise [`Negotiation::status_after_write`]'s rules.
    fn write_status(&mut self, value: u8, features: u64) {
        if value == 0 {
            self.reset();
            return;
        }
        let status =
            self.features
                .status_after_write(u32::from(self.status), u32::from(value), features);
        // Every status bit is in the low byte.
        self.status = status as u8;
    }
}

/// The field holding all of `[offset, offset + len)`: (start, width).
fn field(offset: u64, len: usize) -> Option<(u64, u64)> {
    let len = len as u64;
    FIELDS.iter().copied().find(|(start, width)| {
        len > 0 && offset >= *start && offset.saturating_add(len) <= start + width
    })
}
