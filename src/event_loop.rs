//! The event loop: the event-loop thread's epoll (rust-vmm `event-manager`). Each subscriber
//! turns an fd's readiness into a call of a [`crate::services`] service, which applies the
//! coalesced ring first (the ordering rule) and records what it did when a trace is
//! being made.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::access::DeviceAccess;
use crate::devices::rtc::Clock;
use crate::posted::DrainTimer;
use crate::ratelimit::RateLimiter;
use crate::services::{DoorbellService, InputService, LevelTriggered, RtcService};
use crate::sync::LockExt;

/// A subscriber as the event manager holds it.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Fires the RTC's periodic, alarm and update interrupts on time.
pub struct RtcTimer<C: Clock + 'static> {
    timer: TimerFd,
    rearm: Arc<EventFd>,
    rtc: RtcService<C>,
    access: DeviceAccess,
}

impl<C: Clock + 'static> RtcTimer<C> {
    /// A timer for `rtc`; hooks the RTC's rearm notifier to this loop.
    pub fn new(rtc: RtcService<C>, access: DeviceAccess) -> io::Result<Self> {
        let rearm = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let notify = rearm.clone();
        rtc.on_rearm(Box::new(move || {
            let _ = notify.write(1);
        }));
        Ok(Self {
            timer: TimerFd::new()?,
            rearm,
            rtc,
            access,
        })
    }

    fn service(&mut self) {
        let _ = match self.rtc.tick(&self.access) {
            // A zero duration would disarm the timer; the event is due now.
            Some(delay) => self.timer.reset(delay.max(Duration::from_micros(1)), None),
            None => self.timer.clear(),
        };
    }
}

impl<C: Clock + 'static> MutEventSubscriber for RtcTimer<C> {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.rearm.as_raw_fd() {
            let _ = self.rearm.read();
        }
        // Re-arming (or clearing) the timer in `service` also resets its expiry count.
        self.service();
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.timer, EventSet::IN));
        let _ = ops.add(Events::new(&*self.rearm, EventSet::IN));
        self.service();
    }
}

/// Standard input to a device: COM1's receive FIFO, or virtio-console's receive queue.
pub struct HostInput {
    input: File,
    service: InputService,
    access: DeviceAccess,
    warnings: RateLimiter,
}

impl HostInput {
    /// Reads standard input for `service`.
    pub fn from_stdin(service: InputService, access: DeviceAccess) -> io::Result<Self> {
        // An unbuffered duplicate of fd 0, so that epoll's view and ours agree.
        let input = File::from(io::stdin().as_fd().try_clone_to_owned()?);
        Ok(Self {
            input,
            service,
            access,
            warnings: RateLimiter::default(),
        })
    }
}

impl MutEventSubscriber for HostInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buffer = [0u8; 64];
        let read = match self.input.read(&mut buffer) {
            Ok(0) | Err(_) => {
                // End of input (or an error): stop watching it.
                let _ = ops.remove(events);
                return;
            }
            Ok(n) => n,
        };
        let taken = self.service.deliver(&self.access, &buffer[..read]);
        if taken < read {
            let dropped = read - taken;
            self.warnings
                .warn(|| format!("console input full: {dropped} bytes of input dropped"));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.input, EventSet::IN));
    }
}

/// Wakes the loop when a vCPU stops; the loop then looks at the stop flag.
pub struct StopWake {
    event: Arc<EventFd>,
}

impl StopWake {
    /// The subscriber, and the fd that vCPU threads write to.
    pub fn new() -> io::Result<(Self, Arc<EventFd>)> {
        let event = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        Ok((
            Self {
                event: event.clone(),
            },
            event,
        ))
    }
}

impl MutEventSubscriber for StopWake {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.event.read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&*self.event, EventSet::IN));
    }
}

/// A virtqueue doorbell's eventfd: KVM signalled it instead of exiting to a vCPU; the
/// device does the queue's work here, off the vCPU threads.
pub struct DoorbellEvent {
    event: EventFd,
    /// The queue the doorbell names (`None`: a length-0 doorbell, any queue).
    queue: Option<u32>,
    service: DoorbellService,
    access: DeviceAccess,
}

impl DoorbellEvent {
    pub fn new(
        event: EventFd,
        queue: Option<u32>,
        service: DoorbellService,
        access: DeviceAccess,
    ) -> Self {
        Self {
            event,
            queue,
            service,
            access,
        }
    }
}

impl MutEventSubscriber for DoorbellEvent {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Several rings coalesce into one count: the device serves everything available.
        let _ = self.event.read();
        self.service.ring(&self.access, self.queue);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.event, EventSet::IN));
    }
}

/// A device's host sockets (vsock): when its fd is readable, the device handles them
/// and, if it then has packets for the guest, its queues are served as by a doorbell.
pub struct HostSocketEvents {
    fd: std::os::fd::RawFd,
    handle: Arc<dyn Fn() -> bool + Send + Sync>,
    service: DoorbellService,
    access: DeviceAccess,
}

impl HostSocketEvents {
    pub fn new(
        fd: std::os::fd::RawFd,
        handle: Arc<dyn Fn() -> bool + Send + Sync>,
        service: DoorbellService,
        access: DeviceAccess,
    ) -> Self {
        Self {
            fd,
            handle,
            service,
            access,
        }
    }
}

impl MutEventSubscriber for HostSocketEvents {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        if (self.handle)() {
            self.service.ring(&self.access, None);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new_raw(self.fd, EventSet::IN));
    }
}

/// The virtqueues the event loop polls while it is busy (`--no-queue-poll` turns it off):
/// a driver's request is served as soon as it publishes it, without waiting for its
/// doorbell's ioeventfd to reach epoll. Only devices whose doorbells are ioeventfds are
/// polled; a doorbell that exits is served on the vCPU, at once.
pub struct QueuePoller {
    services: Vec<DoorbellService>,
    access: DeviceAccess,
}

impl QueuePoller {
    pub fn new(services: Vec<DoorbellService>, access: DeviceAccess) -> Self {
        Self { services, access }
    }

    /// Serves the queues that have new buffers; true if any had.
    pub fn poll(&self) -> bool {
        self.services
            .iter()
            .fold(false, |found, service| service.poll(&self.access) | found)
    }
}

/// A level-triggered line's resample eventfd: the guest ended the interrupt; the device
/// raises the line again if it still asserts it. Not recorded itself (it changes no
/// register a guest reads, only when an interrupt arrives), but an operation like every
/// other service: the ring drained, the posted writes recorded, the lock order kept.
pub struct IntxResample {
    event: EventFd,
    device: Arc<Mutex<dyn LevelTriggered>>,
    access: DeviceAccess,
}

impl IntxResample {
    pub fn new(
        event: EventFd,
        device: Arc<Mutex<dyn LevelTriggered>>,
        access: DeviceAccess,
    ) -> Self {
        Self {
            event,
            device,
            access,
        }
    }
}

impl IntxResample {
    /// The guest ended the interrupt: the device re-raises its line if it must.
    fn serve(&self) {
        self.access.operation(|_| self.device.locked().resample());
    }
}

impl MutEventSubscriber for IntxResample {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.event.read();
        self.serve();
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.event, EventSet::IN));
    }
}

/// The bounded drain's timer: armed by whichever thread activates the bounded zones (a
/// vCPU, on the exit of a write to one), disarmed by the event loop when it deactivates
/// them, waited on by the event loop. Behind a mutex because the timerfd's calls take
/// `&mut`; the bounded zones' control lock is taken before it, never after.
pub struct DrainTimerFd(Mutex<TimerFd>);

impl DrainTimerFd {
    pub fn new() -> io::Result<Self> {
        Ok(Self(Mutex::new(TimerFd::new()?)))
    }

    /// Reads the expiry count. Called only when epoll says the timer expired. Only the
    /// event loop disarms it (`BoundedDrain::tick`), and a vCPU arms it only while the
    /// zones are inactive, which follows that disarm (or never again, after a failed
    /// activation), so nothing resets the count between epoll's report and this read,
    /// which would then block the loop.
    fn expirations(&self) -> u64 {
        self.0.locked().wait().unwrap_or(1)
    }
}

impl std::os::fd::AsRawFd for DrainTimerFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.locked().as_raw_fd()
    }
}

impl DrainTimer for DrainTimerFd {
    fn arm(&self, period: Duration) -> io::Result<()> {
        self.0
            .locked()
            .reset(period, Some(period))
            .map_err(io::Error::from)
    }

    fn disarm(&self) -> io::Result<()> {
        self.0.locked().clear().map_err(io::Error::from)
    }
}

/// The bounded drain: posted writes to a bounded zone (COM1's THR) wait in KVM's ring
/// until the next exit, which may be long in coming (a console byte written just before
/// the guest halts). While the zones are active, every period this applies what waits,
/// so such a write takes effect within the period, and lets the zones' policy
/// deactivate them once the guest stopped writing them (`coalesced::bounded`). While
/// they are inactive the timer is disarmed and this never runs.
pub struct DrainTick {
    timer: Arc<DrainTimerFd>,
    access: DeviceAccess,
    warnings: RateLimiter,
}

impl DrainTick {
    pub fn new(timer: Arc<DrainTimerFd>, access: DeviceAccess) -> Self {
        Self {
            timer,
            access,
            warnings: RateLimiter::default(),
        }
    }
}

impl MutEventSubscriber for DrainTick {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let periods = self.timer.expirations();
        if let Err(error) = self.access.drain_tick(periods) {
            self.warnings.warn(|| crate::errors::chain(&error));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // Not armed here: the first write to a bounded zone arms it.
        let _ = ops.add(Events::new(&*self.timer, EventSet::IN));
    }
}

/// What a device's host output tells the event loop: the destination refused bytes
/// (`WouldBlock`: a full pipe or terminal), so watch it for room; and how many bytes went
/// nowhere because its reader is gone.
#[derive(Debug)]
pub struct OutputWait {
    /// The destination's fd, which the event loop watches for `EPOLLOUT`.
    destination: RawFd,
    /// Written once per refusal episode; the event loop then watches `destination`.
    refused: EventFd,
    /// A refusal was signalled and the bytes have not been offered again since.
    waiting: AtomicBool,
    /// Bytes dropped because the destination's reader is gone (EPIPE and the like).
    dropped: AtomicU64,
}

impl OutputWait {
    /// Watches `destination`, an fd its owner keeps open for the run.
    pub fn new(destination: RawFd) -> io::Result<Self> {
        Ok(Self {
            destination,
            refused: EventFd::new(EFD_NONBLOCK)?,
            waiting: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        })
    }

    /// The fd to watch for room.
    pub fn destination(&self) -> RawFd {
        self.destination
    }

    /// The eventfd a refusal writes.
    pub fn refusals(&self) -> &EventFd {
        &self.refused
    }

    /// The destination has room (or the caller gives up waiting): the device's next
    /// refused write signals again. Returns whether a refusal was outstanding.
    pub fn take_waiting(&self) -> bool {
        let _ = self.refused.read();
        self.waiting.swap(false, Ordering::SeqCst)
    }

    /// True while bytes wait for the destination (a refused write, not yet retried).
    pub fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Bytes dropped because the destination's reader is gone.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The destination refused bytes (`WouldBlock`): the device keeps them.
    pub fn refuse(&self) {
        if !self.waiting.swap(true, Ordering::SeqCst) {
            let _ = self.refused.write(1);
        }
    }

    /// `bytes` went nowhere: the destination's reader is gone.
    pub fn drop_bytes(&self, bytes: usize) {
        self.dropped.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// What a device does when its destination has room again: offer the bytes it holds
/// (COM1: its FIFO, then THR-empty; virtio-console: its pending bytes, then the transmit
/// chains it left in the ring). Runs as one [`DeviceAccess::operation`].
pub type Resume = Arc<dyn Fn(&DeviceAccess) + Send + Sync>;

/// A device's output whose destination may refuse bytes.
#[derive(Clone)]
pub struct HeldOutput {
    /// The device, for messages.
    pub name: &'static str,
    pub wait: Arc<OutputWait>,
    pub resume: Resume,
}

impl HeldOutput {
    /// At the stop, on main: offers the held bytes until the destination took them all
    /// or `deadline` passed (a reader that stopped reading must not keep hushvm from
    /// exiting). True if nothing is left.
    pub fn drain_until(&self, access: &DeviceAccess, deadline: std::time::Instant) -> bool {
        // A device holds bytes only after a refusal, and whoever takes the refusal then
        // offers them again: with the event loop gone, no refusal means nothing held.
        while self.wait.take_waiting() {
            (self.resume)(access);
            if !self.wait.is_waiting() {
                break;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || wait_writable(self.wait.destination(), left).is_err() {
                return false;
            }
        }
        true
    }
}

/// Waits until `fd` can be written (or has failed), at most `timeout`.
fn wait_writable(fd: RawFd, timeout: Duration) -> io::Result<()> {
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent};
    let epoll = Epoll::new()?;
    epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::OUT, 0))?;
    let millis = i32::try_from(timeout.as_millis().max(1)).unwrap_or(i32::MAX);
    epoll.wait(millis, &mut [EpollEvent::default()])?;
    Ok(())
}

/// A destination that refused a device's bytes (a full pipe): watched for room
/// (`EPOLLOUT`) only from the refusal until it has some, since a writable pipe would
/// wake a level-triggered epoll on every turn; then the device resumes its output.
/// An error or hang-up (the reader is gone) resumes it too: the bytes are then dropped,
/// counted.
pub struct OutputRoom {
    output: HeldOutput,
    access: DeviceAccess,
    watching: bool,
}

impl OutputRoom {
    pub fn new(output: HeldOutput, access: DeviceAccess) -> Self {
        Self {
            output,
            access,
            watching: false,
        }
    }

    fn destination(&self) -> Events {
        Events::new_raw(self.output.wait.destination(), EventSet::OUT)
    }
}

impl MutEventSubscriber for OutputRoom {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let wait = &self.output.wait;
        if events.fd() == wait.refusals().as_raw_fd() {
            let _ = wait.refusals().read();
            if !self.watching {
                self.watching = ops.add(self.destination()).is_ok();
            }
            return;
        }
        let _ = ops.remove(self.destination());
        self.watching = false;
        wait.take_waiting();
        (self.output.resume)(&self.access);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.output.wait.refusals(), EventSet::IN));
    }
}

#[path = "event_loop/net.rs"]
mod net;
pub use net::NetTapEvents;

#[cfg(test)]
mod tests;
