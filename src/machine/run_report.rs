//! How a run ended and what it measured.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::devices::rtc::RtcState;

use super::inventory::{DeviceKind, Inventory};
use crate::profile::ExitProfile;
use crate::run_loop::VmStop;

/// What the posted-write machinery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coalescing {
    /// `--no-coalesce`.
    Off,
    /// Zones whose writes may be posted: `(port or address, size)` each. The latches are
    /// registered for the whole run; a bounded zone only while the guest writes it.
    On(Vec<(u64, u32)>),
    /// Asked for, but the kernel cannot.
    Unsupported,
}

/// How a run ended and what it measured.
#[derive(Debug)]
pub struct RunReport {
    /// Why the VM stopped.
    pub stop: VmStop,
    /// The registers of the vCPU that stopped it, for a fault.
    pub registers: Option<String>,
    /// Every vCPU's exit profile, merged.
    pub profile: ExitProfile,
    /// KVM's own counters for the run, summed over vCPUs.
    pub kvm_stats: BTreeMap<String, u64>,
    /// From the start of setup to the stop.
    pub wall: Duration,
    /// Posted writes.
    pub coalescing: Coalescing,
    /// vCPUs the VM had.
    pub cpus: u8,
    /// COM1 output, with [`crate::config::SerialMode::Capture`].
    pub serial: Vec<u8>,
    /// The virtio console's output, likewise.
    pub virtio_console: Vec<u8>,
    /// Every device's counters, by id, from the inventory.
    pub devices: Vec<DeviceReport>,
    /// Doorbells that made a virtio device use buffers, over all devices.
    pub virtio_notifications: u64,
    /// The RTC at the end (what the coalescing differential test compares).
    pub rtc: RtcState,
}

/// One device's counters at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceReport {
    pub id: String,
    pub kind: DeviceKind,
    /// By name: "interrupts" for every device, "doorbells" and "notifications" for the
    /// virtio devices.
    pub counters: Vec<(&'static str, u64)>,
}

impl DeviceReport {
    /// Every device of `inventory`, as it stands.
    pub fn all(inventory: &Inventory) -> Vec<Self> {
        inventory
            .entries()
            .iter()
            .map(|entry| DeviceReport {
                id: entry.id.clone(),
                kind: entry.kind,
                counters: entry.counters(),
            })
            .collect()
    }

    /// Counter `name` (0 if the device keeps none).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters
            .iter()
            .find(|(counter, _)| *counter == name)
            .map_or(0, |(_, value)| *value)
    }
}

impl RunReport {
    /// The device with this id.
    pub fn device(&self, id: &str) -> Option<&DeviceReport> {
        self.devices.iter().find(|device| device.id == id)
    }

    /// Interrupts the device `id` raised ("com1", "rtc", "blk0", ...; 0 if none).
    pub fn interrupts_on(&self, id: &str) -> u64 {
        self.device(id)
            .map_or(0, |device| device.counter("interrupts"))
    }

    /// Interrupts the virtio devices raised.
    pub fn virtio_interrupts(&self) -> u64 {
        self.devices
            .iter()
            .filter(|device| device.kind.is_virtio())
            .map(|device| device.counter("interrupts"))
            .sum()
    }
}
