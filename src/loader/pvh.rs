//! PVH: a vmlinux ELF64 entered in 32-bit protected mode at the address its Xen
//! `PHYS32_ENTRY` note gives, with `hvm_start_info` in EBX (how QEMU, Firecracker and
//! Cloud Hypervisor boot an uncompressed kernel). `linux-loader` loads the segments,
//! finds the note and writes the start info, its memory map and module list.

use std::io::Cursor;
use std::mem::size_of;

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::entry::{EntryMode, EntryState};
use super::linux_boot::{place_initrd, write_cmdline, LinuxBoot};
use super::x86_64::{write_boot_gdt, BOOT_CS, BOOT_DS, CODE32};
use super::LoaderError;
use crate::layout::{MemoryLayout, BOOT_STACK_TOP, CMDLINE, PAGE_SIZE, PVH_START_INFO};

const ELF64_HEADER_SIZE: usize = 64;
const PHDR64_SIZE: usize = 56;
const CLASS_64: u8 = 2;
const DATA_LSB: u8 = 1;
const MACHINE_X86_64: u16 = 62;
const PT_NOTE: u32 = 4;
const NOTE_HEADER_SIZE: usize = 12;
/// The Xen note that holds the 32-bit PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const XEN_NOTE_NAME: &[u8] = b"Xen\0";

fn bytes_at<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    bytes_at(bytes, at).map(u16::from_le_bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    bytes_at(bytes, at).map(u32::from_le_bytes)
}

fn usize_at(bytes: &[u8], at: usize) -> Option<usize> {
    bytes_at(bytes, at)
        .map(u64::from_le_bytes)
        .and_then(|value| usize::try_from(value).ok())
}

/// The PVH entry point of an ELF64 x86-64 image, if it has the note. Parsed here for
/// detection: `linux-loader` finds the note only while loading into guest memory.
pub(super) fn entry_note(image: &[u8]) -> Option<u32> {
    let header = image.get(..ELF64_HEADER_SIZE)?;
    let is_x86_64 = header.starts_with(b"\x7fELF")
        && header[4] == CLASS_64
        && header[5] == DATA_LSB
        && u16_at(header, 18) == Some(MACHINE_X86_64);
    if !is_x86_64 || usize::from(u16_at(header, 54)?) != PHDR64_SIZE {
        return None;
    }
    let table = usize_at(header, 32)?;
    (0..usize::from(u16_at(header, 56)?)).find_map(|index| {
        let phdr = image.get(table.checked_add(index * PHDR64_SIZE)?..)?;
        if u32_at(phdr, 0)? != PT_NOTE {
            return None;
        }
        let (offset, size) = (usize_at(phdr, 8)?, usize_at(phdr, 32)?);
        note_entry(image.get(offset..offset.checked_add(size)?)?)
    })
}

/// Walks a note segment for Xen's `PHYS32_ENTRY` note; its descriptor starts with the
/// 32-bit entry address.
fn note_entry(mut notes: &[u8]) -> Option<u32> {
    let align = |n: usize| n.checked_next_multiple_of(4);
    while notes.len() >= NOTE_HEADER_SIZE {
        let name_size = usize::try_from(u32_at(notes, 0)?).ok()?;
        let desc_size = usize::try_from(u32_at(notes, 4)?).ok()?;
        let name = notes.get(NOTE_HEADER_SIZE..NOTE_HEADER_SIZE.checked_add(name_size)?)?;
        let desc_at = NOTE_HEADER_SIZE.checked_add(align(name_size)?)?;
        if u32_at(notes, 8)? == XEN_ELFNOTE_PHYS32_ENTRY && name == XEN_NOTE_NAME {
            return (desc_size >= 4).then(|| u32_at(notes, desc_at)).flatten();
        }
        notes = notes.get(desc_at.checked_add(align(desc_size)?)?..)?;
    }
    None
}

/// Loads a PVH kernel: segments at their physical addresses, the command line at
/// [`CMDLINE`], the initrd as the one module, `hvm_start_info` at [`PVH_START_INFO`]
/// with the memory map and module list after it in the same page.
pub fn load_pvh(
    memory: &GuestMemoryMmap,
    layout: &MemoryLayout,
    boot: &LinuxBoot<'_>,
) -> Result<EntryState, LoaderError> {
    if entry_note(boot.image).is_none() {
        return Err(LoaderError::NoPvhEntry);
    }
    // A vmlinux carries no command-line limit of its own: hushvm's room is the limit.
    write_cmdline(memory, boot.cmdline, u64::MAX)?;
    // The segments' bss is not cleared: the crate does not, and fresh guest RAM is zero.
    let loaded =
        Elf::load(memory, None, &mut Cursor::new(boot.image), None).map_err(LoaderError::Kernel)?;
    let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
        return Err(LoaderError::NoPvhEntry);
    };
    let module = boot
        .initrd
        .map(|initrd| {
            place_initrd(memory, initrd, loaded.kernel_end, layout.low_ram_end()).map(|paddr| {
                hvm_modlist_entry {
                    paddr,
                    size: initrd.len() as u64,
                    ..Default::default()
                }
            })
        })
        .transpose()?;
    write_start_info(memory, layout, module, boot.rsdp)?;
    Ok(EntryState {
        mode: EntryMode::Protected32,
        code_selector: BOOT_CS,
        data_selector: BOOT_DS,
        gdt: Some(write_boot_gdt(memory, CODE32)?),
        cr3: 0,
        rip: entry.0,
        // PVH sets no stack; one costs nothing and helps a kernel that pushes early.
        rsp: BOOT_STACK_TOP,
        rax: 0,
        rbx: PVH_START_INFO,
        rsi: 0,
    })
}

/// Writes `hvm_start_info` (version 1), then the memory map, then the module list, all
/// within the page at [`PVH_START_INFO`].
fn write_start_info(
    memory: &GuestMemoryMmap,
    layout: &MemoryLayout,
    module: Option<hvm_modlist_entry>,
    rsdp: Option<u64>,
) -> Result<(), LoaderError> {
    let memmap: Vec<hvm_memmap_table_entry> = layout
        .memory_map()
        .iter()
        .map(|range| hvm_memmap_table_entry {
            addr: range.start,
            size: range.size,
            type_: range.kind.e820_type(),
            reserved: 0,
        })
        .collect();
    let modules: Vec<hvm_modlist_entry> = module.into_iter().collect();
    let memmap_at = PVH_START_INFO + size_of::<hvm_start_info>() as u64;
    let modlist_at = memmap_at + (memmap.len() * size_of::<hvm_memmap_table_entry>()) as u64;
    let room = (PAGE_SIZE as usize - size_of::<hvm_start_info>() - size_of::<hvm_modlist_entry>())
        / size_of::<hvm_memmap_table_entry>();
    if memmap.len() > room {
        return Err(LoaderError::MemoryMapTooLarge {
            entries: memmap.len(),
            max: room,
        });
    }
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { modlist_at },
        cmdline_paddr: CMDLINE,
        rsdp_paddr: rsdp.unwrap_or(0),
        memmap_paddr: memmap_at,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_START_INFO));
    params.set_sections(&memmap, GuestAddress(memmap_at));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(modlist_at));
    }
    PvhBootConfigurator::write_bootparams(&params, memory).map_err(LoaderError::BootParams)
}

#[cfg(test)]
#[path = "pvh_tests.rs"]
pub(super) mod tests;
