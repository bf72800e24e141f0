//! `hushvm bench snapshot`: for guests of 128 MiB, 1 GiB and 4 GiB, the time to create a
//! snapshot of the paused rtc guest and the bytes it writes, and the time from a load
//! request to the restored machine started (its vCPU threads running, each entering
//! `KVM_RUN` next), which should not grow with memory size.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::BenchError;
use crate::guests;
use crate::layout::MemoryLayout;
use crate::machine::{self, Kernel, MachineConfig, MachineError, VmControl};
use crate::snapshot::SnapshotPaths;

/// The guest sizes measured when none are given.
pub const DEFAULT_SIZES: [u64; 3] = [128 << 20, 1 << 30, 4 << 30];
/// Restores per size when `--iterations` is not given.
pub const DEFAULT_RESTORES: u64 = 10;

/// One guest size's results.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotResult {
    pub name: String,
    pub memory_bytes: u64,
    /// Create: the call to both files written and synced, ns.
    pub create_ns: u64,
    /// Bytes of RAM written (the pages that are not all zero) and of VM state.
    pub memory_written_bytes: u64,
    pub state_bytes: u64,
    pub restores: usize,
    /// Load request to the machine started, ns: median, minimum, maximum.
    pub restore_median_ns: u64,
    pub restore_min_ns: u64,
    pub restore_max_ns: u64,
}

/// The whole bench, in the shape of the other benches' JSON.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotReport {
    pub workload: &'static str,
    /// Restores per size.
    pub iterations: u64,
    pub repeat: u32,
    pub variants: Vec<SnapshotResult>,
}

impl SnapshotReport {
    /// A line per size.
    pub fn render(&self) -> String {
        self.variants
            .iter()
            .map(|v| {
                format!(
                    "snapshot / {}: create {} ns, {} of {} bytes of RAM written, {} bytes of state; restore to started: median {} ns (min {}, max {}) over {}\n",
                    v.name,
                    v.create_ns,
                    v.memory_written_bytes,
                    v.memory_bytes,
                    v.state_bytes,
                    v.restore_median_ns,
                    v.restore_min_ns,
                    v.restore_max_ns,
                    v.restores
                )
            })
            .collect()
    }
}

fn guest_config(memory_bytes: u64) -> Result<MachineConfig, BenchError> {
    let image = guests::image("rtc").ok_or(BenchError::MissingGuest("rtc"))?;
    let mut config = MachineConfig::new(Kernel {
        name: "rtc.elf".into(),
        image: image.to_vec(),
    });
    config.boot.cmdline = "iterations=100000000".into();
    config.devices.serial = crate::config::SerialMode::Capture;
    config.memory = MemoryLayout::new(memory_bytes).map_err(MachineError::from)?;
    config.run.timeout = Some(Duration::from_secs(600));
    Ok(config)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn size_name(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b => format!("{}M", b >> 20),
    }
}

/// The time from the load request to the restored machine started; then stops it.
fn timed_restore(config: &MachineConfig, paths: &SnapshotPaths) -> Result<Duration, BenchError> {
    let control = VmControl::new();
    thread::scope(|scope| {
        let asked = Instant::now();
        let machine = scope.spawn(|| machine::restore_controlled(config, paths, true, &control));
        let started = control.wait_started().map(|_| asked.elapsed());
        let _ = control.stop();
        machine.join().map_err(|_| MachineError::ThreadPanicked)??;
        started.map_err(|error| {
            BenchError::from(MachineError::from(machine::MachineSnapshotError::from(
                error,
            )))
        })
    })
}

/// Snapshots the rtc guest once per size in `sizes` (`repeat` times) and restores each
/// snapshot `restores` times.
pub fn run(sizes: &[u64], restores: u64, repeat: u32) -> Result<SnapshotReport, BenchError> {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("hushvm-bench-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(BenchError::Scratch)?;
    let result = run_in(&dir, sizes, restores, repeat);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(
    dir: &std::path::Path,
    sizes: &[u64],
    restores: u64,
    repeat: u32,
) -> Result<SnapshotReport, BenchError> {
    let paths = SnapshotPaths::in_dir(dir);
    let mut variants = Vec::new();
    for &bytes in sizes {
        let config = guest_config(bytes)?;
        let mut times = Vec::new();
        let mut created = None;
        for _ in 0..repeat.max(1) {
            let (_, taken) =
                machine::snapshot::run_and_snapshot(&config, Duration::from_millis(20), &paths)?;
            created = Some(taken);
            for _ in 0..restores.max(1) {
                times.push(nanos(timed_restore(&config, &paths)?));
            }
        }
        let created = created.ok_or(BenchError::MissingGuest("rtc"))?;
        times.sort_unstable();
        variants.push(SnapshotResult {
            name: size_name(bytes),
            memory_bytes: bytes,
            create_ns: nanos(created.took),
            memory_written_bytes: created.memory.written,
            state_bytes: created.state_bytes,
            restores: times.len(),
            restore_median_ns: times[times.len() / 2],
            restore_min_ns: times[0],
            restore_max_ns: times[times.len() - 1],
        });
    }
    Ok(SnapshotReport {
        workload: "snapshot",
        iterations: restores,
        repeat,
        variants,
    })
}
