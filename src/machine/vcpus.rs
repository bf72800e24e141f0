//! vCPU threads, and the event-loop thread that runs until they stop; each installs its
//! seccomp filter before the guest runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use event_manager::EventManager;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::access::{DeviceAccess, StopSink};
use crate::bus::StopRequest;
use crate::event_loop::{QueuePoller, Subscriber};
use crate::kvm::{StatsReader, Vcpu};
use crate::seccomp::{Filters, SeccompError, ThreadKind};
use crate::sync::LockExt;
use crate::vcpu::{self, VcpuReport, VmStop};

use super::{MachineConfig, MachineError};

/// How the VM comes to a stop: the flag every vCPU loop checks before `KVM_RUN`, the
/// first real reason (with the registers of the vCPU that stopped it), and the eventfd
/// that wakes the event loop.
#[derive(Debug)]
pub struct StopState {
    pub stop: AtomicBool,
    first: Mutex<Option<(VmStop, Option<String>)>>,
    wake: Arc<EventFd>,
}

impl StopState {
    pub fn new(wake: Arc<EventFd>) -> Self {
        Self {
            stop: AtomicBool::new(false),
            first: Mutex::default(),
            wake,
        }
    }

    /// Stops the VM for `stop` (kept if it is the first real reason).
    pub fn stop(&self, stop: VmStop, registers: Option<String>) {
        if stop != VmStop::Requested {
            self.first.locked().get_or_insert((stop, registers));
        }
        self.stop.store(true, Ordering::Release);
        let _ = self.wake.write(1);
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
type VcpuThread = JoinHandle<Result<Outcome, SeccompError>>;

/// Starts a thread running `vcpu`; its seccomp filter goes on before its first `KVM_RUN`.
fn spawn(mut vcpu: Vcpu, shared: Shared) -> Result<VcpuThread, MachineError> {
    let name = format!("vcpu{}", vcpu.id());
    let stats = vcpu.stats().ok();
    thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            if let Err(error) = shared.filters.install(ThreadKind::Vcpu, &name) {
                shared.state.stop(VmStop::Requested, None);
                return Err(error);
            }
            let before = read_stats(&stats);
            let report = vcpu::run(
                &mut vcpu,
                &shared.access,
                &shared.state.stop,
                shared.time_exits,
                shared.fallback_ram.as_ref(),
            );
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

/// Runs the event loop until a vCPU stops the VM or `deadline` passes, polling for `poll`
/// after each event before it blocks; then stops every vCPU and collects them. Returns the outcomes and whether the deadline ended the run.
fn run_until_stopped(
    (events, queues): (&mut EventManager<Subscriber>, &QueuePoller),
    threads: Vec<VcpuThread>,
    stop: &AtomicBool,
    deadline: Option<Instant>,
    poll: Duration,
) -> Result<(Vec<Outcome>, bool), MachineError> {
    let mut timed_out = false;
    let mut last_event = Instant::now();
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        let left = deadline.map(|deadline| deadline.saturating_duration_since(now));
        if left.is_some_and(|left| left.is_zero()) {
            timed_out = true;
            break;
        }
        // Poll for a while after an event before sleeping: a guest that just rang a
        // doorbell usually rings the next one soon, and a wake-up from epoll_wait costs
        // more than an exit on hosts where the vCPU runs nested (QEMU's IOThreads poll
        // adaptively for the same reason).
        let polling = now.duration_since(last_event) < poll;
        if polling && queues.poll() {
            last_event = Instant::now();
        }
        let wait_ms = if polling {
            0
        } else {
            left.map_or(-1, |left| {
                i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX)
            })
        };
        let handled = events
            .run_with_timeout(wait_ms)
            .map_err(MachineError::EventManager)?;
        if handled > 0 {
            last_event = Instant::now();
        }
    }
    stop.store(true, Ordering::Release);
    // A kick can land just before a vCPU enters KVM_RUN; repeat until every one is out.
    while threads.iter().any(|t| !t.is_finished()) {
        threads
            .iter()
            .filter(|t| !t.is_finished())
            .for_each(vcpu::kick);
        thread::sleep(Duration::from_millis(2));
    }
    // Every thread is joined before an error is returned.
    let joined: Vec<_> = threads.into_iter().map(JoinHandle::join).collect();
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
    queues: QueuePoller,
    shared: Shared,
    deadline: Option<Instant>,
    poll: Duration,
}

type EventLoopThread = JoinHandle<Result<(Vec<Outcome>, bool), MachineError>>;

/// Starts the event-loop thread: it installs its filter, says so on `ready`, waits for
/// the vCPU threads on `vcpus`, runs the loop until they stop, and settles the ring once
/// more after they are joined (what a guest posted after its last exit, a console byte
/// before a crash or a timeout, still reaches its device).
fn spawn_event_loop(
    mut looped: EventLoop,
    ready: SyncSender<()>,
    vcpus: Receiver<Vec<VcpuThread>>,
) -> Result<EventLoopThread, MachineError> {
    thread::Builder::new()
        .name(EVENT_LOOP_THREAD.to_string())
        .spawn(move || {
            let shared = &looped.shared;
            shared
                .filters
                .install(ThreadKind::EventLoop, EVENT_LOOP_THREAD)?;
            let _ = ready.send(());
            let threads = vcpus.recv().unwrap_or_default();
            let result = run_until_stopped(
                (&mut looped.events, &looped.queues),
                threads,
                &shared.state.stop,
                looped.deadline,
                looped.poll,
            );
            let _ = shared.access.operation(|| shared.access.settle());
            result
        })
        .map_err(MachineError::SpawnThread)
}

/// The event-loop thread's name, in reports.
const EVENT_LOOP_THREAD: &str = "event-loop";

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
        queues,
        shared: shared.clone(),
        deadline: config.run.timeout.map(|limit| Instant::now() + limit),
        poll: config.cures.event_poll,
    };
    let (ready_sender, ready) = mpsc::sync_channel(1);
    let (threads_sender, threads) = mpsc::channel();
    let event_loop = spawn_event_loop(looped, ready_sender, threads)?;
    let mut spawned = Vec::new();
    let mut failed = None;
    if ready.recv().is_ok() {
        for vcpu in vcpus {
            match spawn(vcpu, shared.clone()) {
                Ok(thread) => spawned.push(thread),
                Err(error) => {
                    shared.state.stop(VmStop::Requested, None);
                    failed = Some(error);
                    break;
                }
            }
        }
    }
    let _ = threads_sender.send(spawned);
    let (outcomes, timed_out) = event_loop
        .join()
        .map_err(|_| MachineError::ThreadPanicked)??;
    if let Some(error) = failed {
        return Err(error);
    }
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
