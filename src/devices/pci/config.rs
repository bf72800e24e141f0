//! A PCI function's configuration space (PCI Local Bus 3.0 chapter 6, type-0 header):
//! the bytes, a write mask per byte so read-only bits stay, the BARs and their sizing
//! protocol, and the capability list.
//!
//! The space is PCIe's 4 KiB, so ECAM reaches all of it; past the 256-byte header it
//! reads 0, and nothing there is writable.
//!
//! A BAR's size is in its write mask: the address bits below the size and the type bits
//! are read-only, so writing all-ones reads back the size mask with the type bits, as
//! the sizing protocol wants, with no special case. A write that moves a BAR is
//! reported once, as a [`BarChange`]; the all-ones sizing write and the restore that
//! follows it move nothing, because the change is measured from where the BAR was last
//! reported, not from the register's previous contents.

use thiserror::Error;

mod state;
pub use state::SavedConfigSpace;

/// Bytes of a PCIe configuration space.
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Bytes of the PCI-compatible part: the header and the standard capabilities.
pub const HEADER_SIZE: usize = 256;

/// Register offsets of the type-0 header.
pub const VENDOR_ID: u16 = 0x00;
pub const DEVICE_ID: u16 = 0x02;
pub const COMMAND: u16 = 0x04;
pub const STATUS: u16 = 0x06;
pub const REVISION_ID: u16 = 0x08;
pub const CLASS_CODE: u16 = 0x09;
pub const HEADER_TYPE: u16 = 0x0e;
pub const BAR0: u16 = 0x10;
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
pub const SUBSYSTEM_ID: u16 = 0x2e;
pub const CAPABILITIES_POINTER: u16 = 0x34;
pub const INTERRUPT_LINE: u16 = 0x3c;
pub const INTERRUPT_PIN: u16 = 0x3d;

/// Command register bits.
pub const COMMAND_IO_SPACE: u16 = 1 << 0;
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_PARITY_ERROR: u16 = 1 << 6;
pub const COMMAND_SERR: u16 = 1 << 8;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// The command bits a guest may change; the others are hardwired to 0.
const COMMAND_WRITABLE: u16 = COMMAND_IO_SPACE
    | COMMAND_MEMORY_SPACE
    | COMMAND_BUS_MASTER
    | COMMAND_PARITY_ERROR
    | COMMAND_SERR
    | COMMAND_INTX_DISABLE;

/// Status register bits (read-only here: no error is ever recorded).
pub const STATUS_INTERRUPT: u16 = 1 << 3;
pub const STATUS_CAPABILITIES: u16 = 1 << 4;

/// Number of BAR registers in a type-0 header.
pub const BAR_COUNT: u8 = 6;
/// The first byte after the header proper, where capabilities go.
const FIRST_CAPABILITY: u16 = 0x40;
/// Low bits of a BAR that are its type, not its address.
const IO_TYPE_BITS: u32 = 0x3;
const MEMORY_TYPE_BITS: u32 = 0xf;
const MEMORY_64: u32 = 0b100;

/// What a BAR maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// I/O ports (bit 0 set).
    Io,
    /// Memory below 4 GiB.
    Memory32,
    /// Memory anywhere; takes two BAR registers.
    Memory64,
}

/// A guest moved a BAR: the machine moves the device's range on its bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarChange {
    /// The BAR's index (the lower one of a 64-bit pair).
    pub bar: u8,
    /// Where it was last reported (0: never placed).
    pub old: u64,
    /// Where it is now.
    pub new: u64,
    /// Bytes it spans.
    pub size: u64,
    /// Which bus it belongs on.
    pub kind: BarKind,
}

/// A function's configuration was described wrongly (a build-time mistake, never a
/// guest's).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PciError {
    #[error("BAR {bar}: {reason}")]
    BadBar { bar: u8, reason: &'static str },
    #[error("capability {id:#04x} ({len} bytes) does not fit below offset 0x100")]
    NoRoomForCapability { id: u8, len: usize },
    #[error("capability {id:#04x}: body of {body} bytes but a write mask of {mask}")]
    CapabilityMask { id: u8, body: usize, mask: usize },
    #[error("MSI-X with {vectors} vectors: a table holds 1 to 2048")]
    MsixVectors { vectors: u16 },
    #[error("PCI device {device} BAR {bar}: no room for {size:#x} bytes in the window")]
    WindowFull { device: u8, bar: u8, size: u64 },
    #[error("PCI device number {device}: {reason}")]
    Slot { device: u8, reason: &'static str },
}

/// The identity registers of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIds {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Class code, subclass, programming interface: 0x06_00_00 is a host bridge.
    pub class: u32,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

#[derive(Debug, Clone, Copy)]
struct Bar {
    kind: BarKind,
    size: u64,
    /// Where it was last reported.
    placed: u64,
}

/// The configuration space of one function.
#[derive(Debug)]
pub struct ConfigSpace {
    bytes: Box<[u8]>,
    write_mask: Box<[u8]>,
    /// The lower register of each BAR; the upper half of a 64-bit BAR is `None`.
    bars: [Option<Bar>; BAR_COUNT as usize],
    last_capability: Option<u16>,
    next_capability: u16,
}

impl ConfigSpace {
    /// A type-0 header with `ids`, command and status clear, no BARs, no capabilities.
    pub fn new(ids: PciIds) -> Self {
        let mut space = Self {
            bytes: vec![0; CONFIG_SPACE_SIZE].into_boxed_slice(),
            write_mask: vec![0; CONFIG_SPACE_SIZE].into_boxed_slice(),
            bars: [None; BAR_COUNT as usize],
            last_capability: None,
            next_capability: FIRST_CAPABILITY,
        };
        space.set_u16(VENDOR_ID, ids.vendor);
        space.set_u16(DEVICE_ID, ids.device);
        space.set_u32(REVISION_ID, (ids.class << 8) | u32::from(ids.revision));
        space.set_u16(SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor);
        space.set_u16(SUBSYSTEM_ID, ids.subsystem);
        space.set_mask(COMMAND, &COMMAND_WRITABLE.to_le_bytes());
        space.set_mask(INTERRUPT_LINE, &[0xff]);
        space
    }

    /// Declares BAR `bar` of `kind` and `size` bytes (a power of two: at least 4 for
    /// I/O, 16 for memory). A 64-bit BAR also takes register `bar + 1`.
    pub fn add_bar(&mut self, bar: u8, kind: BarKind, size: u64) -> Result<(), PciError> {
        let bad = |reason| Err(PciError::BadBar { bar, reason });
        let registers = if kind == BarKind::Memory64 { 2 } else { 1 };
        let (min, max) = match kind {
            BarKind::Io => (4, 256),
            BarKind::Memory32 => (16, 1 << 31),
            BarKind::Memory64 => (16, 1 << 63),
        };
        if bar + registers > BAR_COUNT {
            return bad("no such register");
        }
        if !size.is_power_of_two() || size < min || size > max {
            return bad("size is not a power of two in range for its kind");
        }
        if (bar..bar + registers).any(|index| self.bar_owner(index).is_some()) {
            return bad("register already taken");
        }
        let (type_bits, low_type_mask) = match kind {
            BarKind::Io => (1, IO_TYPE_BITS),
            BarKind::Memory32 => (0, MEMORY_TYPE_BITS),
            BarKind::Memory64 => (MEMORY_64, MEMORY_TYPE_BITS),
        };
        let address_mask = !(size - 1);
        let register = bar_register(bar);
        self.set_u32(register, type_bits);
        self.set_mask(
            register,
            &((address_mask as u32) & !low_type_mask).to_le_bytes(),
        );
        if kind == BarKind::Memory64 {
            self.set_mask(register + 4, &((address_mask >> 32) as u32).to_le_bytes());
        }
        self.bars[usize::from(bar)] = Some(Bar {
            kind,
            size,
            placed: 0,
        });
        Ok(())
    }

    /// Appends a capability with `id`, its `body` (the bytes after the id and next
    /// pointer) and the body's write mask; returns its offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8], mask: &[u8]) -> Result<u16, PciError> {
        if body.len() != mask.len() {
            let (body, mask) = (body.len(), mask.len());
            return Err(PciError::CapabilityMask { id, body, mask });
        }
        let offset = self.next_capability;
        let end = usize::from(offset) + 2 + body.len();
        if end > HEADER_SIZE {
            let len = 2 + body.len();
            return Err(PciError::NoRoomForCapability { id, len });
        }
        let at = usize::from(offset);
        self.bytes[at] = id;
        self.bytes[at + 1] = 0;
        self.bytes[at + 2..end].copy_from_slice(body);
        self.write_mask[at + 2..end].copy_from_slice(mask);
        // Offsets are below HEADER_SIZE: the casts are exact.
        match self.last_capability {
            Some(previous) => self.bytes[usize::from(previous) + 1] = offset as u8,
            None => {
                self.bytes[usize::from(CAPABILITIES_POINTER)] = offset as u8;
                self.set_u16(STATUS, self.u16_at(STATUS) | STATUS_CAPABILITIES);
            }
        }
        self.last_capability = Some(offset);
        self.next_capability = end.next_multiple_of(4) as u16;
        Ok(offset)
    }

    /// Reads at `offset`; bytes past the space read 0.
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self
                .bytes
                .get(usize::from(offset) + i)
                .copied()
                .unwrap_or(0);
        }
    }

    /// A guest write at `offset`, kept to the dword `offset` is in; read-only bits
    /// stay. Returns the BAR move it made, if any.
    pub fn write(&mut self, offset: u16, data: &[u8]) -> Option<BarChange> {
        let start = usize::from(offset);
        let in_dword = 4 - start % 4;
        for (i, byte) in data.iter().take(in_dword).enumerate() {
            let at = start + i;
            let Some(mask) = self.write_mask.get(at).copied() else {
                break;
            };
            self.bytes[at] = (self.bytes[at] & !mask) | (byte & mask);
        }
        let register = offset & !3;
        let last = bar_register(BAR_COUNT);
        if !(BAR0..last).contains(&register) {
            return None;
        }
        let sizing = start % 4 == 0 && data.len() >= 4 && data[..4] == [0xff; 4];
        let index = ((register - BAR0) / 4) as u8;
        self.bar_written(index, sizing)
    }

    fn bar_written(&mut self, index: u8, sizing: bool) -> Option<BarChange> {
        let owner = self.bar_owner(index)?;
        let new = self.bar_address(owner)?;
        let bar = self.bars[usize::from(owner)].as_mut()?;
        if sizing || new == bar.placed {
            return None;
        }
        let old = std::mem::replace(&mut bar.placed, new);
        Some(BarChange {
            bar: owner,
            old,
            new,
            size: bar.size,
            kind: bar.kind,
        })
    }

    /// The BAR whose registers include register `index`.
    fn bar_owner(&self, index: u8) -> Option<u8> {
        let slot = |i: u8| self.bars.get(usize::from(i)).copied().flatten();
        match slot(index) {
            Some(_) => Some(index),
            None => index
                .checked_sub(1)
                .filter(|lower| slot(*lower).is_some_and(|bar| bar.kind == BarKind::Memory64)),
        }
    }

    /// The address BAR `bar` holds now (the sizing mask, right after a sizing write).
    pub fn bar_address(&self, bar: u8) -> Option<u64> {
        let kind = self.bars.get(usize::from(bar)).copied().flatten()?.kind;
        let register = bar_register(bar);
        let low = u64::from(self.u32_at(register));
        Some(match kind {
            BarKind::Io => low & !u64::from(IO_TYPE_BITS),
            BarKind::Memory32 => low & !u64::from(MEMORY_TYPE_BITS),
            BarKind::Memory64 => {
                let high = u64::from(self.u32_at(register + 4));
                (high << 32) | (low & !u64::from(MEMORY_TYPE_BITS))
            }
        })
    }

    /// Bytes BAR `bar` spans, if it exists.
    pub fn bar_size(&self, bar: u8) -> Option<u64> {
        Some(self.bars.get(usize::from(bar)).copied().flatten()?.size)
    }

    /// True if BAR `bar` exists and its space (I/O or memory) is enabled in the command
    /// register: only then may the device answer at its address.
    pub fn decodes(&self, bar: u8) -> bool {
        let Some(Some(bar)) = self.bars.get(usize::from(bar)) else {
            return false;
        };
        let bit = match bar.kind {
            BarKind::Io => COMMAND_IO_SPACE,
            BarKind::Memory32 | BarKind::Memory64 => COMMAND_MEMORY_SPACE,
        };
        self.command() & bit != 0
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.u16_at(COMMAND)
    }

    /// The capabilities as a driver walks them: (offset, id), following the pointers
    /// from 0x34 (at most 48 steps, so a loop cannot hang a walker).
    pub fn capabilities(&self) -> Vec<(u16, u8)> {
        let mut found = Vec::new();
        let mut next = u16::from(self.bytes[usize::from(CAPABILITIES_POINTER)]) & !3;
        while next >= FIRST_CAPABILITY && found.len() < 48 {
            let at = usize::from(next);
            found.push((next, self.bytes[at]));
            next = u16::from(self.bytes[at + 1]) & !3;
        }
        found
    }

    /// The interrupt line register (firmware's routing note; the machine may fill it).
    pub fn set_interrupt_line(&mut self, line: u8) {
        self.bytes[usize::from(INTERRUPT_LINE)] = line;
    }

    /// The interrupt pin: 1 for INTA#, 0 for none.
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.bytes[usize::from(INTERRUPT_PIN)] = pin;
    }

    /// The status register's interrupt bit: the function's INTx level.
    pub fn set_interrupt_status(&mut self, asserted: bool) {
        let status = self.u16_at(STATUS) & !STATUS_INTERRUPT;
        let bit = if asserted { STATUS_INTERRUPT } else { 0 };
        self.set_u16(STATUS, status | bit);
    }

    /// Marks the function as one of several in its device (header type bit 7).
    pub fn set_multifunction(&mut self, multifunction: bool) {
        self.bytes[usize::from(HEADER_TYPE)] = if multifunction { 0x80 } else { 0 };
    }

    /// A byte, as the device reads its own registers.
    pub fn u8_at(&self, offset: u16) -> u8 {
        self.bytes.get(usize::from(offset)).copied().unwrap_or(0)
    }

    /// A little-endian word.
    pub fn u16_at(&self, offset: u16) -> u16 {
        let mut bytes = [0; 2];
        self.read(offset, &mut bytes);
        u16::from_le_bytes(bytes)
    }

    /// A little-endian dword.
    pub fn u32_at(&self, offset: u16) -> u32 {
        let mut bytes = [0; 4];
        self.read(offset, &mut bytes);
        u32::from_le_bytes(bytes)
    }

    /// Sets bytes as the device, ignoring the write mask (identity, read-only state).
    pub fn set_bytes(&mut self, offset: u16, data: &[u8]) {
        for (i, byte) in data.iter().enumerate() {
            if let Some(slot) = self.bytes.get_mut(usize::from(offset) + i) {
                *slot = *byte;
            }
        }
    }

    fn set_u16(&mut self, offset: u16, value: u16) {
        self.set_bytes(offset, &value.to_le_bytes());
    }

    fn set_u32(&mut self, offset: u16, value: u32) {
        self.set_bytes(offset, &value.to_le_bytes());
    }

    fn set_mask(&mut self, offset: u16, mask: &[u8]) {
        let start = usize::from(offset);
        self.write_mask[start..start + mask.len()].copy_from_slice(mask);
    }
}

/// The configuration offset of BAR register `bar`.
fn bar_register(bar: u8) -> u16 {
    BAR0 + 4 * u16::from(bar)
}
