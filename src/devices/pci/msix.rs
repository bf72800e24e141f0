//! MSI-X (PCI Local Bus 3.0 section 6.8.2): the capability's registers, the vector
//! table and the pending-bit array, with delivery through an [`MsiSink`] the machine
//! implements (KVM GSI routes and irqfds there; counters in tests).
//!
//! The sink always knows each vector's effective state: `program(v, None)` when a vector
//! becomes masked (its own mask bit, the function mask, or MSI-X disabled), and
//! `program(v, Some(message))` when it becomes unmasked or is reprogrammed while
//! unmasked, so a live route never points at a stale address. A notification on a
//! masked vector sets its pending bit; unmasking delivers it and clears the bit.

use std::sync::Arc;

use super::config::PciError;

mod state;
pub use state::{SavedMsix, SavedMsixEntry};

/// The capability ID.
pub const MSIX_CAPABILITY_ID: u8 = 0x11;
/// Message control: MSI-X enable.
pub const MSIX_ENABLE: u16 = 1 << 15;
/// Message control: every vector masked.
pub const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// Bytes of one table entry: address low, address high, data, vector control.
pub const TABLE_ENTRY_SIZE: u64 = 16;
/// Vector control: the per-vector mask bit.
pub const VECTOR_MASKED: u32 = 1;
/// The most vectors a table holds.
pub const MAX_VECTORS: u16 = 2048;
/// Bytes of the capability's body, after its ID and next pointer.
pub const CAPABILITY_BODY: usize = 10;

/// An MSI message: the write that raises the interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// Where MSI-X messages go; the machine implements it.
pub trait MsiSink: Send + Sync {
    /// Vector `vector` is now masked (`None`) or delivers `message`.
    fn program(&self, vector: u16, message: Option<MsiMessage>);
    /// Raises vector `vector`, which is unmasked and was programmed.
    fn signal(&self, vector: u16);
}

/// Where the table and the PBA live: a BAR and an offset in it (8-byte aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    pub vectors: u16,
    pub table_bar: u8,
    pub table_offset: u32,
    pub pba_bar: u8,
    pub pba_offset: u32,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    address: u64,
    data: u32,
    control: u32,
}

/// The MSI-X state of one function.
pub struct MsixState {
    layout: MsixLayout,
    entries: Vec<Entry>,
    pending: Vec<u64>,
    /// What the sink was last told, per vector.
    programmed: Vec<Option<MsiMessage>>,
    /// Message control's enable and function-mask bits.
    control: u16,
    sink: Arc<dyn MsiSink>,
}

impl std::fmt::Debug for MsixState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsixState")
            .field("layout", &self.layout)
            .field("control", &self.control)
            .finish()
    }
}

impl MsixState {
    /// A table of `layout.vectors` entries, all masked, MSI-X disabled.
    pub fn new(layout: MsixLayout, sink: Arc<dyn MsiSink>) -> Result<Self, PciError> {
        if layout.vectors == 0 || layout.vectors > MAX_VECTORS {
            return Err(PciError::MsixVectors {
                vectors: layout.vectors,
            });
        }
        let masked = Entry {
            address: 0,
            data: 0,
            control: VECTOR_MASKED,
        };
        let count = usize::from(layout.vectors);
        Ok(Self {
            layout,
            entries: vec![masked; count],
            pending: vec![0; count.div_ceil(64)],
            programmed: vec![None; count],
            control: 0,
            sink,
        })
    }

    /// The capability's body and write mask, for [`super::ConfigSpace::add_capability`]:
    /// message control (table size - 1; enable and function mask writable), then table
    /// and PBA offsets with their BARs.
    pub fn capability(&self) -> ([u8; CAPABILITY_BODY], [u8; CAPABILITY_BODY]) {
        let control = self.layout.vectors - 1;
        let table = (self.layout.table_offset & !7) | u32::from(self.layout.table_bar & 7);
        let pba = (self.layout.pba_offset & !7) | u32::from(self.layout.pba_bar & 7);
        let mut body = [0u8; CAPABILITY_BODY];
        body[0..2].copy_from_slice(&control.to_le_bytes());
        body[2..6].copy_from_slice(&table.to_le_bytes());
        body[6..10].copy_from_slice(&pba.to_le_bytes());
        let mut mask = [0u8; CAPABILITY_BODY];
        mask[1] = ((MSIX_ENABLE | MSIX_FUNCTION_MASK) >> 8) as u8;
        (body, mask)
    }

    /// Where the table and PBA are.
    pub fn layout(&self) -> MsixLayout {
        self.layout
    }

    /// Bytes of the table.
    pub fn table_size(&self) -> u64 {
        u64::from(self.layout.vectors) * TABLE_ENTRY_SIZE
    }

    /// Bytes of the PBA (whole qwords).
    pub fn pba_size(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// Vectors in the table.
    pub fn vectors(&self) -> u16 {
        self.layout.vectors
    }

    /// True when MSI-X is enabled: the function must not use INTx.
    pub fn enabled(&self) -> bool {
        self.control & MSIX_ENABLE != 0
    }

    /// True if `vector` cannot deliver now (or does not exist).
    pub fn masked(&self, vector: u16) -> bool {
        let Some(entry) = self.entries.get(usize::from(vector)) else {
            return true;
        };
        !self.enabled() || self.control & MSIX_FUNCTION_MASK != 0 || entry.control & 1 != 0
    }

    /// True if `vector`'s pending bit is set.
    pub fn pending(&self, vector: u16) -> bool {
        let (word, bit) = pba_bit(vector);
        self.pending
            .get(word)
            .is_some_and(|bits| bits & (1 << bit) != 0)
    }

    /// Message control as the guest left it in configuration space; only the enable
    /// and function-mask bits count.
    pub fn write_control(&mut self, control: u16) {
        self.control = control & (MSIX_ENABLE | MSIX_FUNCTION_MASK);
        for vector in 0..self.layout.vectors {
            self.update(vector);
        }
    }

    /// The device raises `vector`: delivered if unmasked, else left pending. With MSI-X
    /// disabled nothing is recorded (the function raises INTx instead); a vector past
    /// the table is ignored.
    pub fn notify(&mut self, vector: u16) {
        if !self.enabled() || usize::from(vector) >= self.entries.len() {
            return;
        }
        if self.masked(vector) {
            let (word, bit) = pba_bit(vector);
            self.pending[word] |= 1 << bit;
        } else {
            self.sink.signal(vector);
        }
    }

    /// Reads the table at `offset`: a 4- or 8-byte access aligned to its width; other
    /// accesses read 0.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !aligned(offset, data.len()) {
            return;
        }
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            let dword = offset + 4 * i as u64;
            let Some(entry) = self.entries.get((dword / TABLE_ENTRY_SIZE) as usize) else {
                return;
            };
            let value = match dword % TABLE_ENTRY_SIZE {
                0 => entry.address as u32,
                4 => (entry.address >> 32) as u32,
                8 => entry.data,
                _ => entry.control,
            };
            chunk.copy_from_slice(&value.to_le_bytes());
        }
    }

    /// Writes the table at `offset` (4 or 8 bytes, aligned; others are dropped), then
    /// tells the sink what changed.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        if !aligned(offset, data.len()) {
            return;
        }
        let vector = offset / TABLE_ENTRY_SIZE;
        let Some(entry) = self.entries.get_mut(vector as usize) else {
            return;
        };
        for (i, chunk) in data.chunks(4).enumerate() {
            let mut value = [0u8; 4];
            value.copy_from_slice(chunk);
            let value = u32::from_le_bytes(value);
            match (offset + 4 * i as u64) % TABLE_ENTRY_SIZE {
                0 => entry.address = (entry.address & !0xffff_ffff) | u64::from(value),
                4 => entry.address = (entry.address & 0xffff_ffff) | (u64::from(value) << 32),
                8 => entry.data = value,
                // Only the mask bit is writable; the rest is reserved.
                _ => entry.control = value & VECTOR_MASKED,
            }
        }
        // The table has at most 2048 entries: the cast is exact.
        self.update(vector as u16);
    }

    /// Reads the PBA at `offset` (4 or 8 bytes, aligned; others read 0). It is
    /// read-only: writes are for the caller to drop.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !aligned(offset, data.len()) {
            return;
        }
        let Some(word) = self.pending.get((offset / 8) as usize) else {
            return;
        };
        let bytes = word.to_le_bytes();
        let start = (offset % 8) as usize;
        data.copy_from_slice(&bytes[start..start + data.len()]);
    }

    /// Tells the sink `vector`'s effective state if it changed, and delivers a pending
    /// notification once the vector is unmasked.
    fn update(&mut self, vector: u16) {
        let index = usize::from(vector);
        let Some(entry) = self.entries.get(index).copied() else {
            return;
        };
        let wanted = (!self.masked(vector)).then_some(MsiMessage {
            address: entry.address,
            data: entry.data,
        });
        if wanted != self.programmed[index] {
            self.programmed[index] = wanted;
            self.sink.program(vector, wanted);
        }
        let (word, bit) = pba_bit(vector);
        if wanted.is_some() && self.pending[word] & (1 << bit) != 0 {
            self.pending[word] &= !(1 << bit);
            self.sink.signal(vector);
        }
    }
}

/// A table or PBA access the spec allows: a dword or qword at its own alignment.
fn aligned(offset: u64, len: usize) -> bool {
    matches!(len, 4 | 8) && offset % len as u64 == 0
}

fn pba_bit(vector: u16) -> (usize, u32) {
    (usize::from(vector / 64), u32::from(vector % 64))
}

#[cfg(test)]
mod tests;
