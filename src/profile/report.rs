//! The profile as a table in the form of the seeds' `perf kvm stat` output, and as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{ExitKind, ExitProfile};

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct ExitRow {
    /// `0x70:POUT` and the like.
    pub label: String,
    /// Kind and direction.
    pub kind: ExitKind,
    /// Port or address.
    pub addr: u64,
    pub samples: u64,
    pub samples_pct: f64,
    pub time_pct: f64,
    pub min_ns: u64,
    pub max_ns: u64,
    pub avg_ns: f64,
    pub median_ns: u64,
    /// Relative standard error of the mean, percent (perf's "+-").
    pub stddev_pct: f64,
}

/// Everything the profiler reports for one run.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileReport {
    /// Exits that reached userspace.
    pub userspace_exits: u64,
    /// Posted writes applied from the coalesced ring.
    pub posted_writes: u64,
    /// Accesses no device claimed.
    pub unclaimed: u64,
    /// Instructions KVM's emulator failed on that hushvm completed, by name.
    pub completed_instructions: BTreeMap<String, u64>,
    /// Median handling time of port I/O exits, ns.
    pub pio_median_ns: Option<u64>,
    /// Rows, most samples first.
    pub exits: Vec<ExitRow>,
    /// KVM's own per-vCPU counters for the run, summed over vCPUs.
    pub kvm_stats: BTreeMap<String, u64>,
}

/// The KVM counters worth a line of their own in the text report.
const KEY_KVM_STATS: &[&str] = &[
    "exits",
    "io_exits",
    "mmio_exits",
    "halt_exits",
    "irq_exits",
    "insn_emulation",
    "insn_emulation_fail",
    "request_irq_exits",
    "signal_exits",
];

impl ProfileReport {
    /// Builds the report of `profile`, with KVM's counters.
    pub fn new(profile: &ExitProfile, kvm_stats: BTreeMap<String, u64>) -> Self {
        let total_samples = profile.total_exits().max(1) as f64;
        let total_ns = profile
            .entries()
            .map(|(_, s)| s.total_ns)
            .sum::<u64>()
            .max(1) as f64;
        let mut exits: Vec<ExitRow> = profile
            .entries()
            .map(|(key, stats)| {
                let n = stats.count.max(1) as f64;
                let mean = stats.total_ns as f64 / n;
                let variance = (stats.sum_squares / n - mean * mean).max(0.0);
                let standard_error = (variance / n).sqrt();
                ExitRow {
                    label: key.label(),
                    kind: key.kind,
                    addr: key.addr,
                    samples: stats.count,
                    samples_pct: 100.0 * stats.count as f64 / total_samples,
                    time_pct: 100.0 * stats.total_ns as f64 / total_ns,
                    min_ns: stats.min_ns,
                    max_ns: stats.max_ns,
                    avg_ns: mean,
                    median_ns: stats.histogram.quantile(0.5).unwrap_or(0),
                    stddev_pct: if mean > 0.0 {
                        100.0 * standard_error / mean
                    } else {
                        0.0
                    },
                }
            })
            .collect();
        exits.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.label.cmp(&b.label)));
        Self {
            userspace_exits: profile.total_exits(),
            posted_writes: profile.posted_writes,
            unclaimed: profile.unclaimed,
            completed_instructions: profile
                .completed
                .iter()
                .map(|(name, count)| (name.to_string(), *count))
                .collect(),
            pio_median_ns: profile.median_ns(|k| k.kind.is_pio()),
            exits,
            kvm_stats,
        }
    }

    /// The text report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Exit profile: hushvm's handling time per exit (KVM_RUN return to next KVM_RUN)"
        );
        let _ = writeln!(
            out,
            "{:<22} {:>9} {:>9} {:>8} {:>9} {:>9} {:>10}",
            "IO Port/MMIO Access",
            "Samples",
            "Samples%",
            "Time%",
            "Min Time",
            "Max Time",
            "Avg time"
        );
        for row in &self.exits {
            let _ = writeln!(
                out,
                "{:<22} {:>9} {:>8.2}% {:>7.2}% {:>7}ns {:>7}ns {:>8.0}ns ( +- {:.2}% )",
                row.label,
                row.samples,
                row.samples_pct,
                row.time_pct,
                row.min_ns,
                row.max_ns,
                row.avg_ns,
                row.stddev_pct
            );
        }
        let median = self
            .pio_median_ns
            .map_or("n/a".to_string(), |ns| format!("{ns}ns"));
        let _ = writeln!(
            out,
            "userspace exits: {}  posted writes applied: {}  unclaimed accesses: {}  PIO handling median: {median}",
            self.userspace_exits, self.posted_writes, self.unclaimed
        );
        if !self.completed_instructions.is_empty() {
            let completed: Vec<String> = self
                .completed_instructions
                .iter()
                .map(|(name, count)| format!("{name}={count}"))
                .collect();
            let _ = writeln!(
                out,
                "instructions KVM's emulator failed on, completed by hushvm: {}",
                completed.join(" ")
            );
        }
        let kvm: Vec<String> = KEY_KVM_STATS
            .iter()
            .filter_map(|name| self.kvm_stats.get(*name).map(|v| format!("{name}={v}")))
            .collect();
        if kvm.is_empty() {
            let _ = writeln!(out, "KVM per-vCPU counters: unavailable");
        } else {
            let _ = writeln!(out, "KVM per-vCPU counters: {}", kvm.join(" "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ExitKey;
    use std::time::Duration;

    #[test]
    fn the_table_has_the_seed_columns_and_percentages_add_up() {
        let mut profile = ExitProfile::default();
        for _ in 0..3 {
            profile.record(
                ExitKey {
                    kind: ExitKind::PioIn,
                    addr: 0x71,
                },
                Duration::from_nanos(300),
            );
        }
        profile.record(
            ExitKey {
                kind: ExitKind::PioOut,
                addr: 0x70,
            },
            Duration::from_nanos(100),
        );
        profile.posted_writes = 7;
        let stats = BTreeMap::from([("exits".to_string(), 12), ("io_exits".to_string(), 4)]);
        let report = ProfileReport::new(&profile, stats);
        assert_eq!(report.exits[0].label, "0x71:PIN");
        assert_eq!(report.exits[0].samples_pct, 75.0);
        assert_eq!(report.exits[0].time_pct, 90.0);
        let text = report.render();
        assert!(
            text.contains("Samples  Samples%    Time%  Min Time  Max Time   Avg time"),
            "{text}"
        );
        assert!(text.contains("0x70:POUT"));
        assert!(text.contains("posted writes applied: 7"));
        assert!(text.contains("exits=12 io_exits=4"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["exits"][0]["kind"], "pio_in");
        assert_eq!(json["userspace_exits"], 4);
    }
}
