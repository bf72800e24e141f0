//! The transport core's saved state: the common registers (status, features, queue
//! select, interrupt status), each queue with the device's ring indices, the device's
//! identity and own state ([`DeviceState`]), the counters, and the transport's own part
//! ([`PersistDelivery`]).
//!
//! The ring indices live in the served queues while the driver is running (the queue
//! lock's copies), and in the configuration otherwise: saving takes the queue lock,
//! then the register lock (the core's order), and saves whichever copy is current.
//! Restoring puts them into the configuration and moves its layout on, so the first
//! doorbell or poll after it rebuilds the served queues from them.
//!
//! After a restore the machine should ring [`VirtioCore::notify`] once for every
//! queue (`None`): a request the driver published before the save, whose doorbell was
//! still on its way, is then served instead of waiting for the next one.

use std::sync::atomic::Ordering;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Delivery, VirtioCore};
use crate::devices::persist::StateError;
use crate::devices::virtio::features::{Negotiation, SavedFeatures};
use crate::devices::virtio::state::{
    restore_queues, save_queues, DeviceState, SavedDevice, SavedQueue,
};
use crate::devices::virtio::VirtioDevice;
use crate::sync::LockExt;

/// The transport's own state beside the common registers (virtio-pci's configuration
/// space and MSI-X; nothing for virtio-mmio).
pub trait PersistDelivery: Delivery {
    type Saved: Serialize + DeserializeOwned;
    /// What a restore gives back for the machine to act on (PCI: the BAR moves).
    type Restored;
    /// Its state now.
    fn save_delivery(&self) -> Self::Saved;
    /// Whether [`PersistDelivery::restore_delivery`] would take `saved`.
    fn check_delivery(&self, kind: &'static str, saved: &Self::Saved) -> Result<(), StateError>;
    /// Takes `saved`, which [`PersistDelivery::check_delivery`] accepted.
    fn restore_delivery(
        &mut self,
        kind: &'static str,
        saved: &Self::Saved,
    ) -> Result<Self::Restored, StateError>;
}

/// The registers both transports have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedCommon {
    pub status: u8,
    pub features: SavedFeatures,
    pub queue_select: u32,
    pub queues: Vec<SavedQueue>,
    pub interrupt_status: u8,
}

/// What a transport saves: the device's identity and own state `DS`, the common
/// registers, the transport's own part `S`, and the counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedTransport<S, DS> {
    pub device: SavedDevice,
    pub device_state: DS,
    pub common: SavedCommon,
    pub transport: S,
    pub doorbells: u64,
    pub notifications: u64,
}

/// The saved state of a core over `D` with delivery `T`.
pub type SavedCore<D, T> = SavedTransport<<T as PersistDelivery>::Saved, <D as DeviceState>::Saved>;

impl<D: VirtioDevice + DeviceState, T: PersistDelivery> VirtioCore<D, T> {
    /// The transport's state now (queue lock, then register lock; the device's own
    /// locks under the queue lock alone, as when a queue is served).
    pub fn save_state(&self) -> SavedCore<D, T> {
        let work = self.work.locked();
        // Under the queue lock only, as when a queue is served.
        let device_state = self.device.save_device();
        let registers = self.registers.locked();
        let common = &registers.common;
        let served = work.layout == Some(common.layout);
        let queues = match served {
            true => &work.queues,
            false => &common.queues,
        };
        SavedTransport {
            device: SavedDevice::of(&self.device),
            device_state,
            common: SavedCommon {
                status: common.status,
                features: common.features.save_state(),
                queue_select: common.queue_select,
                queues: save_queues(queues),
                interrupt_status: common.interrupt_status,
            },
            transport: registers.transport.save_delivery(),
            doorbells: self.counts.doorbells.load(Ordering::Relaxed),
            notifications: self.counts.notifications.load(Ordering::Relaxed),
        }
    }

    /// Takes `saved` into this core, built as the saved one was (the same device over
    /// the same backend), checking all of it first: on an error nothing changes.
    pub fn restore_state(
        &self,
        kind: &'static str,
        saved: &SavedCore<D, T>,
    ) -> Result<T::Restored, StateError> {
        saved.device.check(kind, &self.device)?;
        self.device.check_device(kind, &saved.device_state)?;
        let max_sizes = self.device.queue_max_sizes();
        let queues = restore_queues(kind, &saved.common.queues, max_sizes)?;
        let mut work = self.work.locked();
        let mut registers = self.registers.locked();
        registers.transport.check_delivery(kind, &saved.transport)?;
        let restored = registers
            .transport
            .restore_delivery(kind, &saved.transport)?;
        let common = &mut registers.common;
        common.status = saved.common.status;
        common.features = Negotiation::restored(&saved.common.features);
        common.queue_select = saved.common.queue_select;
        common.queues = queues;
        common.interrupt_status = saved.common.interrupt_status;
        common.layout = common.layout.wrapping_add(1);
        drop(registers);
        // Under the queue lock only, as when a queue is served.
        self.device.restore_device(&saved.device_state);
        work.queues.clear();
        work.layout = None;
        work.polled_avail.clear();
        self.counts
            .doorbells
            .store(saved.doorbells, Ordering::Relaxed);
        let notifications = saved.notifications;
        self.counts
            .notifications
            .store(notifications, Ordering::Relaxed);
        Ok(restored)
    }
}
