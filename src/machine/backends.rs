//! What the devices read from and write to on the host: COM1's and the virtio console's
//! output, the disk image, the entropy source. A live run opens files; a replay hands the
//! same devices memory and sinks.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::access::DeviceAccess;
use crate::config::{DiskConfig, SerialMode, VsockConfig};
use crate::devices::rtc::Clock;
use crate::devices::virtio::block::{DiskBackend, FileDisk, SECTOR};
use crate::event_loop::{HeldOutput, OutputWait, Resume};
use crate::net::config::{MacAddr, NetConfig};
use crate::net::tap::Tap;
use crate::rate_limiter::RateLimiterConfig;
use crate::sync::LockExt;

use super::device_table::Devices;

use super::inventory::net_id;
use super::machine_config::DeviceConfig;
use super::vsock_host::listen_vsock;
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

/// A destination on the host that never blocks its writer (a vCPU or the event loop,
/// under the device's lock): opened non-blocking, it refuses what it cannot take now
/// with `WouldBlock`, which the device keeps (COM1's FIFO, the console's pending bytes)
/// until the event loop sees room. A destination whose reader is gone takes every byte
/// and drops it, counted: the guest is not held up by a host that stopped listening.
pub struct HostOutput {
    file: File,
    wait: Arc<OutputWait>,
}

impl HostOutput {
    /// `file`, made non-blocking by the caller; and what the event loop watches.
    fn new(file: File) -> io::Result<(Self, Arc<OutputWait>)> {
        let wait = Arc::new(OutputWait::new(file.as_raw_fd())?);
        Ok((
            Self {
                file,
                wait: wait.clone(),
            },
            wait,
        ))
    }
}

impl Write for HostOutput {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        loop {
            return match self.file.write(data) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait.refuse();
                    Err(e)
                }
                Err(_) => {
                    self.wait.drop_bytes(data.len());
                    Ok(data.len())
                }
                Ok(n) => Ok(n),
            };
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The destination behind `fd` as a file of its own with `O_NONBLOCK` set, so that no
/// writer ever waits in `write()`. A pipe, FIFO or terminal is reopened through
/// `/proc/self/fd` (a description of our own: the flag never reaches the shell that
/// shares the original; `O_NOCTTY`: a terminal never becomes hushvm's controlling one);
/// a regular file never refuses and is duplicated as it is; what cannot be reopened (a
/// socket, a pipe whose reader is gone) gets the flag on the shared description.
fn non_blocking(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<File> {
    let duplicate = File::from(fd.try_clone_to_owned()?);
    if duplicate.metadata()?.file_type().is_file() {
        return Ok(duplicate);
    }
    let reopened = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    match reopened {
        Ok(file) => Ok(file),
        Err(_) => {
            set_non_blocking(&duplicate)?;
            Ok(duplicate)
        }
    }
}

fn set_non_blocking(file: &File) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own for the call's duration; F_GETFL/F_SETFL touch no
    // memory of ours.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let result = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    match result {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

/// A virtio-net device's host side: its tap, its address and its limits.
pub struct NetBackendSpec {
    pub tap: Tap,
    pub mac: [u8; 6],
    pub rx_limit: RateLimiterConfig,
    pub tx_limit: RateLimiterConfig,
    /// "tap:NAME", for the inventory.
    pub describe: String,
}

/// Opens the taps `--net` names: one queue pair each (several are not offered yet).
fn open_nets(configs: &[NetConfig]) -> Result<Vec<NetBackendSpec>, MachineError> {
    let mut nets = Vec::new();
    for (index, config) in configs.iter().enumerate() {
        if config.queue_pairs != 1 {
            return Err(MachineError::NetQueuePairs {
                tap: config.tap.clone(),
                asked: config.queue_pairs,
            });
        }
        let tap = Tap::open(&config.tap, 1)?
            .pop()
            .ok_or_else(|| MachineError::MissingBackend(net_id(index)))?;
        let default_mac = MacAddr::default_for(u8::try_from(index).unwrap_or(u8::MAX));
        nets.push(NetBackendSpec {
            tap,
            mac: config.mac.unwrap_or(default_mac).0,
            rx_limit: config.rx_limit,
            tx_limit: config.tx_limit,
            describe: format!("tap:{}", config.tap),
        });
    }
    Ok(nets)
}

/// The monotonic clock the network limiters read, in nanoseconds since its first use.
pub fn monotonic_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
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
    /// The vsock device's listening socket, bound at its `uds_path`.
    pub vsock: Option<(UnixListener, VsockConfig)>,
    /// COM1's destination, when it is one that can refuse (stdio, a file that is a pipe).
    pub serial_wait: Option<Arc<OutputWait>>,
    /// The virtio console's, likewise.
    pub console_wait: Option<Arc<OutputWait>>,
    /// The virtio-net devices' taps, in `--net` order.
    pub nets: Vec<NetBackendSpec>,
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
        let (serial, serial_wait) = output(&devices.serial, &captures.serial)?;
        let console = devices
            .virtio_console
            .as_ref()
            .map(|mode| output(mode, &captures.console))
            .transpose()?;
        let (console, console_wait) = match console {
            Some((console, wait)) => (Some(console), wait),
            None => (None, None),
        };
        Ok(Self {
            serial,
            serial_name: describe(&devices.serial),
            console_name: devices
                .virtio_console
                .as_ref()
                .map_or(String::new(), describe),
            disks,
            entropy,
            console,
            disk_syncs,
            vsock: devices
                .vsock
                .as_ref()
                .map(|config| {
                    Ok::<_, MachineError>((listen_vsock(&config.uds_path)?, config.clone()))
                })
                .transpose()?,
            serial_wait,
            console_wait,
            nets: open_nets(&devices.net)?,
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
            vsock: None,
            serial_wait: None,
            console_wait: None,
            nets: Vec::new(),
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

/// An output and, for a destination that can refuse bytes, what the event loop watches.
fn output(
    mode: &SerialMode,
    capture: &SharedBuffer,
) -> Result<(Output, Option<Arc<OutputWait>>), MachineError> {
    let file = match mode {
        SerialMode::None => return Ok((Box::new(io::sink()), None)),
        SerialMode::Capture => return Ok((Box::new(capture.clone()), None)),
        SerialMode::Stdio => non_blocking(io::stdout().as_fd()).map_err(MachineError::Output)?,
        SerialMode::File(path) => {
            let file_error = |source| MachineError::SerialFile {
                path: path.clone(),
                source,
            };
            // Opening a FIFO waits for its reader, as before; writes never wait.
            let file = File::create(path).map_err(file_error)?;
            set_non_blocking(&file).map_err(file_error)?;
            file
        }
    };
    let (output, wait) = HostOutput::new(file).map_err(MachineError::Output)?;
    Ok((Box::new(output), Some(wait)))
}

/// The devices whose destination may refuse bytes, and how each resumes: COM1 offers its
/// FIFO again; the console's doorbell service runs its queues (its pending bytes first).
pub fn held_outputs<C: Clock>(
    (serial, console): (Option<Arc<OutputWait>>, Option<Arc<OutputWait>>),
    devices: &Devices<C>,
) -> Vec<HeldOutput> {
    let mut held = Vec::new();
    if let Some(wait) = serial {
        let com1 = devices.com1.clone();
        let resume: Resume = Arc::new(move |access: &DeviceAccess| {
            access.operation(|_| com1.locked().flush_transmit());
        });
        held.push(HeldOutput {
            name: "COM1",
            wait,
            resume,
        });
    }
    let console_slot = devices
        .virtio
        .iter()
        .find(|wiring| wiring.id == super::inventory::CONSOLE_ID);
    if let (Some(wait), Some(slot)) = (console, console_slot) {
        let service = slot.service.clone();
        let resume: Resume = Arc::new(move |access: &DeviceAccess| service.ring(access, None));
        held.push(HeldOutput {
            name: "virtio-console",
            wait,
            resume,
        });
    }
    held
}

/// How long the stop waits for a destination to take the bytes devices still hold.
const HELD_OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// At the stop, on main: what devices still hold for a slow destination is offered
/// until it is taken or the grace period ends; what was dropped is said.
pub fn release_held(held: &[HeldOutput], access: &DeviceAccess) {
    let deadline = Instant::now() + HELD_OUTPUT_GRACE;
    for output in held {
        if !output.drain_until(access, deadline) {
            eprintln!(
                "hushvm: warning: {}'s destination took no more output for {:?}; the bytes \
                 still held were dropped",
                output.name, HELD_OUTPUT_GRACE
            );
        }
        let dropped = output.wait.dropped();
        if dropped > 0 {
            eprintln!(
                "hushvm: warning: {dropped} bytes of {} output were dropped: its reader \
                 had gone",
                output.name
            );
        }
    }
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
    #[error("not writable (add ,readonly to use it read-only)")]
    NotWritable(#[source] io::Error),
    #[error(transparent)]
    Open(io::Error),
    #[error("locked by another process (is another VM using it?)")]
    Locked,
    #[error("cannot lock it")]
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

    /// A pipe nobody reads (`sleep`'s standard input): the destination refuses once full,
    /// signalling once per episode, without touching the original description's flags;
    /// once the reader is gone it takes and counts every byte.
    #[test]
    fn a_full_pipe_refuses_and_a_gone_reader_drops() {
        use std::process::{Command, Stdio};
        let mut reader = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let pipe = reader.stdin.take().unwrap();
        let (mut output, wait) = HostOutput::new(non_blocking(pipe.as_fd()).unwrap()).unwrap();
        // SAFETY: F_GETFL on an fd we own; it touches no memory.
        let flags = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0, "the original stays blocking");
        let chunk = [b'x'; 4096];
        let mut taken = 0;
        let refusal = loop {
            match output.write(&chunk) {
                Ok(n) => taken += n,
                Err(error) => break error,
            }
            assert!(taken < 64 << 20, "a pipe holds less");
        };
        assert_eq!(refusal.kind(), io::ErrorKind::WouldBlock);
        assert!(taken >= chunk.len() && wait.is_waiting());
        assert!(output.write(&chunk).is_err(), "still full");
        assert!(wait.take_waiting(), "one refusal outstanding");
        assert!(
            wait.refusals().read().is_err(),
            "signalled once, and read by the take"
        );
        reader.kill().unwrap();
        reader.wait().unwrap();
        assert_eq!(output.write(&chunk).unwrap(), chunk.len());
        assert_eq!(wait.dropped(), chunk.len() as u64);
        assert!(!wait.is_waiting());
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
