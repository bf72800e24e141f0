//! The x86 structures a boot protocol's entry state points at: a GDT and identity page
//! tables. Written by hand: `linux-loader` writes boot parameters, not processor
//! structures (Firecracker and Cloud Hypervisor keep theirs in their own `arch` code).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::entry::DescriptorTable;
use super::LoaderError;
use crate::layout::{BOOT_GDT, PAGE_SIZE, PAGE_TABLES, PAGE_TABLES_SIZE};

/// Flat 4 GiB 64-bit code: present, DPL 0, execute/read, L = 1.
pub const CODE64: u64 = 0x00af_9b00_0000_ffff;
/// Flat 4 GiB 32-bit code: present, DPL 0, execute/read, D = 1, G = 1.
pub const CODE32: u64 = 0x00cf_9b00_0000_ffff;
/// Flat 4 GiB data: present, DPL 0, read/write, D/B = 1, G = 1.
pub const DATA: u64 = 0x00cf_9300_0000_ffff;
/// The selectors Linux's boot protocols expect: `__BOOT_CS` and `__BOOT_DS`.
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;

/// Page-table entry bits: present, writable, and (in a page directory) a 2 MiB page.
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const HUGE: u64 = 1 << 7;
/// Entries in one table.
const ENTRIES: u64 = 512;
/// Page directories: one per GiB of the identity map.
const DIRECTORIES: u64 = 4;
const HUGE_PAGE: u64 = 2 << 20;

/// Writes a GDT of null, null, `code` (selector 0x10), data (selector 0x18) at
/// [`BOOT_GDT`]: the layout both Linux entry points want.
pub fn write_boot_gdt(memory: &GuestMemoryMmap, code: u64) -> Result<DescriptorTable, LoaderError> {
    let entries = [0, 0, code, DATA];
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    write(memory, BOOT_GDT, &bytes)?;
    Ok(DescriptorTable {
        base: BOOT_GDT,
        limit: (bytes.len() - 1) as u16,
    })
}

/// Writes page tables at [`PAGE_TABLES`] that identity-map the first 4 GiB with 2 MiB
/// pages (PML4, PDPT, four page directories) and returns CR3. Linux's 64-bit entry
/// needs the kernel, `boot_params` and the command line mapped; 4 GiB covers all RAM
/// below the hole.
pub fn write_identity_page_tables(memory: &GuestMemoryMmap) -> Result<u64, LoaderError> {
    let pml4 = PAGE_TABLES;
    let pdpt = pml4 + PAGE_SIZE;
    let first_directory = pdpt + PAGE_SIZE;
    debug_assert!(first_directory + DIRECTORIES * PAGE_SIZE <= PAGE_TABLES + PAGE_TABLES_SIZE);

    let mut top = vec![0u64; 2 * ENTRIES as usize];
    top[0] = pdpt | PRESENT | WRITABLE;
    for directory in 0..DIRECTORIES {
        top[(ENTRIES + directory) as usize] =
            (first_directory + directory * PAGE_SIZE) | PRESENT | WRITABLE;
    }
    let pages =
        (0..DIRECTORIES * ENTRIES).map(|page| (page * HUGE_PAGE) | PRESENT | WRITABLE | HUGE);
    let bytes: Vec<u8> = top
        .into_iter()
        .chain(pages)
        .flat_map(u64::to_le_bytes)
        .collect();
    write(memory, pml4, &bytes)?;
    Ok(pml4)
}

fn write(memory: &GuestMemoryMmap, at: u64, bytes: &[u8]) -> Result<(), LoaderError> {
    memory
        .write_slice(bytes, GuestAddress(at))
        .map_err(|source| LoaderError::GuestMemory { at, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::GIB;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    fn entry(memory: &GuestMemoryMmap, table: u64, index: u64) -> u64 {
        memory.read_obj(GuestAddress(table + 8 * index)).unwrap()
    }

    /// Translates `address` through the tables as the MMU would, 2 MiB pages only.
    fn walk(memory: &GuestMemoryMmap, cr3: u64, address: u64) -> Option<u64> {
        let frame = |e: u64| e & 0x000f_ffff_ffff_f000;
        let pml4e = entry(memory, cr3, (address >> 39) & 511);
        let pdpte = entry(memory, frame(pml4e), (address >> 30) & 511);
        if pml4e & PRESENT == 0 || pdpte & PRESENT == 0 {
            return None;
        }
        let pde = entry(memory, frame(pdpte), (address >> 21) & 511);
        (pde & (PRESENT | HUGE) == PRESENT | HUGE && pde & WRITABLE != 0).then_some(
            (pde & !(HUGE_PAGE - 1) & 0x000f_ffff_ffff_ffff) | (address & (HUGE_PAGE - 1)),
        )
    }

    #[test]
    fn page_tables_map_the_first_4_gib_to_themselves() {
        let memory = memory();
        let cr3 = write_identity_page_tables(&memory).unwrap();
        assert_eq!(cr3, PAGE_TABLES);
        let mut address = 0;
        while address < 4 * GIB {
            assert_eq!(walk(&memory, cr3, address), Some(address), "{address:#x}");
            assert_eq!(
                walk(&memory, cr3, address + 0x1f_f123),
                Some(address + 0x1f_f123)
            );
            address += HUGE_PAGE;
        }
        assert_eq!(walk(&memory, cr3, 4 * GIB), None, "nothing above 4 GiB");
        assert_eq!(entry(&memory, cr3, 1), 0, "one PML4 entry only");
    }

    #[test]
    fn the_gdt_puts_code_at_0x10_and_data_at_0x18() {
        let memory = memory();
        let gdt = write_boot_gdt(&memory, CODE64).unwrap();
        assert_eq!(
            gdt,
            DescriptorTable {
                base: BOOT_GDT,
                limit: 31
            }
        );
        let descriptors: Vec<u64> = (0..4).map(|i| entry(&memory, BOOT_GDT, i)).collect();
        assert_eq!(descriptors, vec![0, 0, CODE64, DATA]);
        assert_eq!(entry(&memory, BOOT_GDT, u64::from(BOOT_CS) / 8), CODE64);
        assert_eq!(entry(&memory, BOOT_GDT, u64::from(BOOT_DS) / 8), DATA);
    }
}
