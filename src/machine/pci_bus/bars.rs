//! The BARs of the virtio-pci devices: placed on the MMIO bus where the guest puts them,
//! and moved with their doorbells, all or nothing.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::bus::{AddressSpace, SharedDevice, SwappableMmio};
use crate::devices::pci::host::BarObserver;
use crate::devices::pci::BarChange;
use crate::devices::virtio::pci::{BAR, BAR_SIZE};
use crate::errors::chain;
use crate::kvm::{IoEvents, KvmError};
use crate::machine::MachineError;
use crate::ratelimit::RateLimiter;
use crate::sync::LockExt;

/// A BAR placed on the MMIO bus, with the doorbells that live inside it.
pub(super) struct PlacedBar {
    pub(super) device: u8,
    pub(super) name: &'static str,
    pub(super) bar: SharedDevice,
    /// Where it answers now (None until the first placement).
    pub(super) base: Option<u64>,
    /// Per queue: the eventfd (a duplicate of the event loop's), its offset in the BAR.
    pub(super) doorbells: Vec<(EventFd, u64)>,
}

/// Registers a doorbell's ioeventfd at an MMIO address, and removes it: KVM's ioeventfds
/// in a live run, a fake in tests.
trait DoorbellSwitch: Send + Sync {
    fn assign(&self, event: &EventFd, addr: u64) -> Result<(), KvmError>;
    fn deassign(&self, event: &EventFd, addr: u64) -> Result<(), KvmError>;
}

impl DoorbellSwitch for IoEvents {
    fn assign(&self, event: &EventFd, addr: u64) -> Result<(), KvmError> {
        IoEvents::assign(self, event, AddressSpace::Mmio, addr, None)
    }

    fn deassign(&self, event: &EventFd, addr: u64) -> Result<(), KvmError> {
        IoEvents::deassign(self, event, AddressSpace::Mmio, addr, None)
    }
}

/// One step of a BAR move; each has an inverse, so a move that fails part-way is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MoveStep {
    /// Queue `.0`'s doorbell registered at `.1`.
    Assign(usize, u64),
    /// The BAR published on the bus at `to` (moved from `from`, or placed the first time).
    Publish { from: Option<u64>, to: u64 },
    /// Queue `.0`'s doorbell removed from `.1`.
    Deassign(usize, u64),
}

/// The steps that move `bar` to `new`, in an order that never leaves the guest without a
/// doorbell and never registers two at one address (KVM refuses that): new doorbells
/// first where no old one sits, then the bus table, then the old doorbells removed, then
/// the new ones that take an old one's address (a move by less than the BAR's size).
/// A first placement has no old doorbells, so its publish is its last step: the one
/// step with no inverse is never undone.
fn move_steps(bar: &PlacedBar, new: u64) -> Vec<MoveStep> {
    let old: Vec<u64> = match bar.base {
        Some(base) => bar.doorbells.iter().map(|(_, at)| base + at).collect(),
        None => Vec::new(),
    };
    let new_at: Vec<(usize, u64)> = bar
        .doorbells
        .iter()
        .enumerate()
        .map(|(queue, (_, at))| (queue, new + at))
        .collect();
    // The new doorbells at addresses no old one holds (`free`), or the others.
    let assign = |free: bool| -> Vec<MoveStep> {
        new_at
            .iter()
            .filter(|(_, addr)| old.contains(addr) != free)
            .map(|&(queue, addr)| MoveStep::Assign(queue, addr))
            .collect()
    };
    let mut steps = assign(true);
    steps.push(MoveStep::Publish {
        from: bar.base,
        to: new,
    });
    steps.extend(
        old.iter()
            .enumerate()
            .map(|(queue, &addr)| MoveStep::Deassign(queue, addr)),
    );
    steps.extend(assign(false));
    steps
}

/// Moves a virtio-pci device on the MMIO bus when the guest reprograms its BAR, with its
/// doorbells: a new bus table is published (no lock on the exit path), and each queue's
/// ioeventfd is re-registered at its new address. A move is all or nothing: one onto
/// another device's range, or a doorbell KVM refuses, undoes what was done; the device
/// stays where it was, with a rate-limited warning.
///
/// Locks: `bars` is taken under the PCI configuration device's lock (the guest's BAR
/// write); under it only the MMIO table's publisher lock and `KVM_IOEVENTFD` ioctls.
pub(super) struct BarMover {
    mmio: Arc<SwappableMmio>,
    ioevents: Option<Arc<dyn DoorbellSwitch>>,
    pub(super) bars: Mutex<Vec<PlacedBar>>,
    warnings: Mutex<RateLimiter>,
}

impl BarMover {
    pub(super) fn new(mmio: &Arc<SwappableMmio>, ioevents: Option<IoEvents>) -> Self {
        Self::with_switch(
            mmio,
            ioevents.map(|ioevents| Arc::new(ioevents) as Arc<dyn DoorbellSwitch>),
        )
    }

    fn with_switch(mmio: &Arc<SwappableMmio>, ioevents: Option<Arc<dyn DoorbellSwitch>>) -> Self {
        Self {
            mmio: mmio.clone(),
            ioevents,
            bars: Mutex::default(),
            warnings: Mutex::default(),
        }
    }

    /// Whether doorbells can be ioeventfds at all.
    pub(super) fn has_ioevents(&self) -> bool {
        self.ioevents.is_some()
    }

    fn place(&self, bar: &mut PlacedBar, new: u64) -> Result<(), MachineError> {
        let mmio = &self.mmio;
        let mut done = Vec::new();
        for step in move_steps(bar, new) {
            if let Err(error) = self.apply(mmio, bar, step, false) {
                for step in done.into_iter().rev() {
                    if let Err(undo) = self.apply(mmio, bar, step, true) {
                        let name = bar.name;
                        self.warnings.locked().warn(|| {
                            format!("{name}: undoing a failed BAR move: {}", chain(&undo))
                        });
                    }
                }
                return Err(error);
            }
            done.push(step);
        }
        bar.base = Some(new);
        Ok(())
    }

    /// Does `step`, or its inverse.
    fn apply(
        &self,
        mmio: &SwappableMmio,
        bar: &PlacedBar,
        step: MoveStep,
        undo: bool,
    ) -> Result<(), MachineError> {
        match (step, undo) {
            (MoveStep::Publish { from: None, to }, false) => {
                mmio.insert(bar.name, to, BAR_SIZE, bar.bar.clone())?
            }
            // The last step of a first placement: never done and then undone.
            (MoveStep::Publish { from: None, .. }, true) => {}
            (
                MoveStep::Publish {
                    from: Some(from),
                    to,
                },
                false,
            ) => mmio.relocate(from, to)?,
            (
                MoveStep::Publish {
                    from: Some(from),
                    to,
                },
                true,
            ) => mmio.relocate(to, from)?,
            (MoveStep::Assign(queue, addr), undo) => self.switch(bar, queue, addr, !undo)?,
            (MoveStep::Deassign(queue, addr), undo) => self.switch(bar, queue, addr, undo)?,
        }
        Ok(())
    }

    fn switch(&self, bar: &PlacedBar, queue: usize, addr: u64, on: bool) -> Result<(), KvmError> {
        let (Some(ioevents), Some((event, _))) = (&self.ioevents, bar.doorbells.get(queue)) else {
            return Ok(());
        };
        match on {
            true => ioevents.assign(event, addr),
            false => ioevents.deassign(event, addr),
        }
    }
}

impl BarMover {
    /// Moves `function`'s BAR as `change` says (nothing for another BAR, a BAR at 0 or
    /// one already there); returns the device's name and the error of a refused move.
    pub(super) fn apply_change(
        &self,
        function: u8,
        change: BarChange,
    ) -> Result<(), (&'static str, MachineError)> {
        let mut bars = self.bars.locked();
        let Some(bar) = bars.iter_mut().find(|bar| bar.device == function) else {
            return Ok(());
        };
        if change.bar != BAR || change.new == 0 || bar.base == Some(change.new) {
            return Ok(());
        }
        self.place(bar, change.new)
            .map_err(|error| (bar.name, error))
    }
}

impl BarObserver for BarMover {
    fn bar_changed(&self, function: u8, change: BarChange) {
        if let Err((name, error)) = self.apply_change(function, change) {
            self.warnings.locked().warn(|| {
                format!(
                    "{name}: BAR moved to {:#x} refused: {}",
                    change.new,
                    chain(&error)
                )
            });
        }
    }
}

#[cfg(test)]
mod tests;
