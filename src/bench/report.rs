//! A bench's measurements: per-repetition samples, their summary per variant, and the
//! text and JSON reports.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{guest_fields, Variant, Workload};
use crate::machine::RunReport;
use crate::profile::ProfileReport;

/// One variant's results. An iteration is one loop pass (`rtc`) or one interrupt (`eoi`,
/// `tick`).
#[derive(Debug, Clone, Serialize)]
pub struct VariantResult {
    pub name: &'static str,
    pub coalesce: bool,
    pub pv_eoi: bool,
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
    /// Guest TSC ticks per iteration, as the guest measured its loop (median).
    pub guest_tsc_per_iteration: Option<f64>,
    /// Interrupts the guest counted (interrupt workloads).
    pub interrupts: Option<u64>,
    /// Interrupts hushvm's devices injected (IRQ 4 and 8 edges).
    pub host_interrupts: u64,
    /// Doorbells that made a virtio device use buffers (N-iteration run).
    pub virtio_notifications: u64,
    /// Interrupts the virtio devices raised (N-iteration run).
    pub virtio_interrupts: u64,
    /// Iterations per second of wall time, setup subtracted.
    pub iterations_per_second: f64,
    /// The guest's result line, as numbers.
    pub guest: BTreeMap<String, u64>,
    /// The guest's counters per iteration, setup subtracted (`handler_tsc` per tick,
    /// `skipped` and `written` EOIs per interrupt, ...), medians over repetitions.
    pub guest_per_iteration: BTreeMap<String, f64>,
    /// The process exit status the run would have (1: the guest is satisfied).
    pub exit_status: i32,
    /// KVM's counters for the N-iteration run.
    pub kvm_stats: BTreeMap<String, u64>,
    /// KVM's counters per iteration, setup subtracted.
    pub kvm_stats_per_iteration: BTreeMap<String, f64>,
    /// The profile of the N-iteration run.
    pub profile: ProfileReport,
}

/// The whole bench.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
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

/// Per-repetition measurements of one variant.
#[derive(Default)]
pub(super) struct Samples {
    ns_per_iteration: Vec<f64>,
    wall_ns: Vec<f64>,
    tsc_per_iteration: Vec<f64>,
    guest_per_iteration: BTreeMap<String, Vec<f64>>,
    last: Option<(RunReport, RunReport)>,
}

impl Samples {
    pub(super) fn add(
        &mut self,
        workload: &Workload,
        iterations: u64,
        full: RunReport,
        empty: RunReport,
    ) {
        let extra = full.wall.as_nanos() as f64 - empty.wall.as_nanos() as f64;
        self.ns_per_iteration.push(extra / iterations as f64);
        self.wall_ns.push(full.wall.as_nanos() as f64);
        let guest = guest_fields(&full.serial, workload.result_prefix);
        if let Some(tsc) = guest.get("tsc") {
            self.tsc_per_iteration.push(*tsc as f64 / iterations as f64);
        }
        let guest_empty = guest_fields(&empty.serial, workload.result_prefix);
        for (name, value) in &guest {
            let zero = guest_empty.get(name).copied().unwrap_or(0);
            let per_iteration = (*value as f64 - zero as f64) / iterations as f64;
            self.guest_per_iteration
                .entry(name.clone())
                .or_default()
                .push(per_iteration);
        }
        self.last = Some((full, empty));
    }

    pub(super) fn summarise(
        mut self,
        workload: &Workload,
        variant: &Variant,
        iterations: u64,
    ) -> VariantResult {
        let (full, empty) = self.last.take().expect("at least one repetition");
        let per_iteration = |n: u64, zero: u64| (n as f64 - zero as f64) / iterations as f64;
        let kvm_exits = |r: &RunReport| r.kvm_stats.get("exits").copied().unwrap_or(0);
        let kvm_stats_per_iteration = full
            .kvm_stats
            .iter()
            .map(|(name, value)| {
                let zero = empty.kvm_stats.get(name).copied().unwrap_or(0);
                (name.clone(), per_iteration(*value, zero))
            })
            .collect();
        let guest = guest_fields(&full.serial, workload.result_prefix);
        let guest_per_iteration = std::mem::take(&mut self.guest_per_iteration)
            .into_iter()
            .map(|(name, mut values)| (name, median(&mut values)))
            .collect();
        let profile = ProfileReport::new(&full.profile, full.kvm_stats.clone());
        let ns_per_iteration = median(&mut self.ns_per_iteration);
        VariantResult {
            name: variant.name,
            coalesce: variant.coalesce,
            pv_eoi: variant.pv_eoi,
            userspace_exits: full.profile.total_exits(),
            kvm_exits: kvm_exits(&full),
            posted_writes: full.profile.posted_writes,
            wall_ns: median(&mut self.wall_ns) as u64,
            ns_per_iteration,
            userspace_exits_per_iteration: per_iteration(
                full.profile.total_exits(),
                empty.profile.total_exits(),
            ),
            kvm_exits_per_iteration: per_iteration(kvm_exits(&full), kvm_exits(&empty)),
            pio_handling_median_ns: profile.pio_median_ns,
            guest_tsc_per_iteration: (!self.tsc_per_iteration.is_empty())
                .then(|| median(&mut self.tsc_per_iteration)),
            interrupts: guest.get("interrupts").copied(),
            host_interrupts: full.interrupts_on("com1") + full.interrupts_on("rtc"),
            virtio_notifications: full.virtio_notifications,
            virtio_interrupts: full.virtio_interrupts(),
            iterations_per_second: 1e9 / ns_per_iteration,
            guest,
            guest_per_iteration,
            exit_status: full.stop.exit_status(),
            kvm_stats: full.kvm_stats.clone(),
            kvm_stats_per_iteration,
            profile,
        }
    }
}

impl BenchReport {
    /// The text report: each variant's profile table, then a summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for v in &self.variants {
            self.render_variant(v, &mut out);
        }
        self.render_summary(&mut out);
        self.render_ratios(&mut out);
        out
    }

    /// One variant: its exit profile and what its guest reported.
    fn render_variant(&self, v: &VariantResult, out: &mut String) {
        out.push_str(&format!(
            "== {} / {} (coalescing {}, PV EOI {}) ==\n",
            self.workload,
            v.name,
            if v.coalesce { "on" } else { "off" },
            if v.pv_eoi { "advertised" } else { "hidden" }
        ));
        out.push_str(&v.profile.render());
        let guest: Vec<String> = v.guest.iter().map(|(k, n)| format!("{k}={n}")).collect();
        let per: Vec<String> = v
            .guest_per_iteration
            .iter()
            .map(|(k, n)| format!("{k}={n:.3}"))
            .collect();
        out.push_str(&format!(
            "guest: {}  host-injected interrupts: {}\n",
            guest.join(" "),
            v.host_interrupts
        ));
        out.push_str(&format!("guest per iteration: {}\n\n", per.join(" ")));
    }

    /// The table of every variant's medians.
    fn render_summary(&self, out: &mut String) {
        out.push_str(&format!(
            "{}: {} iterations; medians of {} interleaved repetitions; setup removed by subtracting a 0-iteration run\n",
            self.workload, self.iterations, self.repeat
        ));
        out.push_str(&format!(
            "{:<16} {:>11} {:>15} {:>12} {:>15} {:>11} {:>7}\n",
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
                "{:<16} {:>11.3} {:>15.3} {:>12.0} {:>15} {:>9}ns {:>7}\n",
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
    }

    /// Each variant against the first.
    fn render_ratios(&self, out: &mut String) {
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.3}", a / b)
            } else {
                "n/a".into()
            }
        };
        let Some((base, others)) = self.variants.split_first() else {
            return;
        };
        for v in others {
            out.push_str(&format!(
                "ratio {}/{}: ns/iter {}, userspace exits/iter {}, kvm exits/iter {}\n",
                v.name,
                base.name,
                ratio(v.ns_per_iteration, base.ns_per_iteration),
                ratio(
                    v.userspace_exits_per_iteration,
                    base.userspace_exits_per_iteration
                ),
                ratio(v.kvm_exits_per_iteration, base.kvm_exits_per_iteration)
            ));
        }
    }

    /// True if every guest was satisfied (debug-exit 0, status 1).
    pub fn all_passed(&self) -> bool {
        self.variants.iter().all(|v| v.exit_status == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
