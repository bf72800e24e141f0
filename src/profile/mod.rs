//! The exit profiler: per (exit kind, port or address, direction), how many exits and how
//! long hushvm spent on each, from the return of `KVM_RUN` to the next `KVM_RUN`.
//!
//! Each vCPU thread owns its [`ExitProfile`] (no lock on the exit path); profiles are
//! merged when the VM stops.

mod clock;
mod histogram;
mod report;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::bus::Access;
use crate::exit::VmExit;

pub use clock::{ExitClock, Ticks};
pub use histogram::Histogram;
pub use report::{ExitRow, ProfileReport};

/// What kind of exit, with its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitKind {
    PioIn,
    PioOut,
    MmioRead,
    MmioWrite,
    Halt,
    Shutdown,
    InternalError,
    FailEntry,
    Interrupted,
    SystemEvent,
    Unexpected,
}

impl ExitKind {
    /// True for port I/O.
    pub fn is_pio(self) -> bool {
        matches!(self, ExitKind::PioIn | ExitKind::PioOut)
    }
}

/// What the profiler groups exits by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExitKey {
    /// Kind and direction.
    pub kind: ExitKind,
    /// Port or MMIO address; 0 where there is none.
    pub addr: u64,
}

impl ExitKey {
    /// The key of `exit`.
    pub fn of(exit: &VmExit<'_>) -> Self {
        let (kind, addr) = match exit {
            VmExit::Io {
                port,
                access: Access::Read(_),
                ..
            } => (ExitKind::PioIn, u64::from(*port)),
            VmExit::Io {
                port,
                access: Access::Write(_),
                ..
            } => (ExitKind::PioOut, u64::from(*port)),
            VmExit::Mmio {
                addr,
                access: Access::Read(_),
            } => (ExitKind::MmioRead, *addr),
            VmExit::Mmio {
                addr,
                access: Access::Write(_),
            } => (ExitKind::MmioWrite, *addr),
            VmExit::Halt => (ExitKind::Halt, 0),
            VmExit::Shutdown => (ExitKind::Shutdown, 0),
            VmExit::InternalError { suberror, .. } => {
                (ExitKind::InternalError, u64::from(*suberror))
            }
            VmExit::FailEntry { .. } => (ExitKind::FailEntry, 0),
            VmExit::Interrupted => (ExitKind::Interrupted, 0),
            VmExit::SystemEvent { kind } => (ExitKind::SystemEvent, u64::from(*kind)),
            VmExit::Unexpected { reason } => (ExitKind::Unexpected, u64::from(*reason)),
        };
        Self { kind, addr }
    }

    /// How the seeds' `perf kvm stat` tables name it: `0x70:POUT`, `0x71:PIN`, ...
    pub fn label(&self) -> String {
        match self.kind {
            ExitKind::PioIn => format!("{:#x}:PIN", self.addr),
            ExitKind::PioOut => format!("{:#x}:POUT", self.addr),
            ExitKind::MmioRead => format!("{:#x}:MMIO-R", self.addr),
            ExitKind::MmioWrite => format!("{:#x}:MMIO-W", self.addr),
            ExitKind::Halt => "HLT".into(),
            ExitKind::Shutdown => "SHUTDOWN".into(),
            ExitKind::InternalError => format!("INTERNAL_ERROR({})", self.addr),
            ExitKind::FailEntry => "FAIL_ENTRY".into(),
            ExitKind::Interrupted => "INTR".into(),
            ExitKind::SystemEvent => format!("SYSTEM_EVENT({})", self.addr),
            ExitKind::Unexpected => format!("EXIT_REASON({})", self.addr),
        }
    }
}

/// Counts and handling times of one key.
#[derive(Debug, Clone, Default)]
pub struct ExitStats {
    /// Exits.
    pub count: u64,
    /// Sum of handling times, ns.
    pub total_ns: u64,
    /// Shortest, ns.
    pub min_ns: u64,
    /// Longest, ns.
    pub max_ns: u64,
    /// Sum of squared handling times, for the spread.
    pub sum_squares: f64,
    /// Distribution, for the median.
    pub histogram: Histogram,
}

impl ExitStats {
    fn record(&mut self, ns: u64) {
        self.min_ns = if self.count == 0 {
            ns
        } else {
            self.min_ns.min(ns)
        };
        self.max_ns = self.max_ns.max(ns);
        self.count += 1;
        self.total_ns += ns;
        self.sum_squares += (ns as f64) * (ns as f64);
        self.histogram.record(ns);
    }

    fn merge(&mut self, other: &ExitStats) {
        if other.count == 0 {
            return;
        }
        self.min_ns = if self.count == 0 {
            other.min_ns
        } else {
            self.min_ns.min(other.min_ns)
        };
        self.max_ns = self.max_ns.max(other.max_ns);
        self.count += other.count;
        self.total_ns += other.total_ns;
        self.sum_squares += other.sum_squares;
        self.histogram.merge(&other.histogram);
    }
}

/// One vCPU's (or, merged, one VM's) exit profile.
///
/// A run has few distinct keys (a handful of ports and addresses), so they live in a
/// short vector, searched from the last one hit: the hot path of a workload usually
/// repeats one or two keys.
#[derive(Debug, Clone, Default)]
pub struct ExitProfile {
    exits: Vec<(ExitKey, ExitStats)>,
    last_hit: usize,
    /// Posted writes applied from the coalesced ring.
    pub posted_writes: u64,
    /// Accesses no device claimed.
    pub unclaimed: u64,
    /// Instructions KVM's emulator failed on that hushvm completed, by name
    /// (`crate::insn`): what this host's KVM cost a guest beyond its exits.
    pub completed: BTreeMap<&'static str, u64>,
}

impl ExitProfile {
    /// Records one exit handled in `elapsed`.
    pub fn record(&mut self, key: ExitKey, elapsed: Duration) {
        self.record_ns(key, u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records one exit handled in `ns` nanoseconds.
    #[inline]
    pub fn record_ns(&mut self, key: ExitKey, ns: u64) {
        self.stats_mut(key).record(ns);
    }

    fn stats_mut(&mut self, key: ExitKey) -> &mut ExitStats {
        // The key hit last, first and without the search's division: the common case.
        if self
            .exits
            .get(self.last_hit)
            .is_some_and(|(hit, _)| *hit == key)
        {
            return &mut self.exits[self.last_hit].1;
        }
        let count = self.exits.len();
        let found = (0..count)
            .map(|i| (self.last_hit + i) % count)
            .find(|&i| self.exits[i].0 == key);
        let index = found.unwrap_or_else(|| {
            self.exits.push((key, ExitStats::default()));
            count
        });
        self.last_hit = index;
        &mut self.exits[index].1
    }

    /// Adds another vCPU's profile.
    pub fn merge(&mut self, other: &ExitProfile) {
        for (key, stats) in &other.exits {
            self.stats_mut(*key).merge(stats);
        }
        self.posted_writes += other.posted_writes;
        self.unclaimed += other.unclaimed;
        for (name, count) in &other.completed {
            *self.completed.entry(name).or_default() += count;
        }
    }

    /// Counts one completed instruction.
    pub fn count_completed(&mut self, name: &'static str) {
        *self.completed.entry(name).or_default() += 1;
    }

    /// Exits to userspace, of every kind.
    pub fn total_exits(&self) -> u64 {
        self.exits.iter().map(|(_, s)| s.count).sum()
    }

    /// Exits whose key matches `keep`.
    pub fn count(&self, keep: impl Fn(&ExitKey) -> bool) -> u64 {
        self.exits
            .iter()
            .filter(|(k, _)| keep(k))
            .map(|(_, s)| s.count)
            .sum()
    }

    /// The statistics of every key.
    pub fn entries(&self) -> impl Iterator<Item = (&ExitKey, &ExitStats)> {
        self.exits.iter().map(|(key, stats)| (key, stats))
    }

    /// The median handling time over the keys `keep` selects, ns.
    pub fn median_ns(&self, keep: impl Fn(&ExitKey) -> bool) -> Option<u64> {
        let mut merged = Histogram::default();
        for (_, stats) in self.exits.iter().filter(|(k, _)| keep(k)) {
            merged.merge(&stats.histogram);
        }
        merged.quantile(0.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pio_in(port: u64) -> ExitKey {
        ExitKey {
            kind: ExitKind::PioIn,
            addr: port,
        }
    }

    #[test]
    fn keys_come_from_exits_with_direction() {
        let mut data = [0u8; 1];
        let read = VmExit::Io {
            port: 0x71,
            size: 1,
            access: Access::Read(&mut data),
        };
        assert_eq!(ExitKey::of(&read).label(), "0x71:PIN");
        let write = VmExit::Io {
            port: 0x70,
            size: 1,
            access: Access::Write(&[1]),
        };
        assert_eq!(ExitKey::of(&write).label(), "0x70:POUT");
        let mmio = VmExit::Mmio {
            addr: 0xd000_0000,
            access: Access::Write(&[1]),
        };
        assert_eq!(ExitKey::of(&mmio).label(), "0xd0000000:MMIO-W");
        assert_eq!(ExitKey::of(&VmExit::Shutdown).label(), "SHUTDOWN");
    }

    #[test]
    fn stats_track_count_min_max_and_median() {
        let mut profile = ExitProfile::default();
        for ns in [100, 200, 300, 400, 10_000] {
            profile.record(pio_in(0x71), Duration::from_nanos(ns));
        }
        let (_, stats) = profile.entries().next().unwrap();
        assert_eq!(
            (stats.count, stats.min_ns, stats.max_ns, stats.total_ns),
            (5, 100, 10_000, 11_000)
        );
        let median = profile.median_ns(|k| k.kind.is_pio()).unwrap();
        assert!((288..=312).contains(&median), "median {median}");
    }

    #[test]
    fn merging_adds_counts_and_keeps_extremes() {
        let mut a = ExitProfile::default();
        a.record(pio_in(0x71), Duration::from_nanos(50));
        a.posted_writes = 3;
        let mut b = ExitProfile::default();
        b.record(pio_in(0x71), Duration::from_nanos(500));
        b.record(pio_in(0x3f8), Duration::from_nanos(70));
        b.unclaimed = 2;
        a.merge(&b);
        assert_eq!(a.total_exits(), 3);
        assert_eq!(a.count(|k| k.addr == 0x71), 2);
        let stats = a.entries().find(|(k, _)| k.addr == 0x71).unwrap().1;
        assert_eq!((stats.min_ns, stats.max_ns), (50, 500));
        assert_eq!((a.posted_writes, a.unclaimed), (3, 2));
    }
}
