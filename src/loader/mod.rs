//! Guest image loading: Multiboot (v1) ELF32 kernels, Linux bzImages (64-bit boot
//! protocol) and PVH ELF kernels, recognised from the file by [`detect`].
//!
//! ELF32 is parsed here rather than with `linux-loader`, whose ELF loader takes 64-bit
//! images only; bzImage and PVH loading use `linux-loader`.

pub mod elf32;
pub mod entry;
pub mod host_cmdline;
pub mod linux;
pub mod linux_boot;
pub mod multiboot;
pub mod pvh;
pub mod x86_64;

use std::path::{Path, PathBuf};

use thiserror::Error;
use vm_memory::GuestMemoryMmap;

use crate::layout::MemoryLayout;

pub use entry::{DescriptorTable, EntryMode, EntryState};
pub use linux::{detect, load_bzimage, KernelFormat};
pub use linux_boot::LinuxBoot;
pub use multiboot::{kernel_cmdline, Module};
pub use pvh::load_pvh;

/// Why an image could not be loaded.
#[derive(Debug, Error)]
pub enum LoaderError {
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--initrd is for Linux kernels; a Multiboot kernel takes --module")]
    InitrdForMultiboot,
    #[error("--module is for Multiboot kernels; a Linux kernel takes --initrd")]
    ModulesForLinux,
    #[error("not an ELF file")]
    NotElf,
    #[error("not an ELF32 file (ELF class {class}; a Multiboot kernel must be 32-bit)")]
    NotElf32 { class: u8 },
    #[error("not a little-endian ELF file")]
    NotLittleEndian,
    #[error("not an x86 ELF file (machine {machine})")]
    NotX86 { machine: u16 },
    #[error("not an executable ELF file (type {kind})")]
    NotExecutable { kind: u16 },
    #[error("truncated ELF file: {0} runs past the end")]
    Truncated(&'static str),
    #[error("the ELF file has no loadable segment")]
    NoLoadableSegment,
    #[error("bad segment at {paddr:#x}: {reason}")]
    BadSegment { paddr: u32, reason: &'static str },
    #[error("no Multiboot header (magic 0x1BADB002 with a valid checksum) in the first 8 KiB")]
    NoMultibootHeader,
    #[error(
        "the Multiboot header asks for the a.out kludge (flag 16), which hushvm does not support"
    )]
    AoutKludge,
    #[error("the Multiboot header requires features hushvm does not provide (flags {0:#x})")]
    UnsupportedFlags(u32),
    #[error("segment at {paddr:#x} ({size:#x} bytes) lies outside guest RAM ({ram:#x} bytes)")]
    SegmentOutsideRam { paddr: u32, size: u32, ram: u64 },
    #[error("the entry point {0:#x} is not inside a loaded segment")]
    EntryNotLoaded(u32),
    #[error("kernel, modules and boot information need {needed:#x} bytes; guest RAM is {ram:#x}")]
    DoesNotFit { needed: u64, ram: u64 },
    #[error("the {0} contains a NUL byte")]
    NulInString(&'static str),
    #[error("cannot write guest memory at {at:#x}")]
    GuestMemory {
        at: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("an ELF file without a PVH entry note or a Multiboot header")]
    NoBootProtocol,
    #[error("not a kernel hushvm can boot (bzImage, ELF with a PVH note, or Multiboot)")]
    UnknownFormat,
    #[error("truncated bzImage: {len:#x} bytes, its header says {needed:#x}")]
    TruncatedBzImage { len: usize, needed: u64 },
    #[error(
        "boot protocol {}.{:02} is too old: hushvm needs 2.12 or later (a 64-bit entry point)",
        version >> 8,
        version & 0xff
    )]
    BootProtocolTooOld { version: u16 },
    #[error("the bzImage has no 64-bit entry point (XLF_KERNEL_64 is clear): a 32-bit kernel")]
    No64BitEntry,
    #[error("the ELF file has no PVH entry note (Xen note type 18) or is not ELF64 x86-64")]
    NoPvhEntry,
    #[error("the command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: u64 },
    #[error("invalid command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("the kernel needs RAM up to {end:#x} (to load, then to decompress at its preferred address); RAM below the hole ends at {ram_end:#x}")]
    KernelDoesNotFit { end: u64, ram_end: u64 },
    #[error(
        "the initrd ({size} bytes) does not fit below {below:#x} above the kernel's end at {above:#x}"
    )]
    InitrdDoesNotFit { size: usize, below: u64, above: u64 },
    #[error("the memory map has {entries} entries, more than the boot protocol's {max}")]
    MemoryMapTooLarge { entries: usize, max: usize },
    #[error(transparent)]
    Kernel(linux_loader::loader::Error),
    #[error("cannot write the boot parameters")]
    BootParams(#[source] linux_loader::configurator::Error),
}

/// A kernel to boot and what it boots with.
#[derive(Debug, Clone, Copy)]
pub struct BootRequest<'a> {
    /// The kernel's file name (a Multiboot command line starts with it, as under QEMU).
    pub kernel_name: &'a str,
    pub image: &'a [u8],
    /// The command line, with whatever the machine appended for its devices.
    pub cmdline: &'a str,
    /// Multiboot modules.
    pub modules: &'a [Module],
    /// A Linux initial RAM disk.
    pub initrd: Option<&'a [u8]>,
    /// Where the ACPI RSDP is, for boot protocols that pass it on.
    pub rsdp: Option<u64>,
}

/// The boot-loader interface: puts the kernel and what its boot protocol hands it into
/// guest memory, and says how the boot vCPU must enter it.
pub fn load(
    memory: &GuestMemoryMmap,
    layout: &MemoryLayout,
    request: &BootRequest<'_>,
) -> Result<EntryState, LoaderError> {
    let format = detect(request.image)?;
    if format == KernelFormat::Multiboot {
        if request.initrd.is_some() {
            return Err(LoaderError::InitrdForMultiboot);
        }
        let cmdline = kernel_cmdline(request.kernel_name, request.cmdline);
        return multiboot::load(memory, layout, request.image, &cmdline, request.modules);
    }
    if !request.modules.is_empty() {
        return Err(LoaderError::ModulesForLinux);
    }
    let boot = LinuxBoot {
        image: request.image,
        cmdline: request.cmdline,
        initrd: request.initrd,
        rsdp: request.rsdp,
    };
    match format {
        KernelFormat::BzImage => load_bzimage(memory, layout, &boot),
        _ => load_pvh(memory, layout, &boot),
    }
}

/// Reads a file for loading.
pub fn read_file(path: &Path) -> Result<Vec<u8>, LoaderError> {
    std::fs::read(path).map_err(|source| LoaderError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const MIB: u64 = 1 << 20;

    fn memory(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    /// Loads a Multiboot image into `memory`, with the layout of its size.
    fn load(
        memory: &GuestMemoryMmap,
        image: &[u8],
        cmdline: &str,
        modules: &[Module],
    ) -> Result<EntryState, LoaderError> {
        use vm_memory::GuestMemoryBackend;
        let layout = crate::layout::MemoryLayout::new(memory.last_addr().0 + 1).unwrap();
        multiboot::load(memory, &layout, image, cmdline, modules)
    }

    /// An ELF32 image: one PT_LOAD segment at `paddr` holding a Multiboot header with
    /// `flags`, then `payload`, with `bss` zero bytes after it.
    pub(super) fn image(paddr: u32, flags: u32, payload: &[u8], bss: u32) -> Vec<u8> {
        let mut data = Vec::new();
        for word in [
            multiboot::HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(multiboot::HEADER_MAGIC.wrapping_add(flags)),
        ] {
            data.extend_from_slice(&word.to_le_bytes());
        }
        data.extend_from_slice(payload);
        let mut elf = vec![0u8; 52 + 32];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 1;
        elf[5] = 1;
        elf[6] = 1;
        elf[16..18].copy_from_slice(&2u16.to_le_bytes());
        elf[18..20].copy_from_slice(&3u16.to_le_bytes());
        elf[24..28].copy_from_slice(&(paddr + 12).to_le_bytes());
        elf[28..32].copy_from_slice(&52u32.to_le_bytes());
        elf[42..44].copy_from_slice(&32u16.to_le_bytes());
        elf[44..46].copy_from_slice(&1u16.to_le_bytes());
        let ph = [
            1u32,
            84,
            paddr,
            paddr,
            data.len() as u32,
            data.len() as u32 + bss,
            7,
            4,
        ];
        for (i, word) in ph.iter().enumerate() {
            elf[52 + 4 * i..56 + 4 * i].copy_from_slice(&word.to_le_bytes());
        }
        elf.extend_from_slice(&data);
        elf
    }

    fn read_u32(memory: &GuestMemoryMmap, at: u64) -> u32 {
        memory.read_obj(GuestAddress(at)).unwrap()
    }

    fn read_string(memory: &GuestMemoryMmap, at: u64) -> String {
        let mut bytes = Vec::new();
        for i in 0.. {
            let byte: u8 = memory.read_obj(GuestAddress(at + i)).unwrap();
            if byte == 0 {
                break;
            }
            bytes.push(byte);
        }
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_good_image_loads_with_info_modules_and_cmdline() {
        let mem = memory(8 * MIB);
        let elf = image(0x10_0000, 3, &[0x90, 0xf4], 0x2000);
        let modules = [
            Module {
                name: "initrd.img root=x".into(),
                data: vec![7; 5000],
            },
            Module {
                name: "second".into(),
                data: vec![9; 3],
            },
        ];
        let cmdline = kernel_cmdline("kernel.elf", "console=ttyS0");
        let boot = load(&mem, &elf, &cmdline, &modules).unwrap();
        assert_eq!(boot.rip, 0x10_000c);
        assert_eq!(boot.rax, u64::from(multiboot::BOOTLOADER_MAGIC));
        assert_eq!(boot.rsp, crate::layout::BOOT_STACK_TOP, "a usable stack");
        let payload: u8 = mem.read_obj(GuestAddress(0x10_000c)).unwrap();
        assert_eq!(payload, 0x90);
        let info = boot.rbx;
        assert_eq!(info % 4096, 0);
        assert_eq!(
            read_u32(&mem, info) & 0x24d,
            0x24d,
            "mem, cmdline, mods, mmap, name"
        );
        assert_eq!(
            read_u32(&mem, info + 4),
            639,
            "below the EBDA, as QEMU says"
        );
        assert_eq!(read_u32(&mem, info + 8), 7 * 1024);
        assert_eq!(
            read_string(&mem, u64::from(read_u32(&mem, info + 16))),
            "kernel.elf console=ttyS0"
        );
        assert_eq!(
            read_string(&mem, u64::from(read_u32(&mem, info + 64))),
            "hushvm"
        );
        assert_eq!(read_u32(&mem, info + 20), 2);
        let mods = u64::from(read_u32(&mem, info + 24));
        let (start, end) = (read_u32(&mem, mods), read_u32(&mem, mods + 4));
        assert_eq!(start % 4096, 0, "modules are page-aligned");
        assert!(
            u64::from(start) >= 0x10_0000 + 0x2000,
            "after the kernel's bss"
        );
        assert_eq!(end - start, 5000);
        assert_eq!(
            read_string(&mem, u64::from(read_u32(&mem, mods + 8))),
            "initrd.img root=x"
        );
        let second = read_u32(&mem, mods + 16);
        assert_eq!(second % 4096, 0);
        let byte: u8 = mem.read_obj(GuestAddress(u64::from(second))).unwrap();
        assert_eq!(byte, 9);
        let (mmap_len, mmap) = (
            read_u32(&mem, info + 44),
            u64::from(read_u32(&mem, info + 48)),
        );
        assert_eq!(mmap_len, 3 * 24, "the layout's memory map");
        let last_base: u64 = mem.read_obj(GuestAddress(mmap + 48 + 4)).unwrap();
        let last_len: u64 = mem.read_obj(GuestAddress(mmap + 48 + 12)).unwrap();
        assert_eq!((last_base, last_len), (MIB, 7 * MIB));
    }

    #[test]
    fn the_cmdline_is_the_file_name_and_a_space_even_when_empty() {
        assert_eq!(kernel_cmdline("k.elf", ""), "k.elf ");
    }

    #[test]
    fn malformed_images_get_their_own_errors() {
        let mem = memory(4 * MIB);
        let good = image(0x10_0000, 3, &[0; 16], 0);
        let load_with = |bytes: &[u8]| load(&mem, bytes, "k ", &[]).unwrap_err();

        assert!(matches!(load_with(b"#!/bin/sh\n"), LoaderError::NotElf));
        assert!(matches!(load_with(&[]), LoaderError::NotElf));
        let mut elf64 = good.clone();
        elf64[4] = 2;
        assert!(matches!(
            load_with(&elf64),
            LoaderError::NotElf32 { class: 2 }
        ));
        let mut big_endian = good.clone();
        big_endian[5] = 2;
        assert!(matches!(
            load_with(&big_endian),
            LoaderError::NotLittleEndian
        ));
        let mut arm = good.clone();
        arm[18] = 40;
        assert!(matches!(
            load_with(&arm),
            LoaderError::NotX86 { machine: 40 }
        ));
        let mut shared = good.clone();
        shared[16] = 3;
        assert!(matches!(
            load_with(&shared),
            LoaderError::NotExecutable { kind: 3 }
        ));
        assert!(matches!(load_with(&good[..40]), LoaderError::Truncated(_)));
        assert!(matches!(
            load_with(&good[..90]),
            LoaderError::Truncated("segment data")
        ));
        let mut no_header = good.clone();
        no_header[84] ^= 0xff;
        assert!(matches!(
            load_with(&no_header),
            LoaderError::NoMultibootHeader
        ));
        assert!(matches!(
            load_with(&image(0x10_0000, 1 << 16, &[], 0)),
            LoaderError::AoutKludge
        ));
        assert!(matches!(
            load_with(&image(0x10_0000, 1 << 5, &[], 0)),
            LoaderError::UnsupportedFlags(_)
        ));
        assert!(matches!(
            load_with(&image(0x3f_f000, 3, &[0; 16], 0x1000)),
            LoaderError::SegmentOutsideRam {
                paddr: 0x3f_f000,
                ..
            }
        ));
        let mut far_entry = good.clone();
        far_entry[24..28].copy_from_slice(&0x20_0000u32.to_le_bytes());
        assert!(matches!(
            load_with(&far_entry),
            LoaderError::EntryNotLoaded(0x20_0000)
        ));
        let mut huge_table = good.clone();
        huge_table[44..46].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(matches!(
            load_with(&huge_table),
            LoaderError::Truncated("program header table")
        ));
    }

    #[test]
    fn modules_that_do_not_fit_are_an_error() {
        let mem = memory(2 * MIB);
        let elf = image(0x10_0000, 3, &[0; 16], 0);
        let module = Module {
            name: "big".into(),
            data: vec![0; MIB as usize],
        };
        assert!(matches!(
            load(&mem, &elf, "k ", &[module]),
            Err(LoaderError::DoesNotFit { .. })
        ));
    }

    #[test]
    fn a_nul_in_the_command_line_is_an_error() {
        let mem = memory(2 * MIB);
        let elf = image(0x10_0000, 3, &[0; 16], 0);
        assert!(matches!(
            load(&mem, &elf, "a\0b", &[]),
            Err(LoaderError::NulInString(_))
        ));
    }

    #[test]
    fn the_built_guests_load() {
        let mem = memory(4 * MIB);
        for (name, elf) in crate::guests::GUESTS {
            let boot = load(&mem, elf, name, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(boot.rip >= 0x10_0000, "{name}");
        }
    }
}
