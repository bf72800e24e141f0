//! vCPU threads, and the event-loop thread that runs until they stop; each installs its
//! seccomp filter before the guest runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::access::{DeviceAccess, StopSink};
use crate::bus::StopRequest;
use crate::event_loop::{QueuePoller, Subscriber};
use crate::kvm::{StatsReader, Vcpu};
use crate::run_loop::{self, VcpuReport, VmStop};
use crate::seccomp::{Filters, SeccompError, ThreadKind};
use crate::sync::LockExt;

use super::control::{Control, QuietWake, VcpuGate};
use super::signals::SignalStop;
use super::{MachineConfig, MachineError};

/// How the VM comes to a stop: the flag every vCPU loop checks before `KVM_RUN`, the
/// first real reason (with the registers of the vCPU that stopped it), the eventfd that
/// wakes the event loop, and the pause control whose parked threads a stop releases.
pub struct StopState {
    stop: AtomicBool,
    first: Mutex<Option<(VmStop, Option<String>)>>,
    wake: Arc<EventFd>,
    control: Arc<Control>,
}

impl StopState {
    pub fn new(wake: Arc<EventFd>, control: Arc<Control>) -> Self {
        Self {
            stop: AtomicBool::new(false),
            first: Mutex::default(),
            wake,
            control,
        }
    }

    /// Stops the VM for `stop` (kept if it is the first real reason).
    pub fn stop(&self, stop: VmStop, registers: Option<String>) {
        if stop != VmStop::Requested {
            self.first.locked().get_or_insert((stop, registers));
        }
        // SeqCst: a vCPU reads this after clearing its immediate_exit flag (SeqCst), so
        // either it sees the stop or the kick's flag stays set (kvm/run_flag.rs).
        self.stop.store(true, Ordering::SeqCst);
        self.control.stopping();
        let _ = self.wake.write(1);
    }

    /// True once the VM is stopping.
    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

impl StopSink for StopState {
    fn request(&self, request: StopRequest) {
        self.stop(VmStop::Guest(request), None);
    }
}

/// What every vCPU thread shares.
#[derive(Clone)]
pub struct Shared {
    /// The buses, the coalesced ring, the trace.
    pub access: DeviceAccess,
    pub state: Arc<StopState>,
    /// Pause and resume.
    pub control: Arc<Control>,
    pub time_exits: bool,
    /// Guest RAM, for completing the instructions KVM's emulator fails on; `None` when
    /// `--no-emulation-fallback` turned that off.
    pub fallback_ram: Option<GuestMemoryMmap>,
    /// The seccomp filters each thread installs on itself.
    pub filters: Arc<Filters>,
}

/// How one vCPU thread ended.
pub struct Outcome {
    pub report: VcpuReport,
    /// KVM's counters for this vCPU over the run.
    pub stats: BTreeMap<String, u64>,
}

fn read_stats(stats: &Option<StatsReader>) -> BTreeMap<String, u64> {
    stats
        .as_ref()
        .and_then(|s| s.read().ok())
        .unwrap_or_default()
}

/// A vCPU thread: its outcome, or why its filter could not be installed.
pub(super) type VcpuThread = JoinHandle<Result<Outcome, SeccompError>>;

/// Starts a thread running `vcpu`; its seccomp filter goes on before its first `KVM_RUN`.
fn spawn(mut vcpu: Vcpu, shared: Shared) -> Result<VcpuThread, MachineError> {
    let name = format!("vcpu{}", vcpu.id());
    let stats = vcpu.stats().ok();
    let gate = VcpuGate {
        stop: shared.state.clone(),
        control: shared.control.clone(),
    };
    thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            if let Err(error) = shared.filters.install(ThreadKind::Vcpu, &name) {
                shared.state.stop(VmStop::Requested, None);
                shared.control.vcpu_ended();
                return Err(error);
            }
            let before = read_stats(&stats);
            let report = run_loop::run(
                &mut vcpu,
                &shared.access,
                &gate,
                shared.time_exits,
                shared.fallback_ram.as_ref(),
            );
            shared.control.vcpu_ended();
            let stats = read_stats(&stats)
                .into_iter()
                .map(|(name, value)| {
                    let start = before.get(&name).copied().unwrap_or(0);
                    (name, value.saturating_sub(start))
                })
                .collect();
            shared
                .state
                .stop(report.stop.clone(), report.registers.clone());
            Ok(Outcome { report, stats })
        })
        .map_err(MachineError::SpawnThread)
}

/// The event loop's two sets of subscribers: everything (`events`), and while paused only
/// the stop signals and the wake-up (`quiet`), so that no device is touched.
struct Loops<'a> {
    events: &'a mut EventManager<Subscriber>,
    quiet: &'a mut EventManager<Subscriber>,
    queues: &'a QueuePoller,
}

/// Runs the event loop until a vCPU stops the VM or `deadline` passes, polling for `poll`
/// after each event before it blocks, and parking in the quiet loop while the VM is
/// paused; then stops every vCPU and collects them. Returns the outcomes and whether the
/// deadline ended the run.
fn run_until_stopped(
    loops: Loops<'_>,
    (state, control): (&StopState, &Control),
    deadline: Option<Instant>,
    poll: Duration,
) -> Result<(Vec<Outcome>, bool), MachineError> {
    let result = serve_until_stopped(loops, (state, control), deadline, poll);
    state.stop(VmStop::Requested, None);
    // One kick: immediate_exit catches a vCPU that is about to enter KVM_RUN.
    let threads = control.end();
    // Every thread is joined before an error is returned.
    let joined: Vec<_> = threads.into_iter().map(JoinHandle::join).collect();
    let timed_out = result?;
    let outcomes = joined
        .into_iter()
        .map(|joined| {
            joined
                .map_err(|_| MachineError::ThreadPanicked)?
                .map_err(Into::into)
        })
        .collect::<Result<Vec<_>, MachineError>>()?;
    Ok((outcomes, timed_out))
}

/// The time left before `deadline` as epoll's timeout (-1: none); `None` once it passed.
fn wait_ms(deadline: Option<Instant>, now: Instant) -> Option<i32> {
    let Some(deadline) = deadline else {
        return Some(-1);
    };
    let left = deadline.saturating_duration_since(now);
    (!left.is_zero()).then(|| i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX))
}

/// The loop of [`run_until_stopped`]; true if the deadline ended it.
fn serve_until_stopped(
    loops: Loops<'_>,
    (state, control): (&StopState, &Control),
    deadline: Option<Instant>,
    poll: Duration,
) -> Result<bool, MachineError> {
    let mut last_event = Instant::now();
    while !state.is_stopping() {
        if control.paused() {
            if !wait_while_paused(loops.quiet, (state, control), deadline)? {
                return Ok(true);
            }
            continue;
        }
        let now = Instant::now();
        let Some(wait) = wait_ms(deadline, now) else {
            return Ok(true);
        };
        // Poll for a while after an event before sleeping: a guest that just rang a
        // doorbell usually rings the next one soon, and a wake-up from epoll_wait costs
        // more than an exit on hosts where the vCPU runs nested (QEMU's IOThreads poll
        // adaptively for the same reason).
        let polling = now.duration_since(last_event) < poll;
        if polling && loops.queues.poll() {
            last_event = Instant::now();
        }
        let handled = loops
            .events
            .run_with_timeout(if polling { 0 } else { wait })
            .map_err(MachineError::EventManager)?;
        if handled > 0 {
            last_event = Instant::now();
        }
    }
    Ok(false)
}

/// Parks the event loop while the VM is paused: it serves only stop signals and its
/// wake-up. False if the deadline passed.
fn wait_while_paused(
    quiet: &mut EventManager<Subscriber>,
    (state, control): (&StopState, &Control),
    deadline: Option<Instant>,
) -> Result<bool, MachineError> {
    control.event_loop_parked(true);
    let mut in_time = true;
    while control.paused() && !state.is_stopping() {
        let Some(wait) = wait_ms(deadline, Instant::now()) else {
            in_time = false;
            break;
        };
        if let Err(error) = quiet.run_with_timeout(wait) {
            control.event_loop_parked(false);
            return Err(MachineError::EventManager(error));
        }
    }
    control.event_loop_parked(false);
    Ok(in_time)
}

/// How the vCPUs ended, together.
pub struct RunOutcome {
    /// Each vCPU's ending.
    pub vcpus: Vec<Outcome>,
    /// Why the VM stopped.
    pub stop: VmStop,
    /// The registers of the vCPU that stopped it, for a fault.
    pub registers: Option<String>,
}

/// What the event-loop thread takes with it.
struct EventLoop {
    events: EventManager<Subscriber>,
    /// The paused loop's subscribers: stop signals and the wake-up.
    quiet: EventManager<Subscriber>,
    queues: QueuePoller,
    shared: Shared,
    deadline: Option<Instant>,
    poll: Duration,
}

impl EventLoop {
    /// The quiet loop, made on the calling thread (epoll_create is not in the event
    /// loop's filter).
    fn quiet(state: &Arc<StopState>) -> Result<EventManager<Subscriber>, MachineError> {
        let mut quiet = EventManager::<Subscriber>::new().map_err(MachineError::EventManager)?;
        quiet.add_subscriber(Arc::new(Mutex::new(QuietWake(state.wake.clone()))));
        let signals = SignalStop::new(state.clone()).map_err(MachineError::EventLoop)?;
        quiet.add_subscriber(Arc::new(Mutex::new(signals)));
        Ok(quiet)
    }
}

type EventLoopThread = JoinHandle<Result<(Vec<Outcome>, bool), MachineError>>;

/// Starts the event-loop thread: it installs its filter, says so on `ready`, waits until
/// the vCPU threads are started (`started`), runs the loop until they stop, and drains
/// the ring once more after they are joined (what a guest posted after its last exit, a
/// console byte before a crash or a timeout, still reaches its device).
fn spawn_event_loop(
    mut looped: EventLoop,
    ready: SyncSender<()>,
    started: Receiver<()>,
) -> Result<EventLoopThread, MachineError> {
    thread::Builder::new()
        .name(EVENT_LOOP_THREAD.to_string())
        .spawn(move || {
            let shared = &looped.shared;
            shared
                .filters
                .install(ThreadKind::EventLoop, EVENT_LOOP_THREAD)?;
            let _ = ready.send(());
            let _ = started.recv();
            let loops = Loops {
                events: &mut looped.events,
                quiet: &mut looped.quiet,
                queues: &looped.queues,
            };
            let result = run_until_stopped(
                loops,
                (&shared.state, &shared.control),
                looped.deadline,
                looped.poll,
            );
            shared.access.operation(|_| ());
            result
        })
        .map_err(MachineError::SpawnThread)
}

/// The event-loop thread's name, in reports.
const EVENT_LOOP_THREAD: &str = "event-loop";

/// Starts a thread per vCPU and hands them to the pause control; on a failure, stops the
/// VM and returns the error (the threads started are still handed over, to be joined).
fn spawn_vcpus(vcpus: Vec<Vcpu>, shared: &Shared) -> Option<MachineError> {
    let mut spawned = Vec::new();
    let mut failed = None;
    for vcpu in vcpus {
        let flag = vcpu.run_flag();
        match spawn(vcpu, shared.clone()) {
            Ok(thread) => spawned.push((flag, thread)),
            Err(error) => {
                shared.state.stop(VmStop::Requested, None);
                failed = Some(error);
                break;
            }
        }
    }
    let wake = (shared.state.wake.clone(), shared.state.clone());
    shared.control.start(spawned, wake, shared.access.clone());
    failed
}

/// Starts the event-loop thread and, once its filter is on, a thread per vCPU; waits
/// until the VM stops (or the configured timeout passes) and collects the vCPUs.
pub fn run(
    vcpus: Vec<Vcpu>,
    shared: &Shared,
    (events, queues): (EventManager<Subscriber>, QueuePoller),
    config: &MachineConfig,
) -> Result<RunOutcome, MachineError> {
    let looped = EventLoop {
        events,
        quiet: EventLoop::quiet(&shared.state)?,
        queues,
        shared: shared.clone(),
        deadline: config.run.timeout.map(|limit| Instant::now() + limit),
        poll: config.cures.event_poll,
    };
    let (ready_sender, ready) = mpsc::sync_channel(1);
    let (started_sender, started) = mpsc::channel();
    let event_loop = spawn_event_loop(looped, ready_sender, started)?;
    let failed = if ready.recv().is_ok() {
        spawn_vcpus(vcpus, shared)
    } else {
        None
    };
    let _ = started_sender.send(());
    // The builder's work is done: from here it only waits, reports and exits.
    let sealed = match shared.control.filters_builder() {
        true => shared.filters.install(ThreadKind::Main, "main"),
        false => Ok(()),
    };
    if sealed.is_err() {
        shared.state.stop(VmStop::Requested, None);
    }
    let joined = event_loop.join();
    // However the event loop ended, the control no longer waits for a start.
    let _ = shared.control.end();
    let (outcomes, timed_out) = joined.map_err(|_| MachineError::ThreadPanicked)??;
    if let Some(error) = failed {
        return Err(error);
    }
    sealed?;
    let first = shared.state.first.locked().take();
    let (stop, registers) = match first {
        Some(first) => first,
        None if timed_out => (VmStop::Timeout, None),
        None => (VmStop::Requested, None),
    };
    Ok(RunOutcome {
        vcpus: outcomes,
        stop,
        registers,
    })
}
