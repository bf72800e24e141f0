//! Linux kernels: what `--kernel` holds, recognised from the file as QEMU's `-kernel`
//! does, and the 64-bit Linux boot protocol for bzImages. `linux-loader` parses and
//! loads the image and writes `boot_params`; this module checks what the crate does not
//! (protocol version, truncation, command-line limits), chooses the addresses from
//! [`crate::layout`] and describes the entry state. PVH is in [`super::pvh`]; what both
//! share, in [`super::linux_boot`].

use std::io::Cursor;
use std::mem::size_of;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, CAN_USE_HEAP, E820_MAX_ENTRIES_ZEROPAGE,
    LOADED_HIGH, XLF_KERNEL_64,
};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::KernelLoader;
use vm_memory::{ByteValued, GuestAddress, GuestMemoryMmap};

use super::entry::{EntryMode, EntryState};
use super::linux_boot::{place_initrd, write_cmdline, LinuxBoot};
use super::x86_64::{write_boot_gdt, write_identity_page_tables, BOOT_CS, BOOT_DS, CODE64};
use super::{multiboot, pvh, LoaderError};
use crate::layout::{MemoryLayout, BOOT_STACK_TOP, CMDLINE, HIGH_RAM_START, ZERO_PAGE};

/// What `--kernel` holds, recognised from the file as QEMU's -kernel does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Multiboot,
    BzImage,
    PvhElf,
}

/// Where the setup header starts in a bzImage (and in `boot_params`).
const SETUP_HEADER: usize = 0x1f1;
const BOOT_FLAG_AT: usize = 0x1fe;
const BOOT_FLAG: [u8; 2] = [0x55, 0xaa];
const HEADER_MAGIC_AT: usize = 0x202;
const HEADER_MAGIC: &[u8; 4] = b"HdrS";
/// Protocol 2.12 brought `xloadflags` and with it the 64-bit entry point.
const MIN_PROTOCOL: u16 = 0x020c;
const SECTOR: u64 = 512;
/// The 64-bit entry point is 0x200 bytes into the protected-mode kernel.
const ENTRY_64_OFFSET: u64 = 0x200;
/// `type_of_loader` for a boot loader without an assigned id.
const LOADER_UNDEFINED: u8 = 0xff;
/// The end of the setup heap as QEMU sets it (the command line 64 KiB above the real-mode
/// code, less 0x200). The 64-bit entry skips the setup code that would use the heap; the
/// value only keeps the header what a boot loader would leave.
const HEAP_END: u16 = 0xfe00;

/// Recognises a kernel image: a bzImage (checked to be loadable: not truncated, a 64-bit
/// entry), an ELF64 with a PVH note, or a Multiboot kernel, in that order.
pub fn detect(image: &[u8]) -> Result<KernelFormat, LoaderError> {
    if is_bzimage(image) {
        bzimage_header(image)?;
        return Ok(KernelFormat::BzImage);
    }
    if pvh::entry_note(image).is_some() {
        return Ok(KernelFormat::PvhElf);
    }
    match multiboot::header_flags(image) {
        Ok(_) => Ok(KernelFormat::Multiboot),
        // A 32-bit ELF can only be a Multiboot kernel: its loader says precisely what is
        // wrong with it (truncated, no header, ...).
        Err(LoaderError::NoMultibootHeader) if image.starts_with(b"\x7fELF\x01") => {
            Ok(KernelFormat::Multiboot)
        }
        Err(LoaderError::NoMultibootHeader) if image.starts_with(b"\x7fELF") => {
            Err(LoaderError::NoBootProtocol)
        }
        Err(LoaderError::NoMultibootHeader) => Err(LoaderError::UnknownFormat),
        Err(other) => Err(other),
    }
}

fn is_bzimage(image: &[u8]) -> bool {
    image.get(BOOT_FLAG_AT..BOOT_FLAG_AT + 2) == Some(&BOOT_FLAG[..])
        && image.get(HEADER_MAGIC_AT..HEADER_MAGIC_AT + 4) == Some(&HEADER_MAGIC[..])
}

/// Reads a bzImage's setup header and checks what `linux-loader` does not: the protocol
/// offers a 64-bit entry, and the file holds all the setup sectors and payload the
/// header announces (the crate loads whatever is there).
fn bzimage_header(image: &[u8]) -> Result<setup_header, LoaderError> {
    let header_end = SETUP_HEADER + size_of::<setup_header>();
    let truncated = |needed: u64| LoaderError::TruncatedBzImage {
        len: image.len(),
        needed,
    };
    let header = image
        .get(SETUP_HEADER..header_end)
        .and_then(setup_header::from_slice)
        .copied()
        .ok_or(truncated(header_end as u64))?;
    let version = header.version;
    if version < MIN_PROTOCOL {
        return Err(LoaderError::BootProtocolTooOld { version });
    }
    if header.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LoaderError::No64BitEntry);
    }
    let needed = setup_bytes(&header) + u64::from(header.syssize) * 16;
    if (image.len() as u64) < needed {
        return Err(truncated(needed));
    }
    Ok(header)
}

/// The boot sector and setup code before the protected-mode kernel (0 sectors means 4).
fn setup_bytes(header: &setup_header) -> u64 {
    let sectors = match header.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    (sectors + 1) * SECTOR
}

/// Where a loaded kernel's memory ends: its file payload at the load address, then the
/// `init_size` bytes it decompresses into at `pref_address` (or, when that is below, the
/// load address): relocatable or not, a 64-bit kernel never runs below its
/// `LOAD_PHYSICAL_ADDR`, which `pref_address` holds.
fn kernel_end(header: &setup_header, load_at: u64, payload: u64) -> u64 {
    let runs_at = load_at.max(header.pref_address);
    (load_at + payload).max(runs_at.saturating_add(u64::from(header.init_size)))
}

/// Loads a bzImage's protected-mode kernel at [`HIGH_RAM_START`], as QEMU does (the kernel
/// moves itself to where it runs), with `boot_params` at [`ZERO_PAGE`], identity page
/// tables and a GDT, for the 64-bit entry point.
pub fn load_bzimage(
    memory: &GuestMemoryMmap,
    layout: &MemoryLayout,
    boot: &LinuxBoot<'_>,
) -> Result<EntryState, LoaderError> {
    let header = bzimage_header(boot.image)?;
    let payload = boot.image.len() as u64 - setup_bytes(&header);
    let end = kernel_end(&header, HIGH_RAM_START, payload);
    if end > layout.low_ram_end() {
        return Err(LoaderError::KernelDoesNotFit {
            end,
            ram_end: layout.low_ram_end(),
        });
    }
    write_cmdline(memory, boot.cmdline, u64::from(header.cmdline_size))?;
    let load_at = Some(GuestAddress(HIGH_RAM_START));
    let loaded = BzImage::load(memory, load_at, &mut Cursor::new(boot.image), load_at)
        .map_err(LoaderError::Kernel)?;
    let kernel_load = loaded.kernel_load.0;
    let mut params = boot_params {
        hdr: loaded.setup_header.unwrap_or(header),
        ..Default::default()
    };
    set_header_fields(&mut params.hdr);
    if let Some(initrd) = boot.initrd {
        // `initrd_addr_max` is the highest byte the initrd may occupy.
        let below = (u64::from(header.initrd_addr_max) + 1).min(layout.low_ram_end());
        let at = place_initrd(memory, initrd, end, below)?;
        params.hdr.ramdisk_image = at as u32;
        params.hdr.ramdisk_size = initrd.len() as u32;
    }
    // A field of `boot_params` that kernels read from protocol 2.14 on; older ones
    // ignore it and scan the BIOS area, where the RSDP also is.
    params.acpi_rsdp_addr = boot.rsdp.unwrap_or(0);
    set_e820(&mut params, layout)?;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE)),
        memory,
    )
    .map_err(LoaderError::BootParams)?;
    Ok(EntryState {
        mode: EntryMode::Long64,
        code_selector: BOOT_CS,
        data_selector: BOOT_DS,
        gdt: Some(write_boot_gdt(memory, CODE64)?),
        cr3: write_identity_page_tables(memory)?,
        rip: kernel_load + ENTRY_64_OFFSET,
        rsp: BOOT_STACK_TOP,
        rax: 0,
        rbx: 0,
        rsi: ZERO_PAGE,
    })
}

/// The setup-header fields a boot loader fills in.
fn set_header_fields(hdr: &mut setup_header) {
    hdr.type_of_loader = LOADER_UNDEFINED;
    hdr.loadflags |= CAN_USE_HEAP | LOADED_HIGH;
    hdr.heap_end_ptr = HEAP_END;
    hdr.cmd_line_ptr = CMDLINE as u32;
}

/// Copies the layout's memory map into the zero page's e820 table.
fn set_e820(params: &mut boot_params, layout: &MemoryLayout) -> Result<(), LoaderError> {
    let map = layout.memory_map();
    if map.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(LoaderError::MemoryMapTooLarge {
            entries: map.len(),
            max: E820_MAX_ENTRIES_ZEROPAGE,
        });
    }
    for (slot, range) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: range.start,
            size: range.size,
            r#type: range.kind.e820_type(),
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(())
}

#[cfg(test)]
#[path = "linux_tests.rs"]
mod tests;
