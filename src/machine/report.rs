//! How a run ended and what it measured.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::devices::rtc::RtcState;
use crate::profile::ExitProfile;
use crate::vcpu::VmStop;

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
    /// Interrupt edges each device line carried, by line name ("com1", "rtc",
    /// "virtio-blk", ...).
    pub interrupts: BTreeMap<&'static str, u64>,
    /// Doorbells that made a virtio device use buffers, over all devices.
    pub virtio_notifications: u64,
    /// The RTC at the end (what the coalescing differential test compares).
    pub rtc: RtcState,
}

impl RunReport {
    /// Edges on the line called `name` (0 if there is none).
    pub fn interrupts_on(&self, name: &str) -> u64 {
        self.interrupts.get(name).copied().unwrap_or(0)
    }

    /// Interrupts the virtio devices raised.
    pub fn virtio_interrupts(&self) -> u64 {
        self.interrupts
            .iter()
            .filter(|(name, _)| name.starts_with("virtio"))
            .map(|(_, count)| count)
            .sum()
    }
}
