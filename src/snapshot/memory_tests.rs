//! The memory file: sparse, exact, mapped privately. No KVM needed.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::memory::{self, PAGE_SIZE};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hushvm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Two regions, as a guest with RAM above the MMIO hole has.
const RANGES: [(u64, u64); 2] = [(0, 8 << 20), (1 << 32, 4 << 20)];

fn guest() -> GuestMemoryMmap {
    let ranges: Vec<(GuestAddress, usize)> = RANGES
        .iter()
        .map(|&(start, bytes)| (GuestAddress(start), bytes as usize))
        .collect();
    GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap()
}

/// A few touched pages: a run of three, one at a region's end, one in the high region.
const TOUCHED: [(u64, u8); 5] = [
    (0x1000, 0x11),
    (0x2000, 0x22),
    (0x3fff, 0x33),
    ((8 << 20) - 1, 0x44),
    ((1 << 32) + 0x5000, 0x55),
];

#[test]
fn the_memory_file_holds_only_nonzero_pages_and_maps_back_exactly() {
    let dir = temp_dir("memory-file");
    let path = memory::file_in(&dir);
    let guest = guest();
    for (addr, value) in TOUCHED {
        guest.write_obj(value, GuestAddress(addr)).unwrap();
    }
    let written = memory::write(&guest, &path).unwrap();
    assert_eq!(written.size, 12 << 20);
    // Pages 1-3, the last page of low RAM, one high page.
    assert_eq!(written.written, 5 * PAGE_SIZE as u64);
    let metadata = std::fs::metadata(&path).unwrap();
    assert_eq!(metadata.len(), 12 << 20);
    assert!(
        metadata.blocks() * 512 < 1 << 20,
        "the file is sparse: {} blocks",
        metadata.blocks()
    );

    let restored = memory::map(&RANGES, &path).unwrap();
    for (addr, value) in TOUCHED {
        assert_eq!(restored.read_obj::<u8>(GuestAddress(addr)).unwrap(), value);
    }
    let mut everything = vec![0u8; 8 << 20];
    restored
        .read_slice(&mut everything, GuestAddress(0))
        .unwrap();
    let mut original = vec![0u8; 8 << 20];
    guest.read_slice(&mut original, GuestAddress(0)).unwrap();
    assert!(everything == original, "low RAM reads back byte for byte");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn writes_to_a_restored_copy_never_reach_the_memory_file() {
    let dir = temp_dir("memory-private");
    let path = memory::file_in(&dir);
    let guest = guest();
    guest.write_obj(0xabu8, GuestAddress(0x1000)).unwrap();
    memory::write(&guest, &path).unwrap();
    let file_before = std::fs::read(&path).unwrap();

    let first = memory::map(&RANGES, &path).unwrap();
    let second = memory::map(&RANGES, &path).unwrap();
    first.write_obj(0xcdu8, GuestAddress(0x1000)).unwrap();
    first.write_obj(0xefu8, GuestAddress(0x9000)).unwrap();
    assert_eq!(second.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0xab);
    assert_eq!(second.read_obj::<u8>(GuestAddress(0x9000)).unwrap(), 0);
    drop(first);
    assert!(
        std::fs::read(&path).unwrap() == file_before,
        "the file is unchanged"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_memory_file_of_another_size_is_refused() {
    let dir = temp_dir("memory-size");
    let path = memory::file_in(&dir);
    memory::write(&guest(), &path).unwrap();
    let error = memory::map(&[(0, 8 << 20)], &path).unwrap_err().to_string();
    assert!(
        error.contains(&format!("{}", 12 << 20)) && error.contains(&format!("{}", 8 << 20)),
        "{error}"
    );
    let error = memory::map(&RANGES, &dir.join("missing"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("missing"), "{error}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_restored_copy_snapshotted_again_keeps_the_pages_it_never_touched() {
    let dir = temp_dir("memory-again");
    let (first, second) = (dir.join("first"), dir.join("second"));
    let guest = guest();
    for (addr, value) in TOUCHED {
        guest.write_obj(value, GuestAddress(addr)).unwrap();
    }
    memory::write(&guest, &first).unwrap();
    // The restored copy's pages are the file's until touched: none is mapped yet.
    let restored = memory::map(&RANGES, &first).unwrap();
    restored.write_obj(0x99u8, GuestAddress(0x7000)).unwrap();
    let written = memory::write(&restored, &second).unwrap();
    assert_eq!(written.written, 6 * PAGE_SIZE as u64);
    let again = memory::map(&RANGES, &second).unwrap();
    for (addr, value) in TOUCHED {
        assert_eq!(again.read_obj::<u8>(GuestAddress(addr)).unwrap(), value);
    }
    assert_eq!(again.read_obj::<u8>(GuestAddress(0x7000)).unwrap(), 0x99);
    let _ = std::fs::remove_dir_all(dir);
}
