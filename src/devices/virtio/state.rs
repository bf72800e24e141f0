//! What every virtio transport saves besides its own registers: each queue (its
//! configuration and the device's ring indices, virtio-queue's `QueueState`), and the
//! device's identity and configuration space, which a restore checks against the fresh
//! device (a snapshot of a 1 GiB disk must not come back over a 2 GiB one, nor a
//! read-only one over a writable one).
//!
//! A device's own state beyond its queues is its [`DeviceState`]: block and entropy keep
//! nothing between requests; the console keeps the host input not yet delivered.

use std::io::Read;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

use super::block::{Block, DiskBackend};
use super::rng::Rng;
use super::VirtioDevice;
use crate::devices::persist::StateError;

/// A virtio device's own state, beyond its queues and configuration (the transport
/// saves those). Devices take `&self` and lock their own parts, so restoring does too.
pub trait DeviceState {
    type Saved: Serialize + DeserializeOwned;
    /// Its state now.
    fn save_device(&self) -> Self::Saved;
    /// Whether [`DeviceState::restore_device`] may take `saved`.
    fn check_device(&self, kind: &'static str, saved: &Self::Saved) -> Result<(), StateError>;
    /// Takes `saved`, which [`DeviceState::check_device`] accepted.
    fn restore_device(&self, saved: &Self::Saved);
}

/// The state of a device that keeps none of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoDeviceState {}

/// Block keeps nothing between requests (its disk's contents are the snapshot's).
impl<B: DiskBackend> DeviceState for Block<B> {
    type Saved = NoDeviceState;

    fn save_device(&self) -> NoDeviceState {
        NoDeviceState {}
    }

    fn check_device(&self, _: &'static str, _: &NoDeviceState) -> Result<(), StateError> {
        Ok(())
    }

    fn restore_device(&self, _: &NoDeviceState) {}
}

/// Entropy keeps nothing between requests.
impl<R: Read + Send> DeviceState for Rng<R> {
    type Saved = NoDeviceState;

    fn save_device(&self) -> NoDeviceState {
        NoDeviceState {}
    }

    fn check_device(&self, _: &'static str, _: &NoDeviceState) -> Result<(), StateError> {
        Ok(())
    }

    fn restore_device(&self, _: &NoDeviceState) {}
}

/// Bytes of configuration space compared: more than any device here has (blk's is 60).
const CONFIG_BYTES: u64 = 256;

/// One virtqueue: what the driver configured and where the device is in its rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQueue {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    /// The next available-ring entry the device will take.
    pub next_avail: u16,
    /// The next used-ring entry the device will fill.
    pub next_used: u16,
    pub event_idx_enabled: bool,
}

impl SavedQueue {
    /// `queue`'s state now.
    pub fn of(queue: &Queue) -> Self {
        let state = queue.state();
        Self {
            max_size: state.max_size,
            size: state.size,
            ready: state.ready,
            desc_table: state.desc_table,
            avail_ring: state.avail_ring,
            used_ring: state.used_ring,
            next_avail: state.next_avail,
            next_used: state.next_used,
            event_idx_enabled: state.event_idx_enabled,
        }
    }

    /// The queue, checked by virtio-queue (a size that is a power of two up to the
    /// maximum, aligned ring addresses).
    fn to_queue(self) -> Result<Queue, virtio_queue::Error> {
        Queue::try_from(QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx_enabled,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
    }
}

/// The saved queues of `queues`.
pub fn save_queues(queues: &[Queue]) -> Vec<SavedQueue> {
    queues.iter().map(SavedQueue::of).collect()
}

/// Queues from `saved`, one for each of the device's `max_sizes` (as the transport
/// builds them): the count and each maximum must match, and each queue must be one
/// virtio-queue accepts.
pub fn restore_queues(
    kind: &'static str,
    saved: &[SavedQueue],
    max_sizes: &[u16],
) -> Result<Vec<Queue>, StateError> {
    if saved.len() != max_sizes.len() {
        let reason = format!(
            "{} queues, but the device has {}",
            saved.len(),
            max_sizes.len()
        );
        return Err(StateError::invalid(kind, reason));
    }
    saved
        .iter()
        .zip(max_sizes)
        .enumerate()
        .map(|(index, (queue, max))| {
            if queue.max_size != *max {
                let reason = format!(
                    "queue {index} has at most {} entries, but the device's has {max}",
                    queue.max_size
                );
                return Err(StateError::invalid(kind, reason));
            }
            queue
                .to_queue()
                .map_err(|error| StateError::invalid(kind, format!("queue {index}: {error}")))
        })
        .collect()
}

/// A device's identity: its type, the features it offers, its configuration space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDevice {
    pub device_type: u32,
    pub features: u64,
    /// The first [`CONFIG_BYTES`] of its configuration space.
    pub config: Vec<u8>,
}

impl SavedDevice {
    /// `device`'s identity.
    pub fn of<D: VirtioDevice + ?Sized>(device: &D) -> Self {
        let mut config = vec![0; CONFIG_BYTES as usize];
        device.read_config(0, &mut config);
        Self {
            device_type: device.device_type(),
            features: device.features(),
            config,
        }
    }

    /// Checks that `device` is the one saved: same type, features and configuration.
    pub fn check<D: VirtioDevice + ?Sized>(
        &self,
        kind: &'static str,
        device: &D,
    ) -> Result<(), StateError> {
        let fresh = Self::of(device);
        let differs = |what: &str, saved: String, here: String| {
            Err(StateError::invalid(
                kind,
                format!("saved for a device with {what} {saved}, but this one has {here}"),
            ))
        };
        if self.device_type != fresh.device_type {
            let (saved, here) = (self.device_type, fresh.device_type);
            return differs("type", saved.to_string(), here.to_string());
        }
        if self.features != fresh.features {
            let (saved, here) = (self.features, fresh.features);
            return differs("features", format!("{saved:#x}"), format!("{here:#x}"));
        }
        if let Some(at) =
            (0..fresh.config.len()).find(|at| self.config.get(*at) != Some(&fresh.config[*at]))
        {
            let saved = self
                .config
                .get(at)
                .map_or("none".into(), |b| format!("{b:#04x}"));
            return differs(
                &format!("configuration byte {at}"),
                saved,
                format!("{:#04x}", fresh.config[at]),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::{Block, SECTOR};
    use crate::devices::virtio::driver::DriverQueue;

    #[test]
    fn a_queue_round_trips_and_impossible_ones_are_refused() {
        let queue = DriverQueue::new(0x10_0000, 8).device_queue(128);
        let saved = save_queues(std::slice::from_ref(&queue));
        let text = serde_json::to_string(&saved).unwrap();
        let saved: Vec<SavedQueue> = serde_json::from_str(&text).unwrap();
        let restored = restore_queues("test", &saved, &[128]).unwrap();
        assert_eq!(restored[0].state(), queue.state());

        let bad = |change: fn(&mut SavedQueue)| {
            let mut queue = saved[0];
            change(&mut queue);
            restore_queues("test", &[queue], &[128])
        };
        assert!(bad(|q| q.size = 3).is_err(), "not a power of two");
        assert!(bad(|q| q.size = 256).is_err(), "past the maximum");
        assert!(bad(|q| q.desc_table = 0x10_0001).is_err(), "misaligned");
        assert!(bad(|q| q.max_size = 64).is_err(), "another device's queue");
        assert!(
            restore_queues("test", &saved, &[128, 128]).is_err(),
            "one queue missing"
        );
    }

    #[test]
    fn a_device_with_another_capacity_or_access_is_refused() {
        let disk = || vec![0u8; 8 * SECTOR as usize];
        let saved = SavedDevice::of(&Block::new(disk(), false, "blk0"));
        assert!(saved
            .check("blk", &Block::new(disk(), false, "blk0"))
            .is_ok());
        let bigger = Block::new(vec![0u8; 16 * SECTOR as usize], false, "blk0");
        let error = saved.check("blk", &bigger).unwrap_err().to_string();
        assert!(error.contains("configuration byte 0"), "{error}");
        let readonly = Block::new(disk(), true, "blk0");
        let error = saved.check("blk", &readonly).unwrap_err().to_string();
        assert!(error.contains("features"), "{error}");
    }
}
