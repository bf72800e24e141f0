//! Just enough of ELF32 to load a Multiboot kernel: the file header and the loadable
//! program headers, every offset checked against the file.

use super::LoaderError;

/// A loadable segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Where the bytes are in the file.
    pub offset: u32,
    /// Virtual address (used to translate the entry point).
    pub vaddr: u32,
    /// Physical load address.
    pub paddr: u32,
    /// Bytes in the file.
    pub file_size: u32,
    /// Bytes in memory; the rest past `file_size` is zero.
    pub mem_size: u32,
}

/// The parts of an ELF32 executable a loader needs.
#[derive(Debug)]
pub struct Elf32 {
    /// Entry point (virtual).
    pub entry: u32,
    /// PT_LOAD segments.
    pub segments: Vec<Segment>,
}

const MAGIC: &[u8; 4] = b"\x7fELF";
const CLASS_32: u8 = 1;
const DATA_LSB: u8 = 1;
const TYPE_EXEC: u16 = 2;
const MACHINE_386: u16 = 3;
const HEADER_SIZE: usize = 52;
const PHDR_SIZE: usize = 32;
const PT_LOAD: u32 = 1;

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

impl Elf32 {
    /// Parses and checks `image`.
    pub fn parse(image: &[u8]) -> Result<Self, LoaderError> {
        if image.len() < 16 || &image[..4] != MAGIC {
            return Err(LoaderError::NotElf);
        }
        if image[4] != CLASS_32 {
            return Err(LoaderError::NotElf32 { class: image[4] });
        }
        if image[5] != DATA_LSB {
            return Err(LoaderError::NotLittleEndian);
        }
        if image.len() < HEADER_SIZE {
            return Err(LoaderError::Truncated("ELF header"));
        }
        let (kind, machine) = (u16_at(image, 16), u16_at(image, 18));
        if machine != MACHINE_386 {
            return Err(LoaderError::NotX86 { machine });
        }
        if kind != TYPE_EXEC {
            return Err(LoaderError::NotExecutable { kind });
        }
        let entry = u32_at(image, 24);
        let phoff = u32_at(image, 28) as usize;
        let phentsize = usize::from(u16_at(image, 42));
        let phnum = usize::from(u16_at(image, 44));
        if phentsize < PHDR_SIZE {
            return Err(LoaderError::Truncated("program header entry size"));
        }
        let table_end = phnum
            .checked_mul(phentsize)
            .and_then(|size| size.checked_add(phoff))
            .filter(|end| *end <= image.len())
            .ok_or(LoaderError::Truncated("program header table"))?;
        let segments = image[phoff..table_end]
            .chunks_exact(phentsize)
            .filter(|ph| u32_at(ph, 0) == PT_LOAD)
            .map(|ph| segment(image, ph))
            .collect::<Result<Vec<_>, _>>()?;
        if segments.is_empty() {
            return Err(LoaderError::NoLoadableSegment);
        }
        Ok(Self { entry, segments })
    }

    /// The entry point as a physical address: translated through the segment that
    /// contains it, as QEMU does for kernels linked at a virtual address.
    pub fn physical_entry(&self) -> Result<u32, LoaderError> {
        self.segments
            .iter()
            .find(|s| self.entry.wrapping_sub(s.vaddr) < s.mem_size)
            .map(|s| s.paddr.wrapping_add(self.entry - s.vaddr))
            .ok_or(LoaderError::EntryNotLoaded(self.entry))
    }
}

fn segment(image: &[u8], ph: &[u8]) -> Result<Segment, LoaderError> {
    let segment = Segment {
        offset: u32_at(ph, 4),
        vaddr: u32_at(ph, 8),
        paddr: u32_at(ph, 12),
        file_size: u32_at(ph, 16),
        mem_size: u32_at(ph, 20),
    };
    let end = u64::from(segment.offset) + u64::from(segment.file_size);
    if end > image.len() as u64 {
        return Err(LoaderError::Truncated("segment data"));
    }
    if segment.file_size > segment.mem_size {
        return Err(LoaderError::BadSegment {
            paddr: segment.paddr,
            reason: "more bytes in the file than in memory",
        });
    }
    Ok(segment)
}
