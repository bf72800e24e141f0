//! The memory file: guest RAM's regions one after the other, their zero pages left as
//! holes (a sparse file; `SEEK_DATA` finds what was written), and on restore mapped
//! `MAP_PRIVATE` from the file, so a page is read in only when the guest touches it,
//! restore does not read the file, and the guest's writes stay in its own copy.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use super::SnapshotError;

/// Zero pages are recognised at this size.
pub const PAGE_SIZE: usize = 4096;
/// How much guest RAM is copied out and scanned at a time.
const CHUNK: usize = 1 << 20;

/// What writing the memory file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryWritten {
    /// The file's length: all of guest RAM.
    pub size: u64,
    /// The bytes actually written: the pages that are not all zero.
    pub written: u64,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes guest RAM to `path` (created or truncated), skipping all-zero pages.
pub fn write(memory: &GuestMemoryMmap, path: &Path) -> Result<MemoryWritten, SnapshotError> {
    let file = File::create(path).map_err(io_error(path))?;
    let size: u64 = memory.iter().map(|region| region.len()).sum();
    // The length first: the holes left by skipped pages read back as zeros.
    file.set_len(size).map_err(io_error(path))?;
    let mut buffer = vec![0u8; CHUNK];
    let mut written = 0;
    let mut file_offset = 0u64;
    let pagemap = File::open("/proc/self/pagemap").ok();
    for region in memory.iter() {
        let start = region.start_addr();
        // Anonymous RAM only: a file-backed region (a restored guest's) reads its
        // unmapped pages from the file, so they are not zero.
        let host = memory
            .get_host_address(start)
            .ok()
            .filter(|_| region.file_offset().is_none())
            .map(|host| host as u64);
        let mut done = 0u64;
        while done < region.len() {
            let len = (region.len() - done).min(CHUNK as u64) as usize;
            if let (Some(pagemap), Some(host)) = (&pagemap, host) {
                if never_touched(pagemap, host + done, len) {
                    done += len as u64;
                    continue;
                }
            }
            let chunk = &mut buffer[..len];
            memory
                .read_slice(chunk, GuestAddress(start.0 + done))
                .map_err(|source| SnapshotError::GuestMemory {
                    at: start.0 + done,
                    source,
                })?;
            written +=
                write_nonzero_runs(&file, chunk, file_offset + done).map_err(io_error(path))?;
            done += len as u64;
        }
        file_offset += region.len();
    }
    file.sync_all().map_err(io_error(path))?;
    Ok(MemoryWritten { size, written })
}

/// True if no page of the `len` bytes of anonymous memory at host address `host` was
/// ever touched: none is present or swapped (`/proc/self/pagemap`), so all read as
/// zero. Skipping them keeps a create's time with the guest's touched memory, not its
/// size. Any doubt (a read error) says touched.
fn never_touched(pagemap: &File, host: u64, len: usize) -> bool {
    const PRESENT_OR_SWAPPED: u64 = (1 << 63) | (1 << 62);
    let pages = len.div_ceil(PAGE_SIZE);
    let mut entries = vec![0u8; pages * 8];
    let offset = host / PAGE_SIZE as u64 * 8;
    if pagemap.read_exact_at(&mut entries, offset).is_err() {
        return false;
    }
    entries.chunks_exact(8).all(|entry| {
        u64::from_ne_bytes(entry.try_into().unwrap_or([0xff; 8])) & PRESENT_OR_SWAPPED == 0
    })
}

/// Writes the runs of pages of `chunk` that are not all zero at `offset` on; returns
/// the bytes written.
fn write_nonzero_runs(file: &File, chunk: &[u8], offset: u64) -> io::Result<u64> {
    let mut written = 0;
    let mut run_start: Option<usize> = None;
    let pages = chunk.len().div_ceil(PAGE_SIZE);
    for page in 0..=pages {
        let at = page * PAGE_SIZE;
        let zero = page == pages || is_zero(&chunk[at..(at + PAGE_SIZE).min(chunk.len())]);
        match (run_start, zero) {
            (None, false) => run_start = Some(at),
            (Some(start), true) => {
                let run = &chunk[start..at.min(chunk.len())];
                file.write_all_at(run, offset + start as u64)?;
                written += run.len() as u64;
                run_start = None;
            }
            _ => {}
        }
    }
    Ok(written)
}

fn is_zero(bytes: &[u8]) -> bool {
    // Word at a time: the compiler vectorises this; a byte loop is several times slower.
    let (words, rest) = bytes.split_at(bytes.len() / 8 * 8);
    words
        .chunks_exact(8)
        .all(|word| u64::from_ne_bytes(word.try_into().unwrap_or_default()) == 0)
        && rest.iter().all(|byte| *byte == 0)
}

/// Guest RAM at `ranges` (guest address, bytes), mapped `MAP_PRIVATE` from the memory
/// file at `path`, which must hold exactly that much. Nothing is read here: the kernel
/// reads a page when the guest first touches it.
pub fn map(ranges: &[(u64, u64)], path: &Path) -> Result<GuestMemoryMmap, SnapshotError> {
    let file = File::open(path).map_err(io_error(path))?;
    let expected: u64 = ranges.iter().map(|(_, bytes)| bytes).sum();
    let found = file.metadata().map_err(io_error(path))?.len();
    if found != expected {
        return Err(SnapshotError::MemorySize {
            path: path.to_path_buf(),
            found,
            expected,
        });
    }
    let mut regions = Vec::with_capacity(ranges.len());
    let mut offset = 0u64;
    for &(start, bytes) in ranges {
        let file = file.try_clone().map_err(io_error(path))?;
        let region = MmapRegionBuilder::new(bytes as usize)
            .with_file_offset(FileOffset::new(file, offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            // The guest's writes make private copies; NORESERVE: no swap is reserved
            // for pages the guest may never write.
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|source| SnapshotError::Map {
                path: path.to_path_buf(),
                source,
            })?;
        let region = GuestRegionMmap::new(region, GuestAddress(start))
            .ok_or(SnapshotError::MemoryLayout(start))?;
        regions.push(region);
        offset += bytes;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|_| SnapshotError::MemoryLayout(offset))
}

/// The memory file's path as a snapshot directory holds it.
pub fn file_in(dir: &Path) -> PathBuf {
    dir.join("memory")
}
