use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::layout::{MemoryKind, CMDLINE, MIB};
use crate::loader::entry::DescriptorTable;
use crate::loader::x86_64::DATA;

/// Where the test kernel's one segment loads, and its PVH entry point.
pub(in crate::loader) const KERNEL_AT: u64 = 0x100_0000;
pub(in crate::loader) const PVH_ENTRY: u32 = 0x100_0040;
const SEGMENT_SIZE: u64 = 0x3000;

fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
    let mut note = Vec::new();
    for word in [name.len() as u32, desc.len() as u32, kind] {
        note.extend_from_slice(&word.to_le_bytes());
    }
    note.extend_from_slice(name);
    note.resize(note.len().next_multiple_of(4), 0);
    note.extend_from_slice(desc);
    note.resize(note.len().next_multiple_of(4), 0);
    note
}

/// An ELF64 x86-64 executable: one PT_LOAD segment at [`KERNEL_AT`] (0x1000 bytes in the
/// file, [`SEGMENT_SIZE`] in memory) and a PT_NOTE segment with a GNU note, then a Xen
/// note of type `xen_note_type` holding [`PVH_ENTRY`] (as Linux does, a quad).
pub(in crate::loader) fn pvh_elf(xen_note_type: u32) -> Vec<u8> {
    let notes = [
        note(b"GNU\0", 3, &[0xab; 20]),
        note(b"Xen\0", xen_note_type, &u64::from(PVH_ENTRY).to_le_bytes()),
    ]
    .concat();
    let (phoff, notes_at, load_at) = (64u64, 64 + 2 * 56u64, 0x1000u64);
    let mut elf = vec![0u8; load_at as usize];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4..7].copy_from_slice(&[2, 1, 1]);
    let put = |elf: &mut Vec<u8>, at: usize, bytes: &[u8]| {
        elf[at..at + bytes.len()].copy_from_slice(bytes);
    };
    put(&mut elf, 16, &2u16.to_le_bytes());
    put(&mut elf, 18, &62u16.to_le_bytes());
    put(&mut elf, 24, &0xffff_ffff_8100_0000u64.to_le_bytes());
    put(&mut elf, 32, &phoff.to_le_bytes());
    put(&mut elf, 52, &64u16.to_le_bytes());
    put(&mut elf, 54, &56u16.to_le_bytes());
    put(&mut elf, 56, &2u16.to_le_bytes());
    let load = [
        1u64 | 7 << 32,
        load_at,
        KERNEL_AT,
        KERNEL_AT,
        0x1000,
        SEGMENT_SIZE,
        8,
    ];
    let note_phdr = [4u64 | 4 << 32, notes_at, 0, 0, notes.len() as u64, 0, 4];
    for (i, phdr) in [load, note_phdr].iter().enumerate() {
        let bytes: Vec<u8> = phdr.iter().flat_map(|w| w.to_le_bytes()).collect();
        put(&mut elf, phoff as usize + 56 * i, &bytes);
    }
    put(&mut elf, notes_at as usize, &notes);
    elf.extend((0..0x1000).map(|i| i as u8));
    elf
}

/// `bytes` of guest RAM at 0 and its layout.
pub(in crate::loader) fn memory(bytes: u64) -> (GuestMemoryMmap, MemoryLayout) {
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes as usize)]).unwrap();
    (memory, MemoryLayout::new(bytes).unwrap())
}

/// A Linux boot of `image` with a fixed command line and the ACPI tables at 0xe0000.
pub(in crate::loader) fn boot<'a>(image: &'a [u8], initrd: Option<&'a [u8]>) -> LinuxBoot<'a> {
    LinuxBoot {
        image,
        cmdline: "console=ttyS0 root=/dev/vda",
        initrd,
        rsdp: Some(0xe_0000),
    }
}

#[test]
fn the_entry_note_is_found_past_other_notes() {
    assert_eq!(entry_note(&pvh_elf(18)), Some(PVH_ENTRY));
    assert_eq!(entry_note(&pvh_elf(17)), None, "another Xen note");
    let mut arm = pvh_elf(18);
    arm[18] = 183;
    assert_eq!(entry_note(&arm), None, "not x86-64");
    assert_eq!(entry_note(b"\x7fELF"), None);
}

#[test]
fn a_truncated_or_corrupt_elf_never_panics() {
    let elf = pvh_elf(18);
    for len in 0..elf.len() {
        let _ = entry_note(&elf[..len]);
    }
    for at in 0..0x200 {
        let mut corrupt = elf.clone();
        corrupt[at] = 0xff;
        let _ = entry_note(&corrupt);
    }
}

#[test]
fn load_pvh_writes_the_start_info_memory_map_and_module() {
    let (memory, layout) = memory(64 * MIB);
    let initrd = vec![0x5a; 0x2001];
    let image = pvh_elf(18);
    let entry = load_pvh(&memory, &layout, &boot(&image, Some(&initrd))).unwrap();
    let info: hvm_start_info = memory.read_obj(GuestAddress(PVH_START_INFO)).unwrap();
    assert_eq!((info.magic, info.version), (0x336e_c578, 1));
    assert_eq!(info.cmdline_paddr, CMDLINE);
    let mut cmdline = [0u8; 28];
    memory
        .read_slice(&mut cmdline, GuestAddress(CMDLINE))
        .unwrap();
    assert_eq!(&cmdline, b"console=ttyS0 root=/dev/vda\0");
    assert_eq!(info.rsdp_paddr, 0xe_0000);

    let map = layout.memory_map();
    assert_eq!(info.memmap_entries as usize, map.len());
    assert!(info.memmap_paddr >= PVH_START_INFO + 56);
    for (i, range) in map.iter().enumerate() {
        let at = info.memmap_paddr + 24 * i as u64;
        let entry: hvm_memmap_table_entry = memory.read_obj(GuestAddress(at)).unwrap();
        let kind = if range.kind == MemoryKind::Ram { 1 } else { 2 };
        assert_eq!(
            (entry.addr, entry.size, entry.type_),
            (range.start, range.size, kind)
        );
    }

    assert_eq!(info.nr_modules, 1);
    assert!(info.modlist_paddr + 32 <= PVH_START_INFO + PAGE_SIZE);
    let module: hvm_modlist_entry = memory.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
    assert_eq!(module.size, 0x2001);
    assert_eq!(module.paddr % PAGE_SIZE, 0);
    assert!(module.paddr >= KERNEL_AT + SEGMENT_SIZE);
    assert!(module.paddr + module.size <= layout.low_ram_end());
    assert!(
        layout.low_ram_end() - (module.paddr + module.size) < PAGE_SIZE,
        "as high as fits"
    );
    let byte: u8 = memory
        .read_obj(GuestAddress(module.paddr + 0x2000))
        .unwrap();
    assert_eq!(byte, 0x5a);
    let loaded: u8 = memory.read_obj(GuestAddress(KERNEL_AT + 0x41)).unwrap();
    assert_eq!(loaded, 0x41, "the segment is at its physical address");

    let gdt = DescriptorTable {
        base: crate::layout::BOOT_GDT,
        limit: 31,
    };
    let expected = EntryState {
        mode: EntryMode::Protected32,
        code_selector: 0x10,
        data_selector: 0x18,
        gdt: Some(gdt),
        cr3: 0,
        rip: u64::from(PVH_ENTRY),
        rsp: BOOT_STACK_TOP,
        rax: 0,
        rbx: PVH_START_INFO,
        rsi: 0,
    };
    assert_eq!(entry, expected);
    let code: u64 = memory.read_obj(GuestAddress(gdt.base + 0x10)).unwrap();
    let data: u64 = memory.read_obj(GuestAddress(gdt.base + 0x18)).unwrap();
    assert_eq!((code, data), (CODE32, DATA));
}

#[test]
fn without_an_initrd_there_is_no_module_list() {
    let (memory, layout) = memory(32 * MIB);
    let image = pvh_elf(18);
    load_pvh(&memory, &layout, &boot(&image, None)).unwrap();
    let info: hvm_start_info = memory.read_obj(GuestAddress(PVH_START_INFO)).unwrap();
    assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
}

#[test]
fn pvh_load_errors() {
    let (memory, layout) = memory(32 * MIB);
    let image = pvh_elf(18);
    let no_note = pvh_elf(17);
    assert!(matches!(
        load_pvh(&memory, &layout, &boot(&no_note, None)),
        Err(LoaderError::NoPvhEntry)
    ));
    let initrd = vec![0; 31 * MIB as usize];
    let error = load_pvh(&memory, &layout, &boot(&image, Some(&initrd))).unwrap_err();
    assert!(
        matches!(error, LoaderError::InitrdDoesNotFit { .. }),
        "{error}"
    );
    let (small, small_layout) = self::memory(8 * MIB);
    let error = load_pvh(&small, &small_layout, &boot(&image, None)).unwrap_err();
    assert!(
        matches!(error, LoaderError::Kernel(_)),
        "segment beyond RAM: {error}"
    );
    let long = "x".repeat(CMDLINE_MAX_TEST);
    let too_long = LinuxBoot {
        cmdline: &long,
        ..boot(&image, None)
    };
    assert!(matches!(
        load_pvh(&memory, &layout, &too_long),
        Err(LoaderError::CmdlineTooLong {
            len: CMDLINE_MAX_TEST,
            ..
        })
    ));
}

const CMDLINE_MAX_TEST: usize = crate::layout::CMDLINE_MAX as usize;
