//! The I/O port bus: a two-level table from port to device.
//!
//! A flat table of 65536 entries is 128 KiB: each port a guest uses lands on a page of its
//! own, and on a host where every `KVM_RUN` may flush the TLB (HOST.md) each page the exit
//! path touches costs a walk. Here the first level (one entry per 256 ports) lives inside
//! the bus itself and the second levels are 512-byte tables allocated only for the pages
//! that hold a device, together: the RTC, COM1, PCI's 0xcf8 and the debug-exit port all
//! fall in page 0 or a few neighbours, so a lookup touches two cache lines.

use std::fmt;

use super::{
    check_overlap, unclaimed, Access, AddressSpace, BusError, Dispatch, SharedDevice, Slot,
};

const PORT_COUNT: usize = 1 << 16;
/// Ports per second-level table.
const PAGE_PORTS: usize = 256;
const PAGES: usize = PORT_COUNT / PAGE_PORTS;

/// The I/O port bus.
pub struct PioBus {
    /// For every 256-port page, its table's index + 1 in `tables`; 0 where no device is.
    pages: [u16; PAGES],
    /// Slot index + 1 for every port of a page; 0 where no device is.
    tables: Vec<[u16; PAGE_PORTS]>,
    slots: Vec<Slot>,
}

impl fmt::Debug for PioBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PioBus")
            .field("slots", &self.slots)
            .finish()
    }
}

impl Default for PioBus {
    fn default() -> Self {
        Self {
            pages: [0; PAGES],
            tables: Vec::new(),
            slots: Vec::new(),
        }
    }
}

impl PioBus {
    /// Places `device` at ports `[base, base + len)`.
    pub fn insert(
        &mut self,
        name: &'static str,
        base: u16,
        len: u16,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        let (base, len) = (u64::from(base), u64::from(len));
        if len == 0 || base + len > PORT_COUNT as u64 {
            return Err(BusError::BadRange {
                name,
                space: AddressSpace::Pio,
                base,
                len,
            });
        }
        check_overlap(&self.slots, name, base, len)?;
        // At most 65535 one-port devices fit the space, so the index + 1 fits a u16.
        let Ok(index) = u16::try_from(self.slots.len() + 1) else {
            return Err(BusError::BadRange {
                name,
                space: AddressSpace::Pio,
                base,
                len,
            });
        };
        self.slots.push(Slot {
            base,
            len,
            name,
            device,
        });
        for port in base as usize..(base + len) as usize {
            let table = self.table_for(port / PAGE_PORTS);
            self.tables[table][port % PAGE_PORTS] = index;
        }
        Ok(())
    }

    /// The index in `tables` of `page`'s table, made if the page had none.
    fn table_for(&mut self, page: usize) -> usize {
        if self.pages[page] == 0 {
            self.tables.push([0; PAGE_PORTS]);
            // At most PAGES (256) tables, so the count fits a u16.
            self.pages[page] = self.tables.len() as u16;
        }
        usize::from(self.pages[page]) - 1
    }

    /// Slot index + 1 of `port`; 0 where no device is.
    #[inline]
    fn slot_number(&self, port: u16) -> usize {
        let port = usize::from(port);
        match self.pages[port / PAGE_PORTS] {
            0 => 0,
            table => usize::from(self.tables[usize::from(table) - 1][port % PAGE_PORTS]),
        }
    }

    /// Sends an access to the device that claims all of it.
    #[inline]
    pub fn dispatch(&self, port: u16, access: Access<'_>) -> Dispatch {
        match self.slot_number(port).checked_sub(1) {
            Some(index) => {
                let slot = &self.slots[index];
                if slot.contains(u64::from(port), access.len() as u64) {
                    slot.dispatch(u64::from(port), access)
                } else {
                    unclaimed(access)
                }
            }
            None => unclaimed(access),
        }
    }

    pub(super) fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The slot that holds `port`.
    pub(super) fn slot_at(&self, port: u16) -> Option<&Slot> {
        self.slots.get(self.slot_number(port).checked_sub(1)?)
    }
}
