//! Replaying a trace through freshly built buses and devices, with no KVM: every read
//! must return what the trace recorded.

use crate::sync::LockExt;
use std::io::sink;
use std::time::Instant;

use serde::Serialize;
use thiserror::Error;

use super::format::{ExitDirection, Record, TraceError, TraceReader};
use super::ReplayClock;
use crate::bus::Access;
use crate::coalesced::PostedWrites;
use crate::config::{MAX_MEMORY, MIN_MEMORY};
use crate::devices::rtc::Rtc;
use crate::exit::VmExit;
use crate::machine::{replay_devices, MachineError, ReplayMachine};
use crate::profile::{ExitKey, ExitProfile};
use crate::ratelimit::RateLimiter;
use crate::vcpu::ExitContext;

/// The first read that did not return what was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Divergence {
    /// 1-based number of the exit in the trace.
    pub exit: u64,
    /// `0x71:PIN` and the like.
    pub access: String,
    pub expected: Vec<u8>,
    pub got: Vec<u8>,
}

/// What a replay found.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub exits: u64,
    pub divergences: u64,
    pub exits_per_second: f64,
    pub ns_per_exit: f64,
    /// The first divergence, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_divergence: Option<Divergence>,
}

/// A trace could not be replayed.
#[derive(Debug, Error)]
pub enum ReplayError {
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("cannot rebuild the trace's machine: {0}")]
    Machine(#[from] MachineError),
}

/// The largest disk a replay rebuilds in memory.
const MAX_REPLAY_DISK: u64 = 1 << 30;

/// Decodes a whole trace, checking that its machine can be rebuilt.
pub fn decode(bytes: &[u8]) -> Result<(super::MachineDescription, Vec<Record>), TraceError> {
    let (mut reader, machine) = TraceReader::new(bytes)?;
    let memory_ok =
        (MIN_MEMORY..=MAX_MEMORY).contains(&machine.memory) && machine.memory % 4096 == 0;
    let disk_ok = machine.disk_bytes <= MAX_REPLAY_DISK && machine.disk_bytes % 512 == 0;
    if !memory_ok || !disk_ok || machine.cpus == 0 {
        return Err(TraceError::Corrupt {
            what: "machine description",
            offset: 0,
        });
    }
    let mut records = Vec::new();
    while let Some(record) = reader.next_record()? {
        records.push(record);
    }
    Ok((machine, records))
}

/// The exit a record describes, over `buffer` for a read.
fn exit_of<'a>(
    direction: ExitDirection,
    addr: u64,
    size: u8,
    data: &'a [u8],
    buffer: &'a mut [u8],
) -> VmExit<'a> {
    let access = if direction.is_read() {
        Access::Read(&mut buffer[..data.len()])
    } else {
        Access::Write(data)
    };
    match direction {
        ExitDirection::PioIn | ExitDirection::PioOut => VmExit::Io {
            port: addr as u16,
            size,
            access,
        },
        ExitDirection::MmioRead | ExitDirection::MmioWrite => VmExit::Mmio { addr, access },
    }
}

/// Feeds `records` to `machine`; returns the exit count and divergences.
/// Called before each exit with the number of exits replayed so far.
type Hook<'a> = &'a mut dyn FnMut(u64, &ReplayMachine<ReplayClock>);

fn run(
    machine: &ReplayMachine<ReplayClock>,
    clock: &ReplayClock,
    records: &[Record],
    mut before_exit: Option<Hook<'_>>,
) -> (u64, u64, Option<Divergence>) {
    let posted = PostedWrites::disabled();
    let mut profile = ExitProfile::default();
    let mut warnings = RateLimiter::new(0, std::time::Duration::from_secs(3600));
    let mut buffer = vec![0u8; super::format::MAX_DATA as usize];
    let (mut exits, mut divergences, mut first) = (0u64, 0u64, None);
    for record in records {
        match record {
            Record::Exit {
                direction,
                addr,
                size,
                data,
                ..
            } => {
                if let Some(hook) = before_exit.as_mut() {
                    hook(exits, machine);
                }
                exits += 1;
                let exit = exit_of(*direction, *addr, *size, data, &mut buffer);
                let key = ExitKey::of(&exit);
                ExitContext {
                    buses: &machine.buses,
                    posted: &posted,
                    profile: &mut profile,
                    warnings: &mut warnings,
                    recorder: None,
                    vcpu: 0,
                }
                .handle(exit);
                profile.record(key, std::time::Duration::ZERO);
                if direction.is_read() && buffer[..data.len()] != data[..] {
                    divergences += 1;
                    first.get_or_insert_with(|| Divergence {
                        exit: exits,
                        access: key.label(),
                        expected: data.clone(),
                        got: buffer[..data.len()].to_vec(),
                    });
                }
            }
            Record::PostedWrite { space, addr, data } => {
                let _ = machine.buses.dispatch(*space, *addr, Access::Write(data));
            }
            Record::Clock(nanos) => clock.push(*nanos),
            Record::RtcTick => {
                let mut rtc = machine.rtc.locked();
                rtc.tick();
                let _ = rtc.next_event();
            }
            Record::Doorbell { slot, queue } => {
                if let Some(device) = machine
                    .virtio
                    .get(usize::from(*slot))
                    .and_then(Option::as_ref)
                {
                    device.locked().notify(*queue);
                }
            }
            Record::Input { sink, data } => machine.receive(*sink, data),
        }
    }
    (exits, divergences, first)
}

/// Replays a trace held in `bytes`.
pub fn replay(bytes: &[u8]) -> Result<ReplayReport, ReplayError> {
    replay_inner(bytes, None)
}

/// Replays a trace, calling `before_exit` with the number of exits replayed so far
/// before each exit: tests use it to change a device part way.
pub fn replay_with(
    bytes: &[u8],
    before_exit: &mut dyn FnMut(u64, &ReplayMachine<ReplayClock>),
) -> Result<ReplayReport, ReplayError> {
    replay_inner(bytes, Some(before_exit))
}

fn replay_inner(bytes: &[u8], before_exit: Option<Hook<'_>>) -> Result<ReplayReport, ReplayError> {
    let (description, records) = decode(bytes)?;
    let clock = ReplayClock::new(description.clock_start);
    let machine = replay_devices(&description, Rtc::new(clock.clone()), Box::new(sink()))?;
    let started = Instant::now();
    let (exits, divergences, first_divergence) = run(&machine, &clock, &records, before_exit);
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    Ok(ReplayReport {
        exits,
        divergences,
        exits_per_second: exits as f64 / elapsed,
        ns_per_exit: elapsed * 1e9 / exits.max(1) as f64,
        first_divergence,
    })
}

/// Replays `records` repeatedly against one machine, for dispatch benchmarks: the
/// machine's state carries over between passes, so only dispatch cost is meaningful.
pub fn dispatch_only(bytes: &[u8]) -> Result<impl FnMut() -> u64, ReplayError> {
    let (description, records) = decode(bytes)?;
    let clock = ReplayClock::new(description.clock_start);
    let machine = replay_devices(&description, Rtc::new(clock.clone()), Box::new(sink()))?;
    Ok(move || run(&machine, &clock, &records, None).0)
}
