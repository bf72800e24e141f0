//! The event loop: the main thread's epoll (rust-vmm `event-manager`). It owns what
//! happens off the vCPUs: the RTC's timer, host input for COM1, and the wake-up that a
//! stopping vCPU sends.
//!
//! The ordering rule of posted writes holds here too: before any subscriber touches a
//! device, it applies what is waiting in the coalesced ring (the RTC timer reads the
//! registers a posted index write may have changed).

use crate::sync::LockExt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::bus::IoBuses;
use crate::coalesced::PostedWrites;
use crate::devices::rtc::{Clock, Rtc};
use crate::devices::serial::SerialPort;
use crate::devices::virtio::console::Console;
use crate::devices::virtio::mmio::{MmioTransport, QueueNotify};
use crate::ratelimit::RateLimiter;
use crate::trace::{Record, Recorder};

/// A subscriber as the event manager holds it.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// What every subscriber needs to keep the posted-write rule.
#[derive(Debug, Clone)]
pub struct DeviceAccess {
    /// The machine's buses.
    pub buses: Arc<IoBuses>,
    /// The coalesced ring.
    pub posted: Arc<PostedWrites>,
    /// The trace being made, if any.
    pub recorder: Option<Arc<Recorder>>,
}

impl DeviceAccess {
    /// Applies waiting posted writes; call before touching a device.
    pub fn settle(&self) {
        let recorder = self.recorder.as_deref();
        self.posted.apply_pending(&self.buses, |write| {
            if let Some(recorder) = recorder {
                recorder.record(&Record::PostedWrite {
                    space: write.space,
                    addr: write.addr,
                    data: write.bytes().to_vec(),
                });
            }
        });
    }

    /// Settles the ring, then runs `operation` on the devices; when a trace is being made,
    /// records what happened (the ring's writes, clock readings, then `record`) as one
    /// operation.
    pub fn operate<T>(
        &self,
        operation: impl FnOnce() -> T,
        record: impl FnOnce(&T) -> Record,
    ) -> T {
        match &self.recorder {
            None => {
                self.settle();
                operation()
            }
            Some(recorder) => recorder.operation(|| {
                self.settle();
                let result = operation();
                recorder.record(&record(&result));
                result
            }),
        }
    }
}

/// Fires the RTC's periodic, alarm and update interrupts on time.
pub struct RtcTimer<C: Clock + 'static> {
    timer: TimerFd,
    rearm: Arc<EventFd>,
    rtc: Arc<Mutex<Rtc<C>>>,
    access: DeviceAccess,
}

impl<C: Clock + 'static> RtcTimer<C> {
    /// A timer for `rtc`; hooks the RTC's rearm notifier to this loop.
    pub fn new(rtc: Arc<Mutex<Rtc<C>>>, access: DeviceAccess) -> io::Result<Self> {
        let rearm = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let notify = rearm.clone();
        rtc.locked().set_rearm_notifier(Box::new(move || {
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
        let rtc = &self.rtc;
        let next = self.access.operate(
            || {
                let mut rtc = rtc.locked();
                rtc.tick();
                rtc.next_event()
            },
            |_| Record::RtcTick,
        );
        let _ = match next {
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

/// A device that takes host input.
pub trait InputSink: Send {
    /// Takes what it can of `bytes`; returns how many it took.
    fn receive(&mut self, bytes: &[u8]) -> usize;
}

impl<W: io::Write + Send> InputSink for SerialPort<W> {
    fn receive(&mut self, bytes: &[u8]) -> usize {
        SerialPort::receive(self, bytes)
    }
}

impl<W: io::Write + Send> InputSink for MmioTransport<Console<W>> {
    fn receive(&mut self, bytes: &[u8]) -> usize {
        let taken = self.device_mut().receive(bytes);
        self.notify(Some(0));
        taken
    }
}

/// Host input (standard input) to a device: COM1's receive FIFO, or virtio-console's
/// receive queue.
pub struct SerialInput<S: InputSink + ?Sized> {
    input: File,
    serial: Arc<Mutex<S>>,
    /// Which input this is, in a trace.
    sink: u8,
    access: DeviceAccess,
    warnings: RateLimiter,
}

impl<S: InputSink + ?Sized> SerialInput<S> {
    /// Reads standard input for `serial`.
    pub fn from_stdin(serial: Arc<Mutex<S>>, access: DeviceAccess, sink: u8) -> io::Result<Self> {
        // An unbuffered duplicate of fd 0, so that epoll's view and ours agree.
        let input = File::from(io::stdin().as_fd().try_clone_to_owned()?);
        Ok(Self {
            input,
            serial,
            sink,
            access,
            warnings: RateLimiter::default(),
        })
    }
}

impl<S: InputSink + ?Sized> MutEventSubscriber for SerialInput<S> {
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
        let (serial, sink, input) = (&self.serial, self.sink, &buffer[..read]);
        let taken = self.access.operate(
            || serial.locked().receive(input),
            |taken| Record::Input {
                sink,
                data: input[..*taken].to_vec(),
            },
        );
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
    queue: Option<u32>,
    /// The device's virtio slot, for the trace.
    slot: u8,
    device: Arc<Mutex<dyn QueueNotify>>,
    access: DeviceAccess,
}

impl DoorbellEvent {
    /// Serves `event`, which names `queue` (`None`: any queue) of the device in `slot`.
    pub fn new(
        event: EventFd,
        queue: Option<u32>,
        slot: u8,
        device: Arc<Mutex<dyn QueueNotify>>,
        access: DeviceAccess,
    ) -> Self {
        Self {
            event,
            queue,
            slot,
            device,
            access,
        }
    }
}

impl MutEventSubscriber for DoorbellEvent {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Several rings coalesce into one count: the device serves everything available.
        let _ = self.event.read();
        let (device, queue, slot) = (&self.device, self.queue, self.slot);
        self.access.operate(
            || device.locked().notify(queue),
            |_| Record::Doorbell { slot, queue },
        );
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.event, EventSet::IN));
    }
}
