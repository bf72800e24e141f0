//! `hushvm bench pause`: the time from a pause request to every vCPU out of `KVM_RUN`
//! and parked, with 1 and 2 vCPUs, while the rtc guest runs its loop; and
//! [`run_pausing`], which the tests use to pause a guest repeatedly.

use std::thread;
use std::time::Duration;

use serde::Serialize;

use super::BenchError;
use crate::guests;
use crate::machine::{self, Kernel, MachineConfig, MachineError, Paused, RunReport, VmControl};
use crate::seccomp::SeccompAction;

/// How [`run_pausing`] pauses.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// The guest runs this long between pauses.
    pub every: Duration,
    /// Each pause lasts this long.
    pub hold: Duration,
    /// At most this many pauses.
    pub limit: usize,
    /// After the last pause, stop the VM (otherwise let the guest finish).
    pub stop_after: bool,
}

/// A run and its pauses.
#[derive(Debug)]
pub struct PausedRun {
    pub report: RunReport,
    pub pauses: Vec<Paused>,
}

/// Runs `config` on a thread of its own and pauses it as `pacing` says, until the guest
/// stops or the pauses are made.
pub fn run_pausing(config: &MachineConfig, pacing: Pacing) -> Result<PausedRun, MachineError> {
    let control = VmControl::new();
    thread::scope(|scope| {
        let machine = scope.spawn(|| machine::run_controlled(config, &control));
        let mut pauses = Vec::new();
        while !machine.is_finished() && pauses.len() < pacing.limit {
            thread::sleep(pacing.every);
            // An error here means that the guest stopped first.
            match control.pause() {
                Ok(paused) => pauses.push(paused),
                Err(_) => break,
            }
            thread::sleep(pacing.hold);
            if control.resume().is_err() {
                break;
            }
        }
        if pacing.stop_after {
            let _ = control.stop();
        }
        let report = machine.join().map_err(|_| MachineError::ThreadPanicked)??;
        Ok(PausedRun { report, pauses })
    })
}

/// One vCPU count's pauses.
#[derive(Debug, Clone, Serialize)]
pub struct PauseResult {
    pub name: String,
    pub vcpus: u8,
    /// Pauses measured (over every repetition).
    pub pauses: usize,
    /// Request to every vCPU out and parked, ns: median, minimum, maximum.
    pub vcpus_out_median_ns: u64,
    pub vcpus_out_min_ns: u64,
    pub vcpus_out_max_ns: u64,
    /// Request to the machine quiet (event loop parked, ring drained), ns, median.
    pub quiet_median_ns: u64,
}

/// The whole pause bench, in the shape of the other benches' JSON.
#[derive(Debug, Clone, Serialize)]
pub struct PauseReport {
    pub workload: &'static str,
    /// Pauses per VM.
    pub iterations: u64,
    pub repeat: u32,
    pub variants: Vec<PauseResult>,
}

impl PauseReport {
    /// A line per variant.
    pub fn render(&self) -> String {
        self.variants
            .iter()
            .map(|v| {
                format!(
                    "pause / {}: {} pauses, request to vCPUs out: median {} ns (min {}, max {}); to quiet: median {} ns\n",
                    v.name,
                    v.pauses,
                    v.vcpus_out_median_ns,
                    v.vcpus_out_min_ns,
                    v.vcpus_out_max_ns,
                    v.quiet_median_ns
                )
            })
            .collect()
    }
}

/// Pauses per VM when `--iterations` is not given.
pub const DEFAULT_PAUSES: u64 = 50;

/// The rtc guest with a loop far longer than the pauses take; the bench stops it.
fn guest_config(vcpus: u8, seccomp: SeccompAction) -> Result<MachineConfig, BenchError> {
    let image = guests::image("rtc").ok_or(BenchError::MissingGuest("rtc"))?;
    let mut config = MachineConfig::new(Kernel {
        name: "rtc.elf".into(),
        image: image.to_vec(),
    });
    config.boot.cmdline = "iterations=100000000".into();
    config.devices.serial = crate::config::SerialMode::Capture;
    config.vcpus.count = vcpus;
    config.run.seccomp = seccomp;
    config.run.timeout = Some(Duration::from_secs(600));
    Ok(config)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Pauses the rtc guest `pauses` times per VM, in `repeat` VMs, with 1 and 2 vCPUs
/// (interleaved).
pub fn run(pauses: u64, repeat: u32, seccomp: SeccompAction) -> Result<PauseReport, BenchError> {
    let pacing = Pacing {
        every: Duration::from_millis(2),
        hold: Duration::from_micros(200),
        limit: usize::try_from(pauses.max(1)).unwrap_or(usize::MAX),
        stop_after: true,
    };
    let counts = [1u8, 2];
    let mut measured: Vec<Vec<Paused>> = vec![Vec::new(); counts.len()];
    for _ in 0..repeat.max(1) {
        for (vcpus, measured) in counts.iter().zip(measured.iter_mut()) {
            let run = run_pausing(&guest_config(*vcpus, seccomp)?, pacing)?;
            measured.extend(run.pauses);
        }
    }
    let variants = counts
        .iter()
        .zip(measured)
        .map(|(vcpus, pauses)| summarise(*vcpus, &pauses))
        .collect();
    Ok(PauseReport {
        workload: "pause",
        iterations: pauses,
        repeat,
        variants,
    })
}

fn summarise(vcpus: u8, pauses: &[Paused]) -> PauseResult {
    let median = |mut values: Vec<u64>| {
        values.sort_unstable();
        values.get(values.len() / 2).copied().unwrap_or(0)
    };
    let out: Vec<u64> = pauses.iter().map(|p| nanos(p.vcpus_out)).collect();
    PauseResult {
        name: format!("{vcpus}-vcpu"),
        vcpus,
        pauses: pauses.len(),
        vcpus_out_median_ns: median(out.clone()),
        vcpus_out_min_ns: out.iter().copied().min().unwrap_or(0),
        vcpus_out_max_ns: out.iter().copied().max().unwrap_or(0),
        quiet_median_ns: median(pauses.iter().map(|p| nanos(p.quiet)).collect()),
    }
}
