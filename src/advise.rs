//! `hushvm advise`: which registers' writes could be posted (seed 000's coalesced ring)
//! instead of exiting, judged from a recorded trace.
//!
//! The trace is replayed through the same machine and exit path as `hushvm replay`
//! ([`crate::replay::observe`]); around every write the advisor reads what the devices
//! did outside themselves ([`Outside`]: interrupt edges, host output, doorbells, timer
//! re-arms) and whether the write stopped the VM. Devices share no state but those, so
//! a write that changed none of them can only be seen through a later access to its own
//! device: a latch, safe to post, because every access drains the ring first. What it
//! cannot see is said in docs/advise.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use thiserror::Error;

use crate::bus::{AddressSpace, Flush, StopRequest};
use crate::replay::{self, Observer, Outside, ReplayError, ReplayMachine};
use crate::trace::format::Record;

/// A trace could not be advised on.
#[derive(Debug, Error)]
pub enum AdviseError {
    /// The trace is unreadable or its machine cannot be rebuilt.
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

/// Whether a register's writes may be posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// No write had an effect outside its device: safe to post.
    Latch,
    /// Some write made output, an interrupt or a timer change, none stopped the VM or
    /// rang a doorbell: postable only if the ring is drained within a time bound.
    TimeBound,
    /// Some write stopped the VM or rang a doorbell: never post it.
    Never,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Latch => "latch",
            Verdict::TimeBound => "time-bound",
            Verdict::Never => "never",
        }
    }
}

/// A register: a device's slot name, its base, the offset in it and the access width.
/// Addresses no device claims are named "unclaimed", with offset 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Register {
    space: AddressSpace,
    base: u64,
    offset: u64,
    size: u8,
    device: &'static str,
}

impl Register {
    fn of(machine: &ReplayMachine, space: AddressSpace, addr: u64, size: u8) -> Self {
        let (device, offset) = machine
            .buses()
            .locate(space, addr)
            .unwrap_or(("unclaimed", 0));
        Self {
            space,
            base: addr - offset,
            offset,
            size,
            device,
        }
    }

    /// How its device declares this register's writes posted, if it does.
    fn declared_posted(&self, machine: &ReplayMachine) -> Option<Flush> {
        let addr = self.base + self.offset;
        machine
            .buses()
            .posted_zones()
            .iter()
            .find(|zone| {
                (zone.space, zone.addr, zone.size) == (self.space, addr, u32::from(self.size))
            })
            .map(|zone| zone.flush)
    }

    /// `rtc 0x70+0 (1 byte)`, `virtio-rng 0xc0001000+0x50 (4 bytes)`.
    fn label(&self) -> String {
        let offset = match self.offset {
            0 => "0".to_string(),
            offset => format!("{offset:#x}"),
        };
        let plural = if self.size == 1 { "" } else { "s" };
        format!(
            "{} {:#x}+{offset} ({} byte{plural})",
            self.device, self.base, self.size
        )
    }
}

/// How many of a register's writes did each thing outside the device, at the write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WriteEffects {
    pub output: u64,
    pub interrupts: u64,
    pub timer_rearms: u64,
    pub doorbells: u64,
    pub stops: u64,
}

impl WriteEffects {
    /// Counts one write that changed `before` into `after` and asked for `stop`.
    fn add(&mut self, before: Outside, after: Outside, stop: Option<StopRequest>) {
        self.output += u64::from(after.output_bytes != before.output_bytes);
        self.interrupts += u64::from(after.interrupts != before.interrupts);
        self.timer_rearms += u64::from(after.timer_rearms != before.timer_rearms);
        self.doorbells += u64::from(after.doorbells != before.doorbells);
        self.stops += u64::from(stop.is_some());
    }

    fn verdict(&self) -> Verdict {
        if self.stops > 0 || self.doorbells > 0 {
            Verdict::Never
        } else if self.output + self.interrupts + self.timer_rearms > 0 {
            Verdict::TimeBound
        } else {
            Verdict::Latch
        }
    }

    /// `stop 1, output 90`: what made the verdict, most severe first.
    pub fn summary(&self) -> String {
        let parts = [
            ("stop", self.stops),
            ("doorbell", self.doorbells),
            ("output", self.output),
            ("irq", self.interrupts),
            ("timer", self.timer_rearms),
        ];
        let named: Vec<String> = parts
            .iter()
            .filter(|(_, count)| *count > 0)
            .map(|(name, count)| format!("{name} {count}"))
            .collect();
        match named.is_empty() {
            true => "-".to_string(),
            false => named.join(", "),
        }
    }
}

/// One register's accesses in the trace.
#[derive(Debug, Clone, Default)]
struct Tally {
    /// How the device already declares its writes posted (`BusDevice::posted_registers`).
    declared_posted: Option<Flush>,
    reads: u64,
    exited_writes: u64,
    posted_writes: u64,
    effects: WriteEffects,
}

/// One register, as the advisor reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegisterAdvice {
    /// `rtc 0x70+0 (1 byte)`.
    pub register: String,
    /// `pio` or `mmio`.
    pub space: &'static str,
    pub device: &'static str,
    pub base: u64,
    pub offset: u64,
    pub size: u8,
    pub accesses: u64,
    pub reads: u64,
    pub writes: u64,
    /// Writes that exited to userspace (exit records).
    pub exited_writes: u64,
    /// Writes KVM already posted (posted-write records).
    pub posted_writes: u64,
    /// How its device already declares it posted (`BusDevice::posted_registers`).
    pub declared_posted: Option<Flush>,
    /// How many writes did what, at the write.
    pub effects: WriteEffects,
    /// `None` for a register only read.
    pub verdict: Option<Verdict>,
    /// Exits that posting its writes would save: the writes that exited.
    pub exits_saved: u64,
}

impl RegisterAdvice {
    fn new(register: &Register, tally: &Tally) -> Self {
        let writes = tally.exited_writes + tally.posted_writes;
        Self {
            register: register.label(),
            space: match register.space {
                AddressSpace::Pio => "pio",
                AddressSpace::Mmio => "mmio",
            },
            device: register.device,
            base: register.base,
            offset: register.offset,
            size: register.size,
            accesses: tally.reads + writes,
            reads: tally.reads,
            writes,
            exited_writes: tally.exited_writes,
            posted_writes: tally.posted_writes,
            declared_posted: tally.declared_posted,
            effects: tally.effects,
            verdict: (writes > 0).then(|| tally.effects.verdict()),
            exits_saved: tally.exited_writes,
        }
    }
}

/// What the advisor found in one trace, or several.
#[derive(Debug, Clone, Serialize)]
pub struct Advice {
    /// Traces replayed.
    pub traces: usize,
    /// Exits in the traces.
    pub exits: u64,
    /// Reads that did not replay as recorded: if not 0, the verdicts are suspect.
    pub divergences: u64,
    /// Doorbells that ioeventfds took (no exit, no register to post).
    pub ioeventfd_doorbells: u64,
    /// Every register accessed, by exits saved, then accesses.
    pub registers: Vec<RegisterAdvice>,
}

impl Advice {
    /// The row for the register `device` + `offset` of `size` bytes, if it was accessed.
    pub fn register(&self, device: &str, offset: u64, size: u8) -> Option<&RegisterAdvice> {
        self.registers
            .iter()
            .find(|row| row.device == device && row.offset == offset && row.size == size)
    }

    /// Registers their devices declare posted whose writes the traces show reaching
    /// beyond the device: a posting that loses or delays an effect.
    pub fn contradictions(&self) -> impl Iterator<Item = &RegisterAdvice> {
        self.registers.iter().filter(|row| {
            let allowed = match row.declared_posted {
                None => return false,
                Some(Flush::BeforeNextAccess) => [Verdict::Latch].as_slice(),
                Some(Flush::Bounded) => [Verdict::Latch, Verdict::TimeBound].as_slice(),
            };
            row.verdict.is_some_and(|v| !allowed.contains(&v))
        })
    }

    /// The table `hushvm advise` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<36} {:>8} {:>8} {:>8} {:>8} {:>8}  {:<10} {:>11}  effects at the write",
            "register", "accesses", "reads", "writes", "exited", "posted", "verdict", "exits saved"
        );
        for row in &self.registers {
            let verdict = row.verdict.map_or("-", Verdict::label);
            let mut effects = match row.writes {
                0 => String::new(),
                _ => row.effects.summary(),
            };
            match row.declared_posted {
                Some(Flush::BeforeNextAccess) => effects.push_str("; declared posted"),
                Some(Flush::Bounded) => effects.push_str("; declared posted, bounded"),
                None => {}
            }
            let _ = writeln!(
                out,
                "{:<36} {:>8} {:>8} {:>8} {:>8} {:>8}  {:<10} {:>11}  {effects}",
                row.register,
                row.accesses,
                row.reads,
                row.writes,
                row.exited_writes,
                row.posted_writes,
                verdict,
                row.exits_saved
            );
        }
        let _ = writeln!(
            out,
            "{} exits replayed from {} trace(s), {} divergences; {} doorbells taken by ioeventfds",
            self.exits, self.traces, self.divergences, self.ioeventfd_doorbells
        );
        out
    }
}

/// The replay observer that fills the tallies.
#[derive(Default)]
struct Advisor {
    registers: BTreeMap<Register, Tally>,
    before: Outside,
    ioeventfd_doorbells: u64,
}

impl Observer for Advisor {
    fn before(&mut self, record: &Record, _exits: u64, machine: &ReplayMachine) {
        if is_write(record) {
            self.before = machine.outside();
        }
    }

    fn after(&mut self, record: &Record, stop: Option<StopRequest>, machine: &ReplayMachine) {
        let (register, posted) = match record {
            Record::Exit {
                direction,
                addr,
                size,
                ..
            } => (
                Register::of(machine, direction.space(), *addr, *size),
                false,
            ),
            Record::PostedWrite { space, addr, data } => {
                (Register::of(machine, *space, *addr, data.len() as u8), true)
            }
            Record::Doorbell { .. } => {
                self.ioeventfd_doorbells += 1;
                return;
            }
            _ => return,
        };
        let tally = self.registers.entry(register).or_insert_with(|| Tally {
            declared_posted: register.declared_posted(machine),
            ..Tally::default()
        });
        match (is_write(record), posted) {
            (false, _) => tally.reads += 1,
            (true, true) => tally.posted_writes += 1,
            (true, false) => tally.exited_writes += 1,
        }
        if is_write(record) {
            tally.effects.add(self.before, machine.outside(), stop);
        }
    }
}

fn is_write(record: &Record) -> bool {
    match record {
        Record::Exit { direction, .. } => !direction.is_read(),
        Record::PostedWrite { .. } => true,
        _ => false,
    }
}

/// Replays the trace in `bytes` and judges every register it accessed.
pub fn advise(bytes: &[u8]) -> Result<Advice, AdviseError> {
    advise_all(&[bytes])
}

/// Replays every trace and judges every register over all of them: a register's verdict
/// is the worst any trace gives it (one workload may write only NVRAM through the RTC's
/// data port, another its timer registers).
pub fn advise_all(traces: &[&[u8]]) -> Result<Advice, AdviseError> {
    let mut advisor = Advisor::default();
    let (mut exits, mut divergences) = (0, 0);
    for bytes in traces {
        let report = replay::observe(bytes, &mut advisor)?;
        exits += report.exits;
        divergences += report.divergences;
    }
    let mut registers: Vec<RegisterAdvice> = advisor
        .registers
        .iter()
        .map(|(register, tally)| RegisterAdvice::new(register, tally))
        .collect();
    registers.sort_by(|a, b| {
        (b.exits_saved, b.accesses)
            .cmp(&(a.exits_saved, a.accesses))
            .then_with(|| {
                (a.space, a.base, a.offset, a.size).cmp(&(b.space, b.base, b.offset, b.size))
            })
    });
    Ok(Advice {
        traces: traces.len(),
        exits,
        divergences,
        ioeventfd_doorbells: advisor.ioeventfd_doorbells,
        registers,
    })
}

#[cfg(test)]
mod tests;
