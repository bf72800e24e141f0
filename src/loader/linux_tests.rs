use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::layout::{BOOT_GDT, MIB, PAGE_SIZE, PAGE_TABLES};
use crate::loader::entry::DescriptorTable;
use crate::loader::pvh::tests::{boot, memory, pvh_elf};
use crate::loader::tests::image as multiboot_elf;

/// Payload bytes of the fake bzImage (a multiple of 16, as the build tool pads it).
const PAYLOAD: usize = 0x3000;
/// The fake image's setup: the boot sector and one setup sector.
const SETUP: usize = 2 * 512;

fn put(image: &mut [u8], at: usize, bytes: &[u8]) {
    image[at..at + bytes.len()].copy_from_slice(bytes);
}

/// A minimal bzImage with boot protocol 2.15: the header fields a loader reads, then
/// [`PAYLOAD`] bytes of protected-mode "kernel".
fn bzimage() -> Vec<u8> {
    let mut image = vec![0u8; SETUP];
    image[0x1f1] = 1; // setup_sects
    put(&mut image, 0x1f4, &((PAYLOAD / 16) as u32).to_le_bytes()); // syssize
    put(&mut image, 0x1fe, &0xaa55u16.to_le_bytes());
    put(&mut image, 0x202, b"HdrS");
    put(&mut image, 0x206, &0x020fu16.to_le_bytes());
    image[0x211] = 1; // loadflags: LOADED_HIGH
    put(&mut image, 0x214, &0x10_0000u32.to_le_bytes()); // code32_start
    put(&mut image, 0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(&mut image, 0x236, &3u16.to_le_bytes()); // xloadflags: 64-bit, above 4G
    put(&mut image, 0x238, &2047u32.to_le_bytes()); // cmdline_size
    put(&mut image, 0x258, &0x100_0000u64.to_le_bytes()); // pref_address
    put(&mut image, 0x260, &0x8000u32.to_le_bytes()); // init_size
    image.extend((0..PAYLOAD).map(|i| (i % 251) as u8));
    image
}

fn zero_page(memory: &GuestMemoryMmap) -> boot_params {
    memory.read_obj(GuestAddress(ZERO_PAGE)).unwrap()
}

#[test]
fn each_format_is_recognised() {
    assert_eq!(detect(&bzimage()).unwrap(), KernelFormat::BzImage);
    assert_eq!(detect(&pvh_elf(18)).unwrap(), KernelFormat::PvhElf);
    let multiboot = multiboot_elf(0x10_0000, 3, &[0; 16], 0);
    assert_eq!(detect(&multiboot).unwrap(), KernelFormat::Multiboot);
}

#[test]
fn an_elf_without_a_boot_protocol_is_named_as_such() {
    let error = detect(&pvh_elf(17)).unwrap_err();
    assert!(matches!(error, LoaderError::NoBootProtocol));
    assert_eq!(
        error.to_string(),
        "an ELF file without a PVH entry note or a Multiboot header"
    );
    // A 32-bit ELF can only be Multiboot: its loader then says what is missing.
    let mut no_header = multiboot_elf(0x10_0000, 3, &[0; 16], 0);
    no_header[84] ^= 0xff;
    assert_eq!(detect(&no_header).unwrap(), KernelFormat::Multiboot);
}

#[test]
fn garbage_is_not_a_kernel() {
    for garbage in [&b""[..], b"#!/bin/sh\necho hi\n", &[0xaa; 9000]] {
        let error = detect(garbage).unwrap_err();
        assert!(matches!(error, LoaderError::UnknownFormat), "{error}");
    }
    assert_eq!(
        LoaderError::UnknownFormat.to_string(),
        "not a kernel hushvm can boot (bzImage, ELF with a PVH note, or Multiboot)"
    );
}

#[test]
fn a_truncated_bzimage_is_an_error() {
    let image = bzimage();
    for len in [0x210, SETUP, image.len() - 1] {
        let error = detect(&image[..len]).unwrap_err();
        assert!(
            matches!(error, LoaderError::TruncatedBzImage { .. }),
            "{len:#x}: {error}"
        );
    }
    let (memory, layout) = memory(32 * MIB);
    let cut = &image[..image.len() - 16];
    assert!(matches!(
        load_bzimage(&memory, &layout, &boot(cut, None)),
        Err(LoaderError::TruncatedBzImage { len, needed }) if len == cut.len() && needed == image.len() as u64
    ));
}

#[test]
fn an_old_protocol_or_a_32_bit_kernel_is_refused() {
    let mut old = bzimage();
    put(&mut old, 0x206, &0x0203u16.to_le_bytes());
    let error = detect(&old).unwrap_err();
    assert!(matches!(
        error,
        LoaderError::BootProtocolTooOld { version: 0x0203 }
    ));
    assert_eq!(
        error.to_string(),
        "boot protocol 2.03 is too old: hushvm needs 2.12 or later (a 64-bit entry point)"
    );
    let mut only_32 = bzimage();
    put(&mut only_32, 0x236, &0u16.to_le_bytes());
    assert!(matches!(detect(&only_32), Err(LoaderError::No64BitEntry)));
}

#[test]
fn load_bzimage_fills_in_boot_params() {
    let (memory, layout) = memory(64 * MIB);
    let image = bzimage();
    let initrd = vec![0x77u8; 3 * 4096 + 1];
    load_bzimage(&memory, &layout, &boot(&image, Some(&initrd))).unwrap();
    let params = zero_page(&memory);
    let hdr = params.hdr;
    assert_eq!({ hdr.header }, 0x5372_6448, "the image's header is copied");
    assert_eq!({ hdr.version }, 0x020f);
    assert_eq!(hdr.type_of_loader, 0xff);
    assert_eq!(hdr.loadflags & 0x81, 0x81, "CAN_USE_HEAP | LOADED_HIGH");
    assert_eq!({ hdr.heap_end_ptr }, 0xfe00);
    assert_eq!({ hdr.code32_start } as u64, HIGH_RAM_START);
    assert_eq!({ hdr.cmd_line_ptr } as u64, CMDLINE);
    let mut cmdline = [0u8; 28];
    memory
        .read_slice(&mut cmdline, GuestAddress(CMDLINE))
        .unwrap();
    assert_eq!(&cmdline, b"console=ttyS0 root=/dev/vda\0");
    assert_eq!({ params.acpi_rsdp_addr }, 0xe_0000);

    let map = layout.memory_map();
    assert_eq!(params.e820_entries as usize, map.len());
    for (entry, range) in params.e820_table.iter().zip(&map) {
        let (addr, size, kind) = (entry.addr, entry.size, entry.r#type);
        assert_eq!(
            (addr, size, kind),
            (range.start, range.size, range.kind.e820_type())
        );
    }

    let (at, size) = (u64::from(hdr.ramdisk_image), u64::from(hdr.ramdisk_size));
    assert_eq!(size, initrd.len() as u64);
    assert_eq!(at % PAGE_SIZE, 0);
    assert!(
        at >= 16 * MIB + 0x8000,
        "above init_size bytes from pref_address"
    );
    assert!(at + size <= layout.low_ram_end());
    assert!(
        layout.low_ram_end() - (at + size) < PAGE_SIZE,
        "as high as fits"
    );
    let byte: u8 = memory.read_obj(GuestAddress(at + size - 1)).unwrap();
    assert_eq!(byte, 0x77);
    let first: u8 = memory.read_obj(GuestAddress(HIGH_RAM_START + 252)).unwrap();
    assert_eq!(first, 1, "the payload is at 1 MiB");
}

#[test]
fn the_initrd_stays_below_initrd_addr_max() {
    let (memory, layout) = memory(64 * MIB);
    let mut image = bzimage();
    put(&mut image, 0x22c, &(32 * MIB as u32 - 1).to_le_bytes());
    let initrd = vec![1u8; 5000];
    load_bzimage(&memory, &layout, &boot(&image, Some(&initrd))).unwrap();
    let hdr = zero_page(&memory).hdr;
    let end = u64::from(hdr.ramdisk_image) + u64::from(hdr.ramdisk_size);
    assert!(end <= 32 * MIB && 32 * MIB - end < PAGE_SIZE, "{end:#x}");
    assert_eq!({ hdr.ramdisk_image } as u64 % PAGE_SIZE, 0);
}

#[test]
fn without_an_initrd_or_rsdp_the_fields_stay_zero() {
    let (memory, layout) = memory(32 * MIB);
    let image = bzimage();
    let boot = LinuxBoot {
        rsdp: None,
        ..boot(&image, None)
    };
    load_bzimage(&memory, &layout, &boot).unwrap();
    let params = zero_page(&memory);
    assert_eq!(
        ({ params.hdr.ramdisk_image }, { params.hdr.ramdisk_size }),
        (0, 0)
    );
    assert_eq!({ params.acpi_rsdp_addr }, 0);
}

#[test]
fn the_entry_state_is_the_64_bit_boot_protocol() {
    let (memory, layout) = memory(32 * MIB);
    let image = bzimage();
    let entry = load_bzimage(&memory, &layout, &boot(&image, None)).unwrap();
    let expected = EntryState {
        mode: EntryMode::Long64,
        code_selector: 0x10,
        data_selector: 0x18,
        gdt: Some(DescriptorTable {
            base: BOOT_GDT,
            limit: 31,
        }),
        cr3: PAGE_TABLES,
        rip: HIGH_RAM_START + 0x200,
        rsp: BOOT_STACK_TOP,
        rax: 0,
        rbx: 0,
        rsi: ZERO_PAGE,
    };
    assert_eq!(entry, expected);
    let code: u64 = memory.read_obj(GuestAddress(BOOT_GDT + 0x10)).unwrap();
    assert_eq!(code, CODE64);
    let pml4e: u64 = memory.read_obj(GuestAddress(PAGE_TABLES)).unwrap();
    assert_eq!(
        pml4e & 1,
        1,
        "page tables written (walked in x86_64's tests)"
    );
}

#[test]
fn an_initrd_that_does_not_fit_is_an_error() {
    let (memory, layout) = memory(32 * MIB);
    let image = bzimage();
    let initrd = vec![0u8; 31 * MIB as usize + 1];
    let error = load_bzimage(&memory, &layout, &boot(&image, Some(&initrd))).unwrap_err();
    assert!(
        matches!(error, LoaderError::InitrdDoesNotFit { size, below, .. } if size == initrd.len() && below == 32 * MIB),
        "{error}"
    );
    assert!(error
        .to_string()
        .starts_with("the initrd (32505857 bytes) does not fit below 0x2000000"));
}

#[test]
fn a_command_line_over_the_kernels_limit_is_an_error() {
    let (memory, layout) = memory(32 * MIB);
    let mut image = bzimage();
    put(&mut image, 0x238, &16u32.to_le_bytes());
    let long = LinuxBoot {
        cmdline: "console=ttyS0 quiet",
        ..boot(&image, None)
    };
    let error = load_bzimage(&memory, &layout, &long).unwrap_err();
    assert!(matches!(
        error,
        LoaderError::CmdlineTooLong { len: 19, max: 16 }
    ));
    assert_eq!(
        error.to_string(),
        "the command line is 19 bytes; this kernel accepts at most 16"
    );
    let exact = LinuxBoot {
        cmdline: "console=ttyS0 qu",
        ..long
    };
    load_bzimage(&memory, &layout, &exact).unwrap();
    let nul = LinuxBoot {
        cmdline: "a\0b",
        ..long
    };
    assert!(matches!(
        load_bzimage(&memory, &layout, &nul),
        Err(LoaderError::NulInString(_))
    ));
}

#[test]
fn a_kernel_larger_than_ram_is_an_error() {
    let (memory, layout) = memory(4 * MIB);
    let mut image = bzimage();
    put(&mut image, 0x260, &(8 * MIB as u32).to_le_bytes());
    assert!(matches!(
        load_bzimage(&memory, &layout, &boot(&image, None)),
        Err(LoaderError::KernelDoesNotFit { end, ram_end }) if end == 24 * MIB && ram_end == 4 * MIB
    ));
}

#[test]
fn a_corrupt_bzimage_never_panics() {
    let (memory, layout) = memory(32 * MIB);
    let image = bzimage();
    for at in 0x1f1..0x270 {
        for value in [0x00, 0x7f, 0xff] {
            let mut corrupt = image.clone();
            corrupt[at] = value;
            let _ = detect(&corrupt);
            let _ = load_bzimage(&memory, &layout, &boot(&corrupt, Some(&[1; 100])));
        }
    }
}

/// A real kernel named by HUSHVM_LINUX_IMAGE (a bzImage or a PVH vmlinux) is recognised
/// and loads into 256 MiB: `HUSHVM_LINUX_IMAGE=... cargo test --lib loader -- --ignored`.
#[test]
#[ignore = "needs a kernel image named by HUSHVM_LINUX_IMAGE"]
fn a_real_kernel_loads() {
    let path = std::env::var("HUSHVM_LINUX_IMAGE").expect("HUSHVM_LINUX_IMAGE");
    let image = std::fs::read(&path).unwrap();
    let (memory, layout) = memory(256 * MIB);
    let initrd = [0u8; 4096];
    let boot = boot(&image, Some(&initrd));
    let entry = match detect(&image).unwrap() {
        KernelFormat::BzImage => load_bzimage(&memory, &layout, &boot).unwrap(),
        KernelFormat::PvhElf => crate::loader::load_pvh(&memory, &layout, &boot).unwrap(),
        KernelFormat::Multiboot => panic!("{path}: a Multiboot kernel"),
    };
    eprintln!("{path}: {entry:x?}");
}
