//! What the devices read from and write to on the host: COM1's and the virtio console's
//! output, the disk image, the entropy source. A live run opens files; a replay hands the
//! same devices memory and sinks.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{DiskConfig, SerialMode};
use crate::devices::virtio::block::{DiskBackend, FileDisk, SECTOR};
use crate::sync::LockExt;

use super::config::DeviceConfig;
use super::MachineError;

/// A byte buffer shared between a device's output and the caller.
#[derive(Debug, Clone, Default)]
pub struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    /// Everything written so far, leaving the buffer empty.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.locked())
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.locked().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An output that keeps only a count of the bytes written to it: a replay's stand-in
/// for the host's files, so that what replays a trace can tell a write made output.
#[derive(Debug, Clone, Default)]
pub struct CountingSink(Arc<AtomicU64>);

impl CountingSink {
    /// Bytes written so far, by every clone.
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Write for CountingSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A device's output stream.
pub type Output = Box<dyn Write + Send>;

/// One disk's backend.
pub struct DiskBackendSpec {
    pub disk: Box<dyn DiskBackend>,
    /// The guest may only read it.
    pub readonly: bool,
    /// What the inventory says it is ("file:PATH", "memory").
    pub describe: String,
}

/// The host side of every device.
pub struct Backends {
    pub serial: Output,
    /// What COM1's and the console's outputs are, for the inventory.
    pub serial_name: String,
    pub console_name: String,
    /// The disks, in `--disk` order.
    pub disks: Vec<DiskBackendSpec>,
    pub entropy: Option<Box<dyn Read + Send>>,
    pub console: Option<Output>,
    /// A second handle on each disk image, for the `fdatasync` every stop ends with
    /// (a guest that never flushes, a signal): the device owns the first.
    pub disk_syncs: Vec<(std::path::PathBuf, File)>,
}

/// What [`SerialMode::Capture`] outputs collected.
#[derive(Debug, Clone, Default)]
pub struct Captures {
    pub serial: SharedBuffer,
    pub console: SharedBuffer,
}

impl Backends {
    /// Opens what `devices` names on the host.
    pub fn open(devices: &DeviceConfig, captures: &Captures) -> Result<Self, MachineError> {
        let mut disks = Vec::new();
        let mut disk_syncs = Vec::new();
        for config in &devices.disks {
            let disk = open_disk(config)?;
            if let Ok(file) = disk.file().try_clone() {
                disk_syncs.push((config.path.clone(), file));
            }
            disks.push(DiskBackendSpec {
                disk: Box::new(disk),
                readonly: config.readonly,
                describe: format!("file:{}", config.path.display()),
            });
        }
        let entropy = match devices.rng {
            true => Some(Box::new(File::open("/dev/urandom").map_err(MachineError::Entropy)?) as _),
            false => None,
        };
        Ok(Self {
            serial: output(&devices.serial, &captures.serial)?,
            serial_name: describe(&devices.serial),
            console_name: devices
                .virtio_console
                .as_ref()
                .map_or(String::new(), describe),
            disks,
            entropy,
            console: devices
                .virtio_console
                .as_ref()
                .map(|mode| output(mode, &captures.console))
                .transpose()?,
            disk_syncs,
        })
    }

    /// Stand-ins for a replay: in-memory disks of `disk_bytes` each, zeros for entropy,
    /// outputs counted into `output` and discarded.
    pub fn for_replay(disk_bytes: &[u64], rng: bool, console: bool, output: &CountingSink) -> Self {
        let disks = disk_bytes
            .iter()
            .map(|bytes| DiskBackendSpec {
                disk: Box::new(vec![0u8; usize::try_from(*bytes).unwrap_or(0)]),
                readonly: false,
                describe: "memory".into(),
            })
            .collect();
        Self {
            serial: Box::new(output.clone()),
            serial_name: "sink".into(),
            console_name: "sink".into(),
            disks,
            entropy: rng.then(|| Box::new(io::repeat(0)) as _),
            console: console.then(|| Box::new(output.clone()) as _),
            disk_syncs: Vec::new(),
        }
    }
}

/// An output as the inventory names it.
fn describe(mode: &SerialMode) -> String {
    match mode {
        SerialMode::Stdio => "stdio".into(),
        SerialMode::None => "none".into(),
        SerialMode::File(path) => format!("file:{}", path.display()),
        SerialMode::Capture => "capture".into(),
    }
}

fn output(mode: &SerialMode, capture: &SharedBuffer) -> Result<Output, MachineError> {
    Ok(match mode {
        SerialMode::Stdio => Box::new(io::stdout()),
        SerialMode::None => Box::new(io::sink()),
        SerialMode::File(path) => {
            Box::new(
                File::create(path).map_err(|source| MachineError::SerialFile {
                    path: path.clone(),
                    source,
                })?,
            )
        }
        SerialMode::Capture => Box::new(capture.clone()),
    })
}

/// Opens a disk image, with the errors a user can act on.
pub fn open_disk(disk: &DiskConfig) -> Result<FileDisk, MachineError> {
    let error = |problem: DiskProblem| MachineError::Disk {
        path: disk.path.clone(),
        problem,
    };
    let file: File = OpenOptions::new()
        .read(true)
        .write(!disk.readonly)
        .open(&disk.path)
        .map_err(|e| match (e.kind(), e.raw_os_error()) {
            (io::ErrorKind::NotFound, _) => error(DiskProblem::Missing),
            // Opening a directory for writing fails before the is-a-file check below.
            (_, Some(libc::EISDIR)) => error(DiskProblem::NotAFile),
            (_, Some(libc::EACCES | libc::EPERM | libc::EROFS | libc::ETXTBSY))
                if !disk.readonly =>
            {
                error(DiskProblem::NotWritable(e))
            }
            _ => error(DiskProblem::Open(e)),
        })?;
    let metadata = file.metadata().map_err(|e| error(DiskProblem::Open(e)))?;
    if !metadata.is_file() {
        return Err(error(DiskProblem::NotAFile));
    }
    lock(&file, disk.readonly).map_err(|e| match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EACCES) => error(DiskProblem::Locked),
        _ => error(DiskProblem::Lock(e)),
    })?;
    let size = metadata.len();
    if size == 0 || size % SECTOR != 0 {
        return Err(error(DiskProblem::BadSize(size)));
    }
    Ok(FileDisk::new(file, size))
}

/// Takes an advisory lock on the whole image for as long as the file stays open: shared
/// for `readonly`, exclusive otherwise; fails at once (EAGAIN) if another process holds a
/// conflicting one. An open-file-description ("OFD") `fcntl` lock rather than `flock`:
/// it is what QEMU (on its permission bytes) and Cloud Hypervisor (on the whole file)
/// take, and on Linux `flock` locks and `fcntl` locks never see each other; unlike a
/// classic POSIX lock it belongs to this open file, so closing another descriptor of the
/// image (the final sync's duplicate) does not drop it.
fn lock(file: &File, readonly: bool) -> io::Result<()> {
    let kind = if readonly {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    };
    let request = libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        // 0: to the end of the file, however long it grows.
        l_len: 0,
        // Must be 0 for an OFD lock.
        l_pid: 0,
    };
    // SAFETY: `file` is an open descriptor for the call's duration and `request` is a
    // valid, initialised `struct flock` that F_OFD_SETLK only reads.
    let result = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &request) };
    match result {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

/// Why a disk image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskProblem {
    #[error("no such file")]
    Missing,
    #[error("not writable ({0}; add ,readonly to use it read-only)")]
    NotWritable(#[source] io::Error),
    #[error("{0}")]
    Open(#[source] io::Error),
    #[error("locked by another process (is another VM using it?)")]
    Locked,
    #[error("cannot lock it: {0}")]
    Lock(#[source] io::Error),
    #[error("not a regular file")]
    NotAFile,
    #[error("its size, {0} bytes, is not a positive multiple of 512")]
    BadSize(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("hushvm-lock-{}-{name}", std::process::id()));
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        path
    }

    fn open(path: &std::path::Path, readonly: bool) -> Result<FileDisk, MachineError> {
        open_disk(&DiskConfig {
            readonly,
            ..DiskConfig::new(path)
        })
    }

    fn locked(result: Result<FileDisk, MachineError>) -> bool {
        matches!(
            result,
            Err(MachineError::Disk {
                problem: DiskProblem::Locked,
                ..
            })
        )
    }

    /// OFD locks conflict between two opens of one file even in one process, so the
    /// rules are testable here.
    #[test]
    fn one_writer_or_many_readers() {
        let path = image("rw");
        let writer = open(&path, false).unwrap();
        assert!(locked(open(&path, false)), "a second writer");
        assert!(locked(open(&path, true)), "a reader beside a writer");
        drop(writer);
        let first = open(&path, true).unwrap();
        let _second = open(&path, true).expect("two readers");
        assert!(locked(open(&path, false)), "a writer beside readers");
        drop((first, _second));
        open(&path, false).expect("the lock goes with the file");
        let _ = std::fs::remove_file(path);
    }

    /// The final sync's duplicate handle shares the lock: closing it keeps the image
    /// locked (a classic POSIX lock would have been dropped).
    #[test]
    fn closing_a_duplicate_keeps_the_lock() {
        let path = image("dup");
        let writer = open(&path, false).unwrap();
        drop(writer.file().try_clone().unwrap());
        assert!(locked(open(&path, false)));
        let _ = std::fs::remove_file(path);
    }
}
