//! The PIO and MMIO buses: where a decoded access finds its device.
//!
//! Buses are built before any vCPU starts and are read-only afterwards, so the exit path
//! takes no bus-wide lock: only the one device it reaches is locked. The port bus is a
//! two-level table indexed by port (`bus/pio.rs`); the MMIO bus is a sorted range table.

use crate::sync::LockExt;

mod mmio;
mod pio;
pub use mmio::{MmioBus, SwappableMmio};
pub use pio::PioBus;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use thiserror::Error;

/// One access, carrying its direction and its data, so reads and writes share one
/// dispatch path.
#[derive(Debug)]
pub enum Access<'a> {
    /// The device fills the buffer.
    Read(&'a mut [u8]),
    /// The device consumes the buffer.
    Write(&'a [u8]),
}

impl<'a> Access<'a> {
    /// Bytes accessed.
    pub fn len(&self) -> usize {
        match self {
            Access::Read(data) => data.len(),
            Access::Write(data) => data.len(),
        }
    }

    /// True for an access of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True for a write.
    pub fn is_write(&self) -> bool {
        matches!(self, Access::Write(_))
    }

    /// The same access, borrowed again (so the caller keeps it after a dispatch).
    pub fn reborrow(&mut self) -> Access<'_> {
        match self {
            Access::Read(data) => Access::Read(data),
            Access::Write(data) => Access::Write(data),
        }
    }

    /// The bytes: what a write carries, or what a read was filled with.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Access::Read(data) => data,
            Access::Write(data) => data,
        }
    }

    /// Splits the access into consecutive elements of `size` bytes, in order, each with
    /// the same direction (string I/O: `rep ins`/`rep outs`).
    pub fn into_elements(self, size: usize) -> impl Iterator<Item = Access<'a>> {
        let size = size.max(1);
        let (reads, writes) = match self {
            Access::Read(data) => (Some(data.chunks_mut(size).map(Access::Read)), None),
            Access::Write(data) => (None, Some(data.chunks(size).map(Access::Write))),
        };
        reads
            .into_iter()
            .flatten()
            .chain(writes.into_iter().flatten())
    }

    /// The written value, little-endian, zero-extended (0 for a read).
    pub fn write_value(&self) -> u64 {
        match self {
            Access::Read(_) => 0,
            Access::Write(data) => le_value(data),
        }
    }
}

/// A little-endian value of up to 8 bytes.
pub fn le_value(data: &[u8]) -> u64 {
    data.iter()
        .take(8)
        .rev()
        .fold(0u64, |value, byte| (value << 8) | u64::from(*byte))
}

/// The two address spaces of x86.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressSpace {
    /// I/O ports.
    Pio,
    /// Memory-mapped I/O.
    Mmio,
}

/// What an access asks of the whole VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// The guest asked to end with this value (a test guest's exit port).
    Exit(u32),
    /// The guest asked for a reset.
    Reset,
    /// The guest powered the machine off.
    PowerOff,
}

/// A register whose writes KVM may post to the coalesced ring instead of exiting
/// (seed 000). The device must accept them late, but in order, and before any later
/// access to it; `flush` says what else bounds the delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostedRegister {
    /// Offset within the device's range.
    pub offset: u64,
    /// Width in bytes.
    pub size: u32,
    /// When a posted write must have been applied.
    pub flush: Flush,
}

/// A posted register's flush rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flush {
    /// Before the next access to the same device: the write only latches state that a
    /// later access observes (the RTC index, the PCI configuration address).
    BeforeNextAccess,
    /// That, and within the machine's drain period: the write has an effect outside the
    /// device (a UART's transmitted byte, its THR-empty interrupt), so it must not wait
    /// for an exit that may never come.
    Bounded,
}

impl PostedRegister {
    /// A latch: applied before the next access to its device.
    pub const fn latch(offset: u64, size: u32) -> Self {
        Self {
            offset,
            size,
            flush: Flush::BeforeNextAccess,
        }
    }

    /// A register with an outside effect: applied within the drain period as well.
    pub const fn bounded(offset: u64, size: u32) -> Self {
        Self {
            offset,
            size,
            flush: Flush::Bounded,
        }
    }
}

/// A device on a bus. Implementations are register-level state machines with no KVM
/// types in them.
pub trait BusDevice: Send {
    /// Handles an access at `offset` within the device's range.
    fn access(&mut self, offset: u64, access: Access<'_>) -> Option<StopRequest>;

    /// The registers whose writes may be posted.
    fn posted_registers(&self) -> &[PostedRegister] {
        &[]
    }
}

/// A device shared between the vCPUs (and, later, the event loop).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// The result of one dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// A device took the access.
    Handled(Option<StopRequest>),
    /// No device claims the whole access: a read was filled with all-ones and a write
    /// was dropped.
    Unclaimed,
}

/// Building a bus went wrong.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or runs past the end of the address space.
    #[error("{name}: range {base:#x}+{len:#x} is empty or outside the {space:?} space")]
    BadRange {
        name: &'static str,
        space: AddressSpace,
        base: u64,
        len: u64,
    },
    /// No device starts at the address a move names.
    #[error("no device is placed at {base:#x}")]
    NotPlaced { base: u64 },
    /// The range overlaps a device already on the bus.
    #[error("{name}: range {base:#x}+{len:#x} overlaps {other}")]
    Overlap {
        name: &'static str,
        other: &'static str,
        base: u64,
        len: u64,
    },
}

/// A device and the range it claims.
#[derive(Clone)]
struct Slot {
    base: u64,
    len: u64,
    name: &'static str,
    device: SharedDevice,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{:#x}+{:#x}", self.name, self.base, self.len)
    }
}

impl Slot {
    /// True if the whole access `[addr, addr + len)` lies in this slot.
    fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.base && addr - self.base + len <= self.len
    }

    fn overlaps(&self, base: u64, len: u64) -> bool {
        base < self.base + self.len && self.base < base + len
    }

    fn dispatch(&self, addr: u64, access: Access<'_>) -> Dispatch {
        Dispatch::Handled(lock(&self.device).access(addr - self.base, access))
    }
}

/// Locks a device; a device whose lock was poisoned by a panic elsewhere is still
/// reachable, because its state is plain data.
fn lock(device: &SharedDevice) -> MutexGuard<'_, dyn BusDevice + 'static> {
    device.locked()
}

fn unclaimed(access: Access<'_>) -> Dispatch {
    if let Access::Read(data) = access {
        data.fill(0xff);
    }
    Dispatch::Unclaimed
}

fn check_overlap(slots: &[Slot], name: &'static str, base: u64, len: u64) -> Result<(), BusError> {
    match slots.iter().find(|slot| slot.overlaps(base, len)) {
        Some(other) => Err(BusError::Overlap {
            name,
            other: other.name,
            base,
            len,
        }),
        None => Ok(()),
    }
}

/// A posted-write zone: an absolute address range whose writes KVM may post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostedZone {
    /// Which bus.
    pub space: AddressSpace,
    /// First address.
    pub addr: u64,
    /// Bytes.
    pub size: u32,
    /// The device's name, for messages.
    pub device: &'static str,
    /// Its register's flush rule.
    pub flush: Flush,
}

/// Both buses of a VM.
#[derive(Debug, Default)]
pub struct IoBuses {
    /// I/O ports.
    pub pio: PioBus,
    /// Memory-mapped I/O, republished whole when a device moves (shared with what moves
    /// devices: PCI's BAR observer).
    pub mmio: Arc<SwappableMmio>,
}

impl IoBuses {
    /// Dispatches an access in either space.
    pub fn dispatch(&self, space: AddressSpace, addr: u64, access: Access<'_>) -> Dispatch {
        match space {
            AddressSpace::Pio => match u16::try_from(addr) {
                Ok(port) => self.pio.dispatch(port, access),
                Err(_) => unclaimed(access),
            },
            AddressSpace::Mmio => self.mmio.dispatch(addr, access),
        }
    }

    /// The device that holds `addr`, by its slot name, and the offset of `addr` in it:
    /// how tools name a register (the advisor, reports).
    pub fn locate(&self, space: AddressSpace, addr: u64) -> Option<(&'static str, u64)> {
        let slot = match space {
            AddressSpace::Pio => self.pio.slot_at(u16::try_from(addr).ok()?),
            AddressSpace::Mmio => return self.mmio.locate(addr),
        }?;
        Some((slot.name, addr - slot.base))
    }

    /// Every posted register of every device, as absolute zones.
    pub fn posted_zones(&self) -> Vec<PostedZone> {
        let mmio = self.mmio.snapshot();
        let spaces = [
            (AddressSpace::Pio, self.pio.slots()),
            (AddressSpace::Mmio, mmio.slots()),
        ];
        let mut zones = Vec::new();
        for (space, slots) in spaces {
            for slot in slots {
                for register in lock(&slot.device).posted_registers() {
                    zones.push(PostedZone {
                        space,
                        addr: slot.base + register.offset,
                        size: register.size,
                        device: slot.name,
                        flush: register.flush,
                    });
                }
            }
        }
        zones
    }
}

#[cfg(test)]
mod tests;
