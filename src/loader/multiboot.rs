//! Multiboot (v1) loading, the way `qemu-system-x86_64 -kernel` does it: ELF32 segments
//! at their physical addresses, modules page-aligned after the kernel, and the
//! information structure (memory, memory map, command line, modules, loader name) after
//! the modules.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::elf32::Elf32;
use super::LoaderError;

/// The header's magic.
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// What EAX holds at entry.
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The header must be in the first 8 KiB, 4-byte aligned.
const HEADER_SEARCH: usize = 8192;
/// Header flag bits we honour: page-align modules (0), memory info (1), video mode (2,
/// a request the loader may ignore).
const KNOWN_REQUIRED_FLAGS: u32 = 0b111;
/// Header flag 16: the a.out kludge, load addresses in the header.
const AOUT_KLUDGE: u32 = 1 << 16;

const INFO_MEMORY: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODULES: u32 = 1 << 3;
const INFO_MEMORY_MAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;
const INFO_SIZE: u64 = 128;
const MMAP_ENTRY_SIZE: u32 = 24;
const MODULE_ENTRY_SIZE: u64 = 16;
const PAGE: u64 = 4096;
const LOW_MEMORY_END: u64 = 0xa_0000;
const BIOS_AREA: u64 = 0xf_0000;
const HIGH_MEMORY: u64 = 0x10_0000;
const LOADER_NAME: &str = "hushvm";

/// A file handed to the guest as a Multiboot module.
#[derive(Debug, Clone)]
pub struct Module {
    /// The module's string (QEMU: its file name and arguments).
    pub name: String,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// Where the guest starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    /// Physical entry point.
    pub entry: u32,
    /// Physical address of the Multiboot information structure (EBX).
    pub info_addr: u32,
}

/// The command line a Multiboot kernel sees under QEMU: its file name, a space, then the
/// user's command line.
pub fn kernel_cmdline(kernel_name: &str, cmdline: &str) -> String {
    format!("{kernel_name} {cmdline}")
}

fn align_up(value: u64, to: u64) -> u64 {
    value.div_ceil(to) * to
}

/// Finds and checks the Multiboot header; returns its flags.
pub(super) fn header_flags(image: &[u8]) -> Result<u32, LoaderError> {
    let search = &image[..image.len().min(HEADER_SEARCH)];
    let word = |at: usize| {
        u32::from_le_bytes([search[at], search[at + 1], search[at + 2], search[at + 3]])
    };
    let at = (0..search.len().saturating_sub(11))
        .step_by(4)
        .find(|&at| {
            word(at) == HEADER_MAGIC
                && word(at)
                    .wrapping_add(word(at + 4))
                    .wrapping_add(word(at + 8))
                    == 0
        })
        .ok_or(LoaderError::NoMultibootHeader)?;
    let flags = word(at + 4);
    if flags & AOUT_KLUDGE != 0 {
        return Err(LoaderError::AoutKludge);
    }
    if flags & 0xffff & !KNOWN_REQUIRED_FLAGS != 0 {
        return Err(LoaderError::UnsupportedFlags(flags));
    }
    Ok(flags)
}

/// Loads `image` and `modules` into `memory` and writes the information structure.
pub fn load(
    memory: &GuestMemoryMmap,
    image: &[u8],
    cmdline: &str,
    modules: &[Module],
) -> Result<BootInfo, LoaderError> {
    let elf = Elf32::parse(image)?;
    header_flags(image)?;
    let ram = memory.last_addr().0 + 1;
    let mut kernel_end = 0u64;
    for segment in &elf.segments {
        let start = u64::from(segment.paddr);
        let end = start + u64::from(segment.mem_size);
        if end > ram {
            return Err(LoaderError::SegmentOutsideRam {
                paddr: segment.paddr,
                size: segment.mem_size,
                ram,
            });
        }
        let bytes = &image[segment.offset as usize..][..segment.file_size as usize];
        write(memory, start, bytes)?;
        write_zeros(memory, start + bytes.len() as u64, end)?;
        kernel_end = kernel_end.max(end);
    }
    let entry = elf.physical_entry()?;

    let mut next = align_up(kernel_end, PAGE);
    let mut placed = Vec::with_capacity(modules.len());
    for module in modules {
        let end = next + module.data.len() as u64;
        if end > ram {
            return Err(LoaderError::DoesNotFit { needed: end, ram });
        }
        write(memory, next, &module.data)?;
        placed.push((next, end));
        next = align_up(end, PAGE);
    }
    let info_addr = write_info(memory, next, ram, cmdline, modules, &placed)?;
    Ok(BootInfo { entry, info_addr })
}

/// Appends byte blobs after a base address and hands back their addresses.
struct Heap {
    next: u64,
    bytes: Vec<u8>,
    base: u64,
}

impl Heap {
    fn push(&mut self, data: &[u8]) -> u32 {
        let at = self.next;
        self.bytes.extend_from_slice(data);
        self.next += data.len() as u64;
        at as u32
    }

    fn push_str(&mut self, text: &str) -> u32 {
        let at = self.push(text.as_bytes());
        self.push(&[0]);
        at
    }
}

fn write_info(
    memory: &GuestMemoryMmap,
    base: u64,
    ram: u64,
    cmdline: &str,
    modules: &[Module],
    placed: &[(u64, u64)],
) -> Result<u32, LoaderError> {
    if cmdline.contains('\0') {
        return Err(LoaderError::NulInString("command line"));
    }
    let mut heap = Heap {
        next: base + INFO_SIZE,
        bytes: Vec::new(),
        base,
    };
    let regions = [
        (0, LOW_MEMORY_END, 1u32),
        (BIOS_AREA, HIGH_MEMORY - BIOS_AREA, 2),
        (HIGH_MEMORY, ram - HIGH_MEMORY, 1),
    ];
    let mmap_addr = heap.next as u32;
    for (start, len, kind) in regions {
        let mut entry = Vec::with_capacity(MMAP_ENTRY_SIZE as usize);
        entry.extend_from_slice(&(MMAP_ENTRY_SIZE - 4).to_le_bytes());
        entry.extend_from_slice(&start.to_le_bytes());
        entry.extend_from_slice(&len.to_le_bytes());
        entry.extend_from_slice(&kind.to_le_bytes());
        heap.push(&entry);
    }
    let mmap_length = heap.next as u32 - mmap_addr;
    let mods_addr = heap.next as u32;
    heap.next += MODULE_ENTRY_SIZE * modules.len() as u64;
    heap.bytes
        .resize((heap.next - base - INFO_SIZE) as usize, 0);
    let mut module_table = Vec::with_capacity(modules.len() * MODULE_ENTRY_SIZE as usize);
    for (module, (start, end)) in modules.iter().zip(placed) {
        if module.name.contains('\0') {
            return Err(LoaderError::NulInString("module name"));
        }
        let string = heap.push_str(&module.name);
        for word in [*start as u32, *end as u32, string, 0] {
            module_table.extend_from_slice(&word.to_le_bytes());
        }
    }
    let table_at = (u64::from(mods_addr) - base - INFO_SIZE) as usize;
    heap.bytes[table_at..table_at + module_table.len()].copy_from_slice(&module_table);
    let cmdline_addr = heap.push_str(cmdline);
    let loader_name = heap.push_str(LOADER_NAME);
    if heap.next > ram.min(u64::from(u32::MAX)) {
        return Err(LoaderError::DoesNotFit {
            needed: heap.next,
            ram,
        });
    }

    let mut info = [0u32; (INFO_SIZE / 4) as usize];
    info[0] = INFO_MEMORY | INFO_CMDLINE | INFO_MODULES | INFO_MEMORY_MAP | INFO_LOADER_NAME;
    info[1] = (LOW_MEMORY_END / 1024) as u32;
    info[2] = ((ram - HIGH_MEMORY) / 1024) as u32;
    info[4] = cmdline_addr;
    info[5] = modules.len() as u32;
    info[6] = mods_addr;
    info[11] = mmap_length;
    info[12] = mmap_addr;
    info[16] = loader_name;
    let info_bytes: Vec<u8> = info.iter().flat_map(|w| w.to_le_bytes()).collect();
    write(memory, heap.base, &info_bytes)?;
    write(memory, heap.base + INFO_SIZE, &heap.bytes)?;
    Ok(heap.base as u32)
}

fn write(memory: &GuestMemoryMmap, at: u64, bytes: &[u8]) -> Result<(), LoaderError> {
    memory
        .write_slice(bytes, GuestAddress(at))
        .map_err(|source| LoaderError::GuestMemory { at, source })
}

fn write_zeros(memory: &GuestMemoryMmap, from: u64, to: u64) -> Result<(), LoaderError> {
    const ZEROS: [u8; 4096] = [0; 4096];
    let mut at = from;
    while at < to {
        let chunk = (to - at).min(ZEROS.len() as u64) as usize;
        write(memory, at, &ZEROS[..chunk])?;
        at += chunk as u64;
    }
    Ok(())
}
