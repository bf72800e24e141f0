//! vCPU threads, and the main thread's event loop that runs until they stop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use event_manager::EventManager;
use vmm_sys_util::eventfd::EventFd;

use crate::access::{DeviceAccess, StopSink};
use crate::bus::StopRequest;
use crate::event_loop::Subscriber;
use crate::kvm::{StatsReader, Vcpu};
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

/// Starts a thread running `vcpu`.
fn spawn(mut vcpu: Vcpu, shared: Shared) -> Result<JoinHandle<Outcome>, MachineError> {
    let name = format!("vcpu{}", vcpu.id());
    let stats = vcpu.stats().ok();
    thread::Builder::new()
        .name(name)
        .spawn(move || {
            let before = read_stats(&stats);
            let report = vcpu::run(
                &mut vcpu,
                &shared.access,
                &shared.state.stop,
                shared.time_exits,
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
            Outcome { report, stats }
        })
        .map_err(MachineError::SpawnThread)
}

/// Runs the event loop until a vCPU stops the VM or `deadline` passes, polling for `poll`
/// after each event before it blocks; then stops every vCPU and collects them. Returns the outcomes and whether the deadline ended the run.
fn run_until_stopped(
    events: &mut EventManager<Subscriber>,
    threads: Vec<JoinHandle<Outcome>>,
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
        let wait_ms = if now.duration_since(last_event) < poll {
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
    let outcomes = threads
        .into_iter()
        .map(|t| t.join().map_err(|_| MachineError::ThreadPanicked))
        .collect::<Result<Vec<_>, _>>()?;
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

/// Starts a thread per vCPU, runs the event loop until the VM stops (or the configured
/// timeout passes), and collects the vCPUs.
pub fn run(
    vcpus: Vec<Vcpu>,
    shared: &Shared,
    events: &mut EventManager<Subscriber>,
    config: &MachineConfig,
) -> Result<RunOutcome, MachineError> {
    let threads = vcpus
        .into_iter()
        .map(|vcpu| spawn(vcpu, shared.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let deadline = config.run.timeout.map(|limit| Instant::now() + limit);
    let (outcomes, timed_out) = run_until_stopped(
        events,
        threads,
        &shared.state.stop,
        deadline,
        config.cures.event_poll,
    )?;
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
