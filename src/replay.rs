//! Replaying a trace with no KVM: the trace's machine is built by the same
//! [`machine::build_devices`] a live run uses, on an [`Unplugged`] platform, and every
//! record drives the same code a live run does (exits through `ExitContext::handle`,
//! ticks, doorbells and input through the [`crate::services`]). Every read must return
//! what the trace recorded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

use crate::access::DeviceAccess;
use crate::bus::{Access, Dispatch, IoBuses, StopRequest};
use crate::config::{Doorbell, VirtioTransport};
use crate::exit::VmExit;
use crate::layout::MemoryLayout;
use crate::machine::{
    self, plan_virtio, Backends, Clocks, CountingSink, DeviceSpec, Inventory, MachineError,
    Unplugged, VirtioRequest,
};
use crate::profile::{ExitKey, ExitProfile};
use crate::ratelimit::RateLimiter;
use crate::run_loop::{ExitContext, ExitOutcome, VmStop};
use crate::services::{InputTarget, Services};
use crate::trace::format::{ExitDirection, Record, TraceError, TraceReader, MAX_DATA};
use crate::trace::{MachineDescription, ReplayClock, TracedKind};

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
    #[error("cannot rebuild the trace's machine")]
    Machine(#[from] MachineError),
}

/// The largest disk a replay rebuilds in memory.
const MAX_REPLAY_DISK: u64 = 1 << 30;

/// Decodes a whole trace, checking that its machine can be rebuilt.
pub fn decode(bytes: &[u8]) -> Result<(MachineDescription, Vec<Record>), TraceError> {
    let (mut reader, machine) = TraceReader::new(bytes)?;
    let memory_ok = MemoryLayout::new(machine.memory).is_ok();
    let disk_fits = |bytes: u64| bytes <= MAX_REPLAY_DISK && bytes % 512 == 0;
    let disk_ok = disk_fits(machine.disk_bytes)
        && machine
            .virtio
            .iter()
            .all(|device| disk_fits(device.disk_bytes))
        && machine.virtio.iter().map(|d| d.disk_bytes).sum::<u64>() <= MAX_REPLAY_DISK;
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

/// What the devices have done outside themselves so far, as counters: read before and
/// after a record, they say whether it reached beyond its device (the advisor).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outside {
    /// Edges on every interrupt line.
    pub interrupts: u64,
    /// Bytes sent to the host (COM1, virtio-console).
    pub output_bytes: u64,
    /// virtio doorbells rung, work or none.
    pub doorbells: u64,
    /// Times the RTC asked the event loop to re-arm its timer.
    pub timer_rearms: u64,
}

/// Where the [`Outside`] counters come from: the inventory's devices, the outputs'
/// sink, the RTC's re-arm notices.
struct OutsideCounters {
    inventory: Inventory,
    output: CountingSink,
    rearms: Arc<AtomicU64>,
}

/// The virtio devices `description` names, as a live run's plan asks for them, and the
/// disks' sizes: from the header's device list, or else from the version-1 flags.
fn virtio_request(description: &MachineDescription) -> (VirtioRequest, Vec<u64>) {
    let transport = |pci: bool| match pci {
        true => VirtioTransport::Pci,
        false => VirtioTransport::Mmio,
    };
    let default = transport(description.pci);
    if description.virtio.is_empty() {
        let disks: Vec<u64> = (description.disk_bytes > 0)
            .then_some(description.disk_bytes)
            .into_iter()
            .collect();
        let request = VirtioRequest {
            disks: disks.iter().map(|_| (None, None)).collect(),
            rng: description.rng.then_some(default),
            console: description.console.then_some(default),
            vsock: None,
            nets: 0,
            default,
        };
        return (request, disks);
    }
    let mut request = VirtioRequest {
        default,
        ..VirtioRequest::default()
    };
    let mut disks = Vec::new();
    for device in &description.virtio {
        let on = transport(device.pci);
        match device.kind {
            TracedKind::Block => {
                request.disks.push((Some(device.id.clone()), Some(on)));
                disks.push(device.disk_bytes);
            }
            TracedKind::Rng => request.rng = Some(on),
            TracedKind::Console => request.console = Some(on),
        }
    }
    (request, disks)
}

/// A traced machine, rebuilt: what a replay drives.
pub struct ReplayMachine {
    /// The buses, with no ring and no trace.
    pub access: DeviceAccess,
    services: Services<ReplayClock>,
    clock: ReplayClock,
    outside: OutsideCounters,
}

impl ReplayMachine {
    /// Builds the machine `description` names, as a live run would.
    pub fn build(description: &MachineDescription) -> Result<Self, MachineError> {
        let memory = MemoryLayout::new(description.memory).map_err(MachineError::Layout)?;
        let guest_memory = machine::guest_memory(&memory)?;
        let (request, disks) = virtio_request(description);
        let spec = DeviceSpec {
            memory,
            cpus: description.cpus.max(1),
            // Replayed doorbells come from the trace's records, not from fds.
            doorbell: Doorbell::Exit,
            event_idx: description.event_idx,
            virtio: plan_virtio(&request)?,
        };
        let output = CountingSink::default();
        let backends = Backends::for_replay(
            &disks,
            request.rng.is_some(),
            request.console.is_some(),
            &output,
        );
        let clock = ReplayClock::new(description.clock_start);
        let clocks = Clocks {
            rtc: clock.clone(),
            pm_timer: clock.clone(),
        };
        let mut devices =
            machine::build_devices(&spec, &Unplugged, backends, clocks, &guest_memory)?;
        let buses = std::mem::take(&mut devices.buses);
        let rearms = Arc::new(AtomicU64::new(0));
        let counter = rearms.clone();
        devices.services.rtc.on_rearm(Box::new(move || {
            counter.fetch_add(1, Ordering::Relaxed);
        }));
        let outside = OutsideCounters {
            inventory: devices.inventory,
            output,
            rearms,
        };
        Ok(Self {
            access: DeviceAccess::plain(Arc::new(buses)),
            services: devices.services,
            clock,
            outside,
        })
    }

    /// What the devices have done outside themselves so far.
    pub fn outside(&self) -> Outside {
        let counters = &self.outside;
        Outside {
            interrupts: counters.inventory.total("interrupts"),
            output_bytes: counters.output.bytes(),
            doorbells: counters.inventory.total("doorbells"),
            timer_rearms: counters.rearms.load(Ordering::Relaxed),
        }
    }

    /// The machine's buses.
    pub fn buses(&self) -> &IoBuses {
        &self.access.buses
    }

    /// Applies a record that is not an exit; returns the stop a posted write asked for.
    fn apply(&self, record: &Record) -> Option<StopRequest> {
        let access = &self.access;
        match record {
            Record::Exit { .. } => {}
            Record::PostedWrite { space, addr, data } => {
                return match access.buses.dispatch(*space, *addr, Access::Write(data)) {
                    Dispatch::Handled(stop) => stop,
                    Dispatch::Unclaimed => None,
                };
            }
            Record::Clock(nanos) => self.clock.push(*nanos),
            Record::RtcTick => {
                let _ = self.services.rtc.tick(access);
            }
            Record::Doorbell { slot, queue } => {
                if let Some(doorbell) = self.services.doorbell(*slot) {
                    doorbell.ring(access, *queue);
                }
            }
            Record::Input { sink, data } => {
                let service =
                    InputTarget::from_sink(*sink).and_then(|target| self.services.input(target));
                if let Some(service) = service {
                    service.deliver(access, data);
                }
            }
        }
        None
    }
}

/// Watches a replay record by record: tests change a device part way, the advisor
/// reads [`ReplayMachine::outside`] around each write. Both methods default to nothing.
pub trait Observer {
    /// Before `record` is applied; `exits` have been replayed so far.
    fn before(&mut self, _record: &Record, _exits: u64, _machine: &ReplayMachine) {}
    /// After `record` was applied, with the stop it asked for (an exit's or a posted
    /// write's; the replay goes on regardless, as the trace does).
    fn after(&mut self, _record: &Record, _stop: Option<StopRequest>, _machine: &ReplayMachine) {}
}

/// Watches nothing.
impl Observer for () {}

/// [`replay_with`]'s hook, called before each exit with the exits replayed so far.
struct BeforeExit<'a>(&'a mut dyn FnMut(u64, &ReplayMachine));

impl Observer for BeforeExit<'_> {
    fn before(&mut self, record: &Record, exits: u64, machine: &ReplayMachine) {
        if matches!(record, Record::Exit { .. }) {
            (self.0)(exits, machine);
        }
    }
}

/// What one pass over the records found.
struct Pass {
    exits: u64,
    divergences: u64,
    first: Option<Divergence>,
}

/// Feeds `records` to `machine`, telling `observer` around each.
fn run(machine: &ReplayMachine, records: &[Record], observer: &mut impl Observer) -> Pass {
    let mut profile = ExitProfile::default();
    let mut warnings = RateLimiter::new(0, Duration::from_secs(3600));
    let mut buffer = vec![0u8; MAX_DATA as usize];
    let mut pass = Pass {
        exits: 0,
        divergences: 0,
        first: None,
    };
    for record in records {
        observer.before(record, pass.exits, machine);
        let Record::Exit {
            direction,
            addr,
            size,
            data,
            ..
        } = record
        else {
            let stop = machine.apply(record);
            observer.after(record, stop, machine);
            continue;
        };
        pass.exits += 1;
        let exit = exit_of(*direction, *addr, *size, data, &mut buffer);
        // The exit handler counts what no device claims; nothing else of a profile is
        // reported by a replay, so exits are not timed or keyed here.
        let outcome = ExitContext {
            access: &machine.access,
            profile: &mut profile,
            warnings: &mut warnings,
            vcpu: 0,
        }
        .handle(exit);
        if direction.is_read() && buffer[..data.len()] != data[..] {
            pass.divergences += 1;
            let key = ExitKey::of(&exit_of(*direction, *addr, *size, data, &mut buffer));
            pass.first.get_or_insert_with(|| Divergence {
                exit: pass.exits,
                access: key.label(),
                expected: data.clone(),
                got: buffer[..data.len()].to_vec(),
            });
        }
        let stop = match outcome {
            ExitOutcome::Stop(VmStop::Guest(request)) => Some(request),
            _ => None,
        };
        observer.after(record, stop, machine);
    }
    pass
}

/// Replays a trace held in `bytes`.
pub fn replay(bytes: &[u8]) -> Result<ReplayReport, ReplayError> {
    observe(bytes, &mut ())
}

/// Replays a trace, calling `before_exit` with the number of exits replayed so far
/// before each exit: tests use it to change a device part way.
pub fn replay_with(
    bytes: &[u8],
    before_exit: &mut dyn FnMut(u64, &ReplayMachine),
) -> Result<ReplayReport, ReplayError> {
    observe(bytes, &mut BeforeExit(before_exit))
}

/// Replays a trace, telling `observer` about every record.
pub fn observe(bytes: &[u8], observer: &mut impl Observer) -> Result<ReplayReport, ReplayError> {
    let (description, records) = decode(bytes)?;
    let machine = ReplayMachine::build(&description)?;
    let started = Instant::now();
    let pass = run(&machine, &records, observer);
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    Ok(ReplayReport {
        exits: pass.exits,
        divergences: pass.divergences,
        exits_per_second: pass.exits as f64 / elapsed,
        ns_per_exit: elapsed * 1e9 / pass.exits.max(1) as f64,
        first_divergence: pass.first,
    })
}

/// Replays `records` repeatedly against one machine, for dispatch benchmarks: the
/// machine's state carries over between passes, so only dispatch cost is meaningful.
pub fn dispatch_only(bytes: &[u8]) -> Result<impl FnMut() -> u64, ReplayError> {
    let (description, records) = decode(bytes)?;
    let machine = ReplayMachine::build(&description)?;
    Ok(move || run(&machine, &records, &mut ()).exits)
}
