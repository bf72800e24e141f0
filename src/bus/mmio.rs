//! The MMIO bus, and the table the VM dispatches on: published whole, so a device that
//! moves (a PCI BAR the guest reprograms) is re-placed by publishing a new table, while
//! every vCPU keeps dispatching on the table it loaded, with no lock. The old table is
//! freed when its last reader is done (arc-swap's guarantee).

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::{
    check_overlap, unclaimed, Access, AddressSpace, BusError, Dispatch, SharedDevice, Slot,
};
use crate::sync::LockExt;

/// The MMIO bus: ranges sorted by base, found by binary search. The table is read-only
/// once published: no "last hit" hint is kept, since every vCPU writing one on every
/// miss made the table's cache line bounce between them, and a machine has few ranges.
#[derive(Debug, Default, Clone)]
pub struct MmioBus {
    slots: Vec<Slot>,
}

impl MmioBus {
    /// Places `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        name: &'static str,
        base: u64,
        len: u64,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len).is_none() {
            return Err(BusError::BadRange {
                name,
                space: AddressSpace::Mmio,
                base,
                len,
            });
        }
        check_overlap(&self.slots, name, base, len)?;
        let at = self.slots.partition_point(|slot| slot.base < base);
        self.slots.insert(
            at,
            Slot {
                base,
                len,
                name,
                device,
            },
        );
        Ok(())
    }

    /// Sends an access to the device that claims all of it.
    pub fn dispatch(&self, addr: u64, access: Access<'_>) -> Dispatch {
        let len = access.len() as u64;
        let after = self.slots.partition_point(|slot| slot.base <= addr);
        match after.checked_sub(1) {
            Some(index) if self.slots[index].contains(addr, len) => {
                self.slots[index].dispatch(addr, access)
            }
            _ => unclaimed(access),
        }
    }

    pub(super) fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The slot whose range holds `addr`.
    fn slot_at(&self, addr: u64) -> Option<&Slot> {
        let after = self.slots.partition_point(|slot| slot.base <= addr);
        let slot = &self.slots[after.checked_sub(1)?];
        slot.contains(addr, 1).then_some(slot)
    }
}

impl MmioBus {
    /// Moves the range that starts at `old_base` to `new_base`; refused, leaving the bus
    /// as it was, if the new range overlaps another device or leaves the address space.
    fn relocate(&mut self, old_base: u64, new_base: u64) -> Result<(), BusError> {
        let Some(index) = self.slots.iter().position(|slot| slot.base == old_base) else {
            return Err(BusError::NotPlaced { base: old_base });
        };
        let slot = self.slots.remove(index);
        let result = self.insert(slot.name, new_base, slot.len, slot.device.clone());
        if result.is_err() {
            self.slots.insert(index, slot);
        }
        result
    }
}

/// The MMIO table as the VM sees it.
#[derive(Debug, Default)]
pub struct SwappableMmio {
    table: ArcSwap<MmioBus>,
    /// Serialises publishers; never taken by a dispatch.
    publishers: Mutex<()>,
}

impl SwappableMmio {
    /// Publishes the table `change` makes of the current one, if it succeeds.
    fn publish(
        &self,
        change: impl FnOnce(&mut MmioBus) -> Result<(), BusError>,
    ) -> Result<(), BusError> {
        let _one_at_a_time = self.publishers.locked();
        let mut next = MmioBus::clone(&self.table.load());
        change(&mut next)?;
        self.table.store(Arc::new(next));
        Ok(())
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(
        &self,
        name: &'static str,
        base: u64,
        len: u64,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        self.publish(|bus| bus.insert(name, base, len, device))
    }

    /// Moves the device at `old_base` to `new_base` (a BAR the guest reprogrammed).
    pub fn relocate(&self, old_base: u64, new_base: u64) -> Result<(), BusError> {
        self.publish(|bus| bus.relocate(old_base, new_base))
    }

    /// Sends an access to the device that claims all of it, on the current table.
    pub fn dispatch(&self, addr: u64, access: Access<'_>) -> Dispatch {
        self.table.load().dispatch(addr, access)
    }

    /// The device holding `addr`, and the offset in it.
    pub fn locate(&self, addr: u64) -> Option<(&'static str, u64)> {
        let table = self.table.load();
        let slot = table.slot_at(addr)?;
        Some((slot.name, addr - slot.base))
    }

    /// The current table's slots, for building-time queries (posted zones).
    pub(super) fn snapshot(&self) -> Arc<MmioBus> {
        self.table.load_full()
    }
}
