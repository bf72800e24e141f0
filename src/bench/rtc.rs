//! `hushvm bench rtc`: the RTC tick pattern of seed 000, without and with coalescing.
//!
//! Each variant boots the `rtc` guest in fresh VMs twice per repetition: with N
//! iterations and with none. The difference removes VM setup and boot, which are the same
//! in both; medians over repetitions remove host noise. Variants are interleaved.

use std::collections::BTreeMap;

use serde::Serialize;
use thiserror::Error;

use crate::config::SerialMode;
use crate::guests;
use crate::machine::{self, Kernel, MachineConfig, MachineError, RunReport};
use crate::profile::ProfileReport;

/// A configuration under test.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    /// Its name in reports and `--variant`.
    pub name: &'static str,
    /// Coalesced PIO on.
    pub coalesce: bool,
}

/// The variants of `bench rtc`, in report order.
pub const VARIANTS: &[Variant] = &[
    Variant {
        name: "baseline",
        coalesce: false,
    },
    Variant {
        name: "coalesced",
        coalesce: true,
    },
];

/// Options of `hushvm bench rtc`.
#[derive(Debug, Clone)]
pub struct RtcBenchOptions {
    /// Loop iterations per measured run.
    pub iterations: u64,
    /// Repetitions; medians are reported.
    pub repeat: u32,
    /// Run only this variant.
    pub variant: Option<String>,
    /// Time each exit (the profiler's clock).
    pub time_exits: bool,
}

/// The bench could not run or the guest failed.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error("unknown variant {0:?}; variants: baseline, coalesced")]
    UnknownVariant(String),
    #[error("the rtc guest is missing from this build")]
    MissingGuest,
    #[error(transparent)]
    Machine(#[from] MachineError),
}

/// One variant's results.
#[derive(Debug, Clone, Serialize)]
pub struct VariantResult {
    pub name: &'static str,
    /// Coalesced PIO requested.
    pub coalesce: bool,
    /// Exits to userspace in the N-iteration run.
    pub userspace_exits: u64,
    /// KVM's own exit count (binary stats `exits`) in the N-iteration run.
    pub kvm_exits: u64,
    /// Posted writes applied from the ring in the N-iteration run.
    pub posted_writes: u64,
    /// Wall time of the N-iteration run, setup included, ns (median).
    pub wall_ns: u64,
    /// Wall time per iteration, setup subtracted, ns (median).
    pub ns_per_iteration: f64,
    pub userspace_exits_per_iteration: f64,
    pub kvm_exits_per_iteration: f64,
    /// hushvm's own handling time per PIO exit, median, ns.
    pub pio_handling_median_ns: Option<u64>,
    /// Guest TSC ticks per iteration, measured by the guest around its loop (median).
    pub guest_tsc_per_iteration: Option<f64>,
    /// The process exit status the run would have (1: the guest checked every value).
    pub exit_status: i32,
    /// KVM's counters for the N-iteration run.
    pub kvm_stats: BTreeMap<String, u64>,
    /// The profile of the N-iteration run.
    pub profile: ProfileReport,
}

/// The whole bench.
#[derive(Debug, Clone, Serialize)]
pub struct RtcBenchReport {
    pub workload: &'static str,
    pub iterations: u64,
    pub repeat: u32,
    pub variants: Vec<VariantResult>,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The guest's own count of TSC ticks in its loop, from its `tsc=` line.
pub fn guest_tsc(serial: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(serial);
    let line = text.lines().find(|l| l.starts_with("rtc: "))?;
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("tsc="))?
        .parse()
        .ok()
}

fn run_once(variant: &Variant, iterations: u64, time_exits: bool) -> Result<RunReport, BenchError> {
    let image = guests::image("rtc").ok_or(BenchError::MissingGuest)?;
    let mut config = MachineConfig::new(Kernel {
        name: "rtc.elf".into(),
        image: image.to_vec(),
    });
    config.cmdline = format!("iterations={iterations}");
    config.serial = SerialMode::Capture;
    config.coalesce = variant.coalesce;
    config.time_exits = time_exits;
    // No watchdog thread: the bench measures the lean single-threaded path.
    config.timeout = None;
    Ok(machine::run(&config)?)
}

/// Per-repetition measurements of one variant.
#[derive(Default)]
struct Samples {
    ns_per_iteration: Vec<f64>,
    wall_ns: Vec<f64>,
    tsc_per_iteration: Vec<f64>,
    last: Option<(RunReport, RunReport)>,
}

/// Runs the bench.
pub fn run(options: &RtcBenchOptions) -> Result<RtcBenchReport, BenchError> {
    let selected: Vec<&Variant> = match &options.variant {
        Some(name) => vec![VARIANTS
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| BenchError::UnknownVariant(name.clone()))?],
        None => VARIANTS.iter().collect(),
    };
    let iterations = options.iterations.max(1);
    let mut samples: Vec<Samples> = selected.iter().map(|_| Samples::default()).collect();
    for _ in 0..options.repeat.max(1) {
        for (variant, samples) in selected.iter().zip(samples.iter_mut()) {
            let full = run_once(variant, iterations, options.time_exits)?;
            let empty = run_once(variant, 0, options.time_exits)?;
            let extra = full.wall.as_nanos() as f64 - empty.wall.as_nanos() as f64;
            samples.ns_per_iteration.push(extra / iterations as f64);
            samples.wall_ns.push(full.wall.as_nanos() as f64);
            if let Some(tsc) = guest_tsc(&full.serial) {
                samples
                    .tsc_per_iteration
                    .push(tsc as f64 / iterations as f64);
            }
            samples.last = Some((full, empty));
        }
    }
    let variants = selected
        .iter()
        .zip(samples)
        .map(|(variant, samples)| summarise(variant, iterations, samples))
        .collect();
    Ok(RtcBenchReport {
        workload: "rtc",
        iterations,
        repeat: options.repeat.max(1),
        variants,
    })
}

fn summarise(variant: &Variant, iterations: u64, mut samples: Samples) -> VariantResult {
    let (full, empty) = samples.last.take().expect("at least one repetition");
    let exits = |r: &RunReport| r.profile.total_exits();
    let kvm_exits = |r: &RunReport| r.kvm_stats.get("exits").copied().unwrap_or(0);
    let per_iteration = |n: u64, zero: u64| (n as f64 - zero as f64) / iterations as f64;
    let profile = ProfileReport::new(&full.profile, full.kvm_stats.clone());
    VariantResult {
        name: variant.name,
        coalesce: variant.coalesce,
        userspace_exits: exits(&full),
        kvm_exits: kvm_exits(&full),
        posted_writes: full.profile.posted_writes,
        wall_ns: median(&mut samples.wall_ns) as u64,
        ns_per_iteration: median(&mut samples.ns_per_iteration),
        userspace_exits_per_iteration: per_iteration(exits(&full), exits(&empty)),
        kvm_exits_per_iteration: per_iteration(kvm_exits(&full), kvm_exits(&empty)),
        pio_handling_median_ns: profile.pio_median_ns,
        guest_tsc_per_iteration: (!samples.tsc_per_iteration.is_empty())
            .then(|| median(&mut samples.tsc_per_iteration)),
        exit_status: full.stop.exit_status(),
        kvm_stats: full.kvm_stats.clone(),
        profile,
    }
}

impl RtcBenchReport {
    /// The text report: each variant's profile table, then a summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for variant in &self.variants {
            out.push_str(&format!(
                "== rtc / {} (coalescing {}) ==\n",
                variant.name,
                if variant.coalesce { "on" } else { "off" }
            ));
            out.push_str(&variant.profile.render());
            out.push('\n');
        }
        out.push_str(&format!(
            "rtc: {} iterations; medians of {} interleaved repetitions; setup removed by subtracting a 0-iteration run\n",
            self.iterations, self.repeat
        ));
        out.push_str(&format!(
            "{:<10} {:>11} {:>15} {:>12} {:>15} {:>11} {:>7}\n",
            "variant",
            "exits/iter",
            "kvm exits/iter",
            "ns/iter",
            "guest tsc/iter",
            "PIO median",
            "status"
        ));
        for v in &self.variants {
            out.push_str(&format!(
                "{:<10} {:>11.3} {:>15.3} {:>12.0} {:>15} {:>9}ns {:>7}\n",
                v.name,
                v.userspace_exits_per_iteration,
                v.kvm_exits_per_iteration,
                v.ns_per_iteration,
                v.guest_tsc_per_iteration
                    .map_or("n/a".into(), |t| format!("{t:.0}")),
                v.pio_handling_median_ns
                    .map_or("n/a".into(), |n| n.to_string()),
                v.exit_status
            ));
        }
        if let [base, coalesced] = &self.variants[..] {
            out.push_str(&format!(
                "ratio coalesced/baseline: ns/iter {:.3}, userspace exits/iter {:.3}\n",
                coalesced.ns_per_iteration / base.ns_per_iteration,
                coalesced.userspace_exits_per_iteration / base.userspace_exits_per_iteration
            ));
        }
        out
    }

    /// True if every run's guest checked all its values (debug-exit 0, status 1).
    pub fn all_passed(&self) -> bool {
        self.variants.iter().all(|v| v.exit_status == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_tsc_line_is_parsed() {
        assert_eq!(
            guest_tsc(b"x\nrtc: iterations=5 tsc=1234 errors=0\n"),
            Some(1234)
        );
        assert_eq!(guest_tsc(b"rtc: iterations=5\n"), None);
        assert_eq!(guest_tsc(b""), None);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
