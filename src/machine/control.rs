//! Pause, resume and stop a running machine from another thread: [`VmControl`].
//!
//! A pause sets `paused`, then gets every vCPU out of `KVM_RUN` with its `immediate_exit`
//! flag and the kick signal (`kvm::RunFlag`), and wakes the event loop. Each vCPU parks
//! on the condvar after its interrupted run (so KVM has completed its last exit first);
//! the event loop parks in a quiet epoll that serves only stop signals and its wake-up.
//! When every vCPU still running and the event loop are parked, `pause` drains the
//! coalesced ring and returns: nothing touches a device until `resume`.
//!
//! While paused the host's events wait in the kernel: timer expiries, doorbells and input
//! are served after the resume (the RTC's timer then fires once and the RTC counts the
//! missed periods as one interrupt, as it does for a late timer). `--timeout` and stop
//! signals still end a paused VM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::access::DeviceAccess;
use crate::kvm::{KvmError, RunFlag, Vcpu, VcpuState};
use crate::run_loop::{self, VmStop};
use crate::sync::LockExt;

use super::snapshot::SnapshotSource;
use super::threads::{StopState, VcpuThread};

/// A request to a [`VmControl`] that cannot be honoured.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("the VM is not running")]
    NotRunning,
    #[error("the VM is already paused")]
    AlreadyPaused,
    #[error("the VM is not paused")]
    NotPaused,
    #[error("the VM stopped before every vCPU was paused")]
    StoppedWhilePausing,
    #[error("a vCPU of the VM has stopped: its state cannot be saved")]
    VcpuEnded,
    #[error("the VM has already started: a snapshot loads only into a new one")]
    AlreadyStarted,
}

/// Each vCPU's saved state (or why it could not be saved), in vCPU order.
pub(super) type SavedVcpus = Vec<Result<VcpuState, KvmError>>;

/// What a pause measured.
#[derive(Debug, Clone, Copy)]
pub struct Paused {
    /// From the request to the last vCPU out of `KVM_RUN` and parked.
    pub vcpus_out: Duration,
    /// From the request to the machine quiet: the event loop parked, the ring drained.
    pub quiet: Duration,
}

/// Where the machine is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not started yet: a pause waits for the start.
    Waiting,
    Running,
    Ended,
}

/// A vCPU as the control reaches it.
struct Kickable {
    flag: Arc<RunFlag>,
    thread: VcpuThread,
}

struct State {
    phase: Phase,
    paused: bool,
    /// The machine is stopping: parked threads leave, a pause in progress gives up.
    stopping: bool,
    /// vCPU threads started, and those whose loop has ended.
    started: usize,
    ended: usize,
    parked: usize,
    /// When the last vCPU parked in the current pause.
    all_parked_at: Option<Instant>,
    event_loop_parked: bool,
    vcpus: Vec<Kickable>,
    /// Wakes the event loop (the stop wake-up eventfd).
    wake: Option<Arc<EventFd>>,
    access: Option<DeviceAccess>,
    stop: Option<Arc<StopState>>,
    /// A snapshot's request to the parked vCPUs: each saves its state once per round.
    save_round: u64,
    saved_vcpus: Vec<(u8, Result<VcpuState, KvmError>)>,
    /// What a snapshot of the running machine reads besides its vCPUs.
    source: Option<Arc<SnapshotSource>>,
}

/// The shared part: a lock over [`State`] and the condvar on which pausers and parked
/// threads wait. The lock is a leaf: nothing else is locked under it, and only eventfd
/// writes, `immediate_exit` stores and kick signals happen under it.
pub(super) struct Control {
    state: Mutex<State>,
    changed: Condvar,
    /// `paused`, readable without the lock: the event loop looks at it every iteration.
    paused: AtomicBool,
    /// The thread that built the machine filters itself once the machine runs.
    filter_builder: AtomicBool,
}

/// Pauses, resumes and stops one machine; clone it freely. Hand it to
/// [`super::run_controlled`] and call it from another thread.
#[derive(Clone)]
pub struct VmControl {
    control: Arc<Control>,
}

impl Default for VmControl {
    fn default() -> Self {
        Self::new()
    }
}

impl VmControl {
    pub fn new() -> Self {
        let state = State {
            phase: Phase::Waiting,
            paused: false,
            stopping: false,
            started: 0,
            ended: 0,
            parked: 0,
            all_parked_at: None,
            event_loop_parked: false,
            vcpus: Vec::new(),
            wake: None,
            access: None,
            stop: None,
            save_round: 0,
            saved_vcpus: Vec::new(),
            source: None,
        };
        Self {
            control: Arc::new(Control {
                state: Mutex::new(state),
                changed: Condvar::new(),
                paused: AtomicBool::new(false),
                filter_builder: AtomicBool::new(false),
            }),
        }
    }

    pub(super) fn shared(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// Returns once every vCPU is out of `KVM_RUN` and parked, the event loop is parked
    /// and the coalesced ring is drained. Waits for the machine to start if it has not.
    pub fn pause(&self) -> Result<Paused, ControlError> {
        let control = &self.control;
        let mut state = control.wait(control.state.locked(), |s| s.phase == Phase::Waiting);
        let asked = Instant::now();
        if state.phase == Phase::Ended || state.stopping {
            return Err(ControlError::NotRunning);
        }
        if state.paused {
            return Err(ControlError::AlreadyPaused);
        }
        state.paused = true;
        control.paused.store(true, Ordering::SeqCst);
        state.all_parked_at = None;
        state.kick_all();
        state.wake_event_loop();
        let state = control.wait(state, |s| {
            !s.stopping && s.phase == Phase::Running && !(s.all_parked() && s.event_loop_parked)
        });
        if state.stopping || state.phase == Phase::Ended {
            return Err(ControlError::StoppedWhilePausing);
        }
        let vcpus_out = state.all_parked_at.unwrap_or_else(Instant::now) - asked;
        let access = state.access.clone();
        drop(state);
        // Every thread that touches devices is parked: applying what the guest posted
        // before it stopped leaves the devices as the guest left them.
        if let Some(access) = access {
            access.operation(|_| ());
        }
        Ok(Paused {
            vcpus_out,
            quiet: asked.elapsed(),
        })
    }

    /// Lets the parked vCPUs and the event loop go on where they were.
    pub fn resume(&self) -> Result<(), ControlError> {
        let mut state = self.control.state.locked();
        if state.phase != Phase::Running || state.stopping {
            return Err(ControlError::NotRunning);
        }
        if !state.paused {
            return Err(ControlError::NotPaused);
        }
        state.paused = false;
        self.control.paused.store(false, Ordering::SeqCst);
        state.wake_event_loop();
        self.control.changed.notify_all();
        Ok(())
    }

    /// Stops the VM, paused or not (its report says [`VmStop::Requested`]). Waits for
    /// the machine to start if it has not.
    pub fn stop(&self) -> Result<(), ControlError> {
        let control = &self.control;
        let state = control.wait(control.state.locked(), |s| s.phase == Phase::Waiting);
        let stop = match (&state.stop, state.phase) {
            (Some(stop), Phase::Running) => stop.clone(),
            _ => return Err(ControlError::NotRunning),
        };
        drop(state);
        stop.stop(VmStop::Requested, None);
        Ok(())
    }

    /// Asks the thread that builds and runs the machine (`run_controlled`'s caller) to
    /// install the `main` seccomp filter once the machine's threads run: for a process that
    /// builds one machine and then only waits for it (`hushvm run`, Firecracker mode); a
    /// process that builds more (`hushvm bench`, tests) leaves it unfiltered.
    pub fn filter_builder_thread(&self) {
        self.control.filter_builder.store(true, Ordering::SeqCst);
    }

    /// Whether the machine has started and not ended.
    pub fn is_running(&self) -> bool {
        self.control.state.locked().phase == Phase::Running
    }

    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        self.control.state.locked().paused
    }

    /// Returns once the machine has started: built (or restored) and its vCPU threads
    /// running (it may have ended since); an error if it ended without running (its
    /// build failed, or it was stopped first).
    pub fn wait_started(&self) -> Result<(), ControlError> {
        let control = &self.control;
        let state = control.wait(control.state.locked(), |s| s.phase == Phase::Waiting);
        match state.started > 0 {
            true => Ok(()),
            false => Err(ControlError::NotRunning),
        }
    }

    /// Whether this control's machine has not started yet (nor been paused).
    pub(super) fn is_fresh(&self) -> bool {
        let state = self.control.state.locked();
        state.phase == Phase::Waiting && !state.paused && !state.stopping
    }

    /// Asks a machine not started yet to start paused (a restore without `resume_vm`):
    /// its vCPUs park before their first `KVM_RUN` reaches the guest.
    pub(super) fn start_paused(&self) {
        let mut state = self.control.state.locked();
        state.paused = true;
        self.control.paused.store(true, Ordering::SeqCst);
    }

    /// The paused machine's snapshot source and its vCPUs' states, each saved by its
    /// parked vCPU thread (the vCPU fds are theirs), in vCPU order.
    pub(super) fn save_vcpus(&self) -> Result<(Arc<SnapshotSource>, SavedVcpus), ControlError> {
        let control = &self.control;
        let mut state = control.state.locked();
        if state.phase != Phase::Running || state.stopping {
            return Err(ControlError::NotRunning);
        }
        if !state.paused || !state.all_parked() || !state.event_loop_parked {
            return Err(ControlError::NotPaused);
        }
        if state.ended > 0 {
            return Err(ControlError::VcpuEnded);
        }
        let source = state.source.clone().ok_or(ControlError::NotRunning)?;
        state.save_round += 1;
        state.saved_vcpus.clear();
        control.changed.notify_all();
        let mut state = control.wait(state, |s| !s.stopping && s.saved_vcpus.len() < s.started);
        if state.stopping {
            return Err(ControlError::StoppedWhilePausing);
        }
        let mut saved = std::mem::take(&mut state.saved_vcpus);
        saved.sort_by_key(|(id, _)| *id);
        Ok((source, saved.into_iter().map(|(_, state)| state).collect()))
    }
}

impl State {
    fn all_parked(&self) -> bool {
        self.parked + self.ended >= self.started
    }

    /// Gets every vCPU out of `KVM_RUN`: the flag first, then the signal (see
    /// `kvm/run_flag.rs` for why both).
    fn kick_all(&self) {
        for vcpu in &self.vcpus {
            vcpu.flag.set();
            if !vcpu.thread.is_finished() {
                let _ = vcpu.thread.kill(run_loop::kick_signal());
            }
        }
    }

    fn wake_event_loop(&self) {
        if let Some(wake) = &self.wake {
            let _ = wake.write(1);
        }
    }
}

impl Control {
    fn wait<'a>(
        &self,
        mut state: MutexGuard<'a, State>,
        waiting: impl Fn(&State) -> bool,
    ) -> MutexGuard<'a, State> {
        while waiting(&state) {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state
    }

    /// The machine's threads are running: `vcpus` with their flags, the event loop behind
    /// `wake`.
    pub(super) fn start(
        &self,
        vcpus: Vec<(Arc<RunFlag>, VcpuThread)>,
        (wake, stop): (Arc<EventFd>, Arc<StopState>),
        access: DeviceAccess,
    ) {
        let mut state = self.state.locked();
        state.started = vcpus.len();
        state.stop = Some(stop);
        state.vcpus = vcpus
            .into_iter()
            .map(|(flag, thread)| Kickable { flag, thread })
            .collect();
        state.wake = Some(wake);
        state.access = Some(access);
        state.phase = Phase::Running;
        self.changed.notify_all();
    }

    /// The VM is stopping: parked threads leave, a pause in progress gives up.
    pub(super) fn stopping(&self) {
        let mut state = self.state.locked();
        state.stopping = true;
        self.changed.notify_all();
    }

    /// The event loop's end: kicks every vCPU once more (a stopping vCPU sees its stop
    /// flag at its next look; `immediate_exit` covers one that is about to enter) and
    /// hands their threads back for joining. Also called when the start failed.
    pub(super) fn end(&self) -> Vec<VcpuThread> {
        let mut state = self.state.locked();
        state.stopping = true;
        state.phase = Phase::Ended;
        state.kick_all();
        // The machine's parts go with it (the StopState holds this control: no cycle).
        state.stop = None;
        state.access = None;
        state.wake = None;
        state.source = None;
        self.changed.notify_all();
        state.vcpus.drain(..).map(|vcpu| vcpu.thread).collect()
    }

    /// A vCPU's loop ended.
    pub(super) fn vcpu_ended(&self) {
        let mut state = self.state.locked();
        state.ended += 1;
        if state.paused && state.all_parked() {
            state.all_parked_at.get_or_insert_with(Instant::now);
        }
        self.changed.notify_all();
    }

    /// What a snapshot reads besides the vCPUs; set before the machine starts.
    pub(super) fn set_snapshot_source(&self, source: Arc<SnapshotSource>) {
        self.state.locked().source = Some(source);
    }

    /// A vCPU's `KVM_RUN` was interrupted: parks it while the VM is paused, saving its
    /// state whenever a snapshot asks (outside the lock: the lock is a leaf).
    pub(super) fn park_vcpu(&self, vcpu: &Vcpu) {
        let mut state = self.state.locked();
        if !state.paused || state.stopping {
            return;
        }
        state.parked += 1;
        if state.all_parked() {
            state.all_parked_at.get_or_insert_with(Instant::now);
            self.changed.notify_all();
        }
        let mut served = state.save_round;
        loop {
            state = self.wait(state, |s| s.paused && !s.stopping && s.save_round == served);
            if !state.paused || state.stopping {
                break;
            }
            served = state.save_round;
            drop(state);
            let saved = vcpu.save_state();
            state = self.state.locked();
            if state.save_round == served {
                state.saved_vcpus.push((vcpu.id(), saved));
                self.changed.notify_all();
            }
        }
        state.parked -= 1;
    }

    /// Whether the builder thread filters itself (`VmControl::filter_builder_thread`).
    pub(super) fn filters_builder(&self) -> bool {
        self.filter_builder.load(Ordering::SeqCst)
    }

    /// Whether the event loop should park now.
    pub(super) fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// The event loop parks (`parked`) or goes on.
    pub(super) fn event_loop_parked(&self, parked: bool) {
        let mut state = self.state.locked();
        state.event_loop_parked = parked;
        self.changed.notify_all();
    }
}

/// The vCPU loop's view of its machine: the stop flag, and parking while paused.
pub(super) struct VcpuGate {
    pub stop: Arc<StopState>,
    pub control: Arc<Control>,
}

impl run_loop::VcpuRequests for VcpuGate {
    fn stopping(&self) -> bool {
        self.stop.is_stopping()
    }

    fn park_while_paused(&self, vcpu: &Vcpu) {
        self.control.park_vcpu(vcpu);
    }
}

/// The quiet event loop's wake-up: the same eventfd as the stop wake-up, read here while
/// the main loop's subscribers are not served.
pub(super) struct QuietWake(pub Arc<EventFd>);

impl MutEventSubscriber for QuietWake {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&*self.0, EventSet::IN));
    }
}
