//! `hushvm bench vsock`: the vsock test guest streams 4 KiB messages through the
//! device to a host program on its Unix socket (guest to host), and takes them from one
//! (host to guest). Reported per direction: bytes per second over the transfer as the
//! host sees it (first byte to the end), and userspace exits per message (a run with the
//! messages minus one with none, as the other benches subtract boot).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::BenchError;
use crate::config::{SerialMode, VirtioTransport, VsockConfig};
use crate::guests;
use crate::machine::{self, Kernel, MachineConfig, MachineError, RunReport};
use crate::seccomp::SeccompAction;

/// Bytes of a message.
pub const MESSAGE: u64 = 4096;
/// Messages per run when `--iterations` is not given.
pub const DEFAULT_MESSAGES: u64 = 2048;
const PORT: u32 = 5201;

/// One direction's result.
#[derive(Debug, Clone, Serialize)]
pub struct VsockResult {
    pub name: &'static str,
    pub transport: &'static str,
    /// Medians over the repetitions.
    pub bytes_per_second: f64,
    pub exits_per_message: f64,
    /// Every run's guest reported no error and every byte arrived.
    pub passed: bool,
}

/// The whole bench, in the shape of the other benches' JSON.
#[derive(Debug, Clone, Serialize)]
pub struct VsockReport {
    pub workload: &'static str,
    /// Messages per measured run.
    pub iterations: u64,
    pub repeat: u32,
    pub variants: Vec<VsockResult>,
}

impl VsockReport {
    /// A line per direction.
    pub fn render(&self) -> String {
        self.variants
            .iter()
            .map(|v| {
                format!(
                    "vsock / {} ({}): {:.0} bytes/s, {:.2} userspace exits per 4 KiB message{}\n",
                    v.name,
                    v.transport,
                    v.bytes_per_second,
                    v.exits_per_message,
                    if v.passed { "" } else { " (FAILED)" }
                )
            })
            .collect()
    }

    pub fn all_passed(&self) -> bool {
        self.variants.iter().all(|v| v.passed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    GuestToHost,
    HostToGuest,
}

/// A fresh socket path for one run.
fn socket_path(run: u32) -> PathBuf {
    std::env::temp_dir().join(format!("hushvm-bench-vsock-{}-{run}", std::process::id()))
}

fn guest_config(
    direction: Direction,
    messages: u64,
    uds: &Path,
    transport: VirtioTransport,
    seccomp: SeccompAction,
) -> Result<MachineConfig, BenchError> {
    let image = guests::image("vsock").ok_or(BenchError::MissingGuest("vsock"))?;
    let mut config = MachineConfig::new(Kernel {
        name: "vsock.elf".into(),
        image: image.to_vec(),
    });
    let mode = match direction {
        Direction::GuestToHost => format!("mode=source bytes={}", messages * MESSAGE),
        Direction::HostToGuest => "mode=sink".to_string(),
    };
    config.boot.cmdline = format!("{mode} port={PORT} conns=1");
    if transport == VirtioTransport::Pci {
        config.boot.cmdline.push_str(" transport=pci");
    }
    config.devices.transport = transport;
    config.devices.serial = SerialMode::Capture;
    config.devices.vsock = Some(VsockConfig {
        guest_cid: 3,
        uds_path: uds.to_path_buf(),
        vsock_id: None,
        transport: None,
    });
    config.run.seccomp = seccomp;
    config.run.timeout = Some(Duration::from_secs(600));
    Ok(config)
}

/// The host's side of one run: bytes moved and how long from the first to the end.
fn host_side(direction: Direction, uds: &Path, bytes: u64) -> std::io::Result<(u64, Duration)> {
    match direction {
        Direction::GuestToHost => {
            let mut path = uds.as_os_str().to_owned();
            path.push(format!("_{PORT}"));
            let listener = UnixListener::bind(&path)?;
            let (mut stream, _) = listener.accept()?;
            let _ = std::fs::remove_file(&path);
            let mut buffer = vec![0u8; 64 * 1024];
            let (mut total, mut start) = (0u64, None);
            loop {
                let read = stream.read(&mut buffer)?;
                if read == 0 {
                    break;
                }
                start.get_or_insert_with(Instant::now);
                total += read as u64;
            }
            Ok((total, start.map_or(Duration::ZERO, |s| s.elapsed())))
        }
        Direction::HostToGuest => {
            let mut stream = connect(uds)?;
            stream.write_all(format!("CONNECT {PORT}\n").as_bytes())?;
            let mut byte = [0u8; 1];
            while stream.read(&mut byte)? == 1 && byte[0] != b'\n' {}
            let start = Instant::now();
            let message = vec![0x5au8; MESSAGE as usize];
            for _ in 0..bytes / MESSAGE {
                stream.write_all(&message)?;
            }
            stream.shutdown(std::net::Shutdown::Write)?;
            // The guest closes once it consumed everything.
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest)?;
            Ok((bytes, start.elapsed()))
        }
    }
}

fn connect(uds: &Path) -> std::io::Result<UnixStream> {
    let start = Instant::now();
    loop {
        match UnixStream::connect(uds) {
            Ok(stream) => return Ok(stream),
            Err(e) if start.elapsed() > Duration::from_secs(30) => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// One VM: its report and what the host measured.
struct Run {
    report: RunReport,
    bytes: u64,
    elapsed: Duration,
}

fn run_once(
    direction: Direction,
    messages: u64,
    run: u32,
    transport: VirtioTransport,
    seccomp: SeccompAction,
) -> Result<Run, BenchError> {
    let uds = socket_path(run);
    let _ = std::fs::remove_file(&uds);
    let config = guest_config(direction, messages, &uds, transport, seccomp)?;
    let result = thread::scope(|scope| {
        let machine = scope.spawn(|| machine::run(&config));
        let host = host_side(direction, &uds, messages * MESSAGE);
        let report = machine.join().map_err(|_| MachineError::ThreadPanicked)??;
        let (bytes, elapsed) = host.map_err(BenchError::Host)?;
        Ok(Run {
            report,
            bytes,
            elapsed,
        })
    });
    let _ = std::fs::remove_file(&uds);
    result
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Streams `messages` messages each way, `repeat` times (interleaved).
pub fn run(
    messages: u64,
    repeat: u32,
    transport: VirtioTransport,
    seccomp: SeccompAction,
) -> Result<VsockReport, BenchError> {
    let directions = [Direction::GuestToHost, Direction::HostToGuest];
    let mut samples = vec![(Vec::new(), Vec::new(), true); directions.len()];
    let mut run_number = 0;
    for _ in 0..repeat.max(1) {
        for (direction, (rates, exits, passed)) in directions.iter().zip(samples.iter_mut()) {
            run_number += 2;
            let full = run_once(*direction, messages, run_number, transport, seccomp)?;
            let empty = run_once(*direction, 0, run_number + 1, transport, seccomp)?;
            let ok = |run: &Run| {
                super::guest_fields(&run.report.serial, "vsock:").get("errors") == Some(&0)
            };
            *passed &= ok(&full) && ok(&empty) && full.bytes == messages * MESSAGE;
            rates.push(full.bytes as f64 / full.elapsed.as_secs_f64().max(1e-9));
            let extra = full.report.profile.total_exits() as f64
                - empty.report.profile.total_exits() as f64;
            exits.push(extra / messages.max(1) as f64);
        }
    }
    let variants = directions
        .iter()
        .zip(samples)
        .map(|(direction, (rates, exits, passed))| VsockResult {
            name: match direction {
                Direction::GuestToHost => "guest-to-host",
                Direction::HostToGuest => "host-to-guest",
            },
            transport: match transport {
                VirtioTransport::Mmio => "mmio",
                VirtioTransport::Pci => "pci",
            },
            bytes_per_second: median(rates),
            exits_per_message: median(exits),
            passed,
        })
        .collect();
    Ok(VsockReport {
        workload: "vsock",
        iterations: messages,
        repeat,
        variants,
    })
}
