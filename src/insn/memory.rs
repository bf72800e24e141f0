//! Guest virtual memory for an instruction's operand: each page translated on its own,
//! so an operand that crosses a page boundary reaches both physical pages.

use super::InsnError;

const PAGE_SIZE: u64 = 4096;

/// A page's translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The guest-physical address the virtual address maps to.
    pub physical: u64,
    pub writable: bool,
}

/// What the completer needs from the guest: its page tables and its physical memory.
pub trait GuestMemory {
    /// Translates one virtual address through the guest's page tables; `None` if unmapped.
    fn translate(&mut self, virtual_address: u64) -> Option<Translation>;
    /// Reads guest-physical memory; false if the range is not RAM.
    fn read_physical(&mut self, physical: u64, buf: &mut [u8]) -> bool;
    /// Writes guest-physical memory; false if the range is not RAM.
    fn write_physical(&mut self, physical: u64, data: &[u8]) -> bool;
}

/// The pieces of `[address, address + len)` that stay inside one page each.
fn page_pieces(address: u64, len: usize) -> impl Iterator<Item = (u64, std::ops::Range<usize>)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let at = address.wrapping_add(done as u64);
        let left_in_page = (PAGE_SIZE - at % PAGE_SIZE) as usize;
        let piece = left_in_page.min(len - done);
        let range = done..done + piece;
        done += piece;
        Some((at, range))
    })
}

/// Reads `buf.len()` bytes at virtual `address`.
pub fn read_virtual(
    memory: &mut dyn GuestMemory,
    address: u64,
    buf: &mut [u8],
) -> Result<(), InsnError> {
    for (at, range) in page_pieces(address, buf.len()) {
        let page = memory
            .translate(at)
            .ok_or(InsnError::Unmapped { address: at })?;
        if !memory.read_physical(page.physical, &mut buf[range]) {
            return Err(InsnError::NotRam {
                physical: page.physical,
            });
        }
    }
    Ok(())
}

/// Reads up to `buf.len()` bytes at virtual `address`, stopping at the first page that is
/// not mapped; returns how many were read (for instruction bytes near an unmapped page).
pub fn read_virtual_prefix(memory: &mut dyn GuestMemory, address: u64, buf: &mut [u8]) -> usize {
    let mut read = 0;
    for (at, range) in page_pieces(address, buf.len()) {
        let end = range.end;
        match memory.translate(at) {
            Some(page) if memory.read_physical(page.physical, &mut buf[range]) => read = end,
            _ => break,
        }
    }
    read
}

/// Writes `data` at virtual `address`. Every page is translated and checked writable
/// before any byte is written, so a fault leaves memory as it was.
pub fn write_virtual(
    memory: &mut dyn GuestMemory,
    address: u64,
    data: &[u8],
) -> Result<(), InsnError> {
    let mut pages = Vec::with_capacity(2);
    for (at, range) in page_pieces(address, data.len()) {
        let page = memory
            .translate(at)
            .ok_or(InsnError::Unmapped { address: at })?;
        if !page.writable {
            return Err(InsnError::ReadOnly { address: at });
        }
        pages.push((page.physical, range));
    }
    for (physical, range) in pages {
        if !memory.write_physical(physical, &data[range]) {
            return Err(InsnError::NotRam { physical });
        }
    }
    Ok(())
}
