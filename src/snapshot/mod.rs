//! Snapshots: a paused machine's state written to a state file ([`file`]) and its RAM to
//! a memory file ([`memory`]), and read back into a fresh machine.
//!
//! A snapshot directory holds `vmstate` and `memory`; the API names both paths itself
//! (Firecracker's `snapshot_path` and `mem_file_path`).

pub mod file;
pub mod memory;
#[cfg(test)]
mod memory_tests;

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use file::FORMAT_VERSION;
pub use memory::MemoryWritten;

/// Where a snapshot's two files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPaths {
    /// The VM state file (Firecracker's `snapshot_path`).
    pub state: PathBuf,
    /// The memory file (`mem_file_path`, `mem_backend.backend_path`).
    pub memory: PathBuf,
}

impl SnapshotPaths {
    /// The two files of a snapshot directory: `DIR/vmstate` and `DIR/memory`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            state: file::file_in(dir),
            memory: memory::file_in(dir),
        }
    }
}

/// A snapshot could not be written or read.
#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not a hushvm state file", .0.display())]
    NotAStateFile(PathBuf),
    #[error("{}: state file version {found}; this hushvm reads version {expected}", path.display())]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{}: truncated state file ({found} bytes, its header says {expected})", path.display())]
    Truncated {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("{}: corrupt state file (checksum {found:#018x}, its header says {expected:#018x})", path.display())]
    Checksum {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("cannot encode the VM state")]
    Encode(#[source] serde_json::Error),
    #[error("{}: the state file's payload is not the state this hushvm writes", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: the memory file holds {found} bytes; the snapshot's guest has {expected}", path.display())]
    MemorySize {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("{}: cannot map the memory file", path.display())]
    Map {
        path: PathBuf,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("guest RAM at {0:#x} overlaps another region or wraps around")]
    MemoryLayout(u64),
    #[error("cannot read guest RAM at {at:#x}")]
    GuestMemory {
        at: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}
