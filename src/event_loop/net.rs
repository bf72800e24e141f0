//! A virtio-net device's tap, watched by the event loop: frames waiting (the tap became
//! readable: edge-triggered, since the device reads until the tap is empty or the guest's
//! buffers run out, and the guest's RX doorbell resumes a starved queue) go to the RX
//! queue; a transmission that met a full tap waits for it to be writable; a direction a
//! limiter stopped waits on a timer until the limiter's retry time.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::access::DeviceAccess;
use crate::services::{DoorbellService, NetStatus};

/// virtio-net's receive and transmit queues.
const RX_QUEUE: u32 = 0;
const TX_QUEUE: u32 = 1;
/// The shortest timer the limiter's wait arms (a zero duration would disarm it).
const MIN_RETRY: Duration = Duration::from_micros(1);

/// The tap's subscriber.
pub struct NetTapEvents {
    tap: RawFd,
    status: Arc<dyn NetStatus>,
    service: DoorbellService,
    access: DeviceAccess,
    /// Written by the device when it starts waiting (full tap, limiter).
    waker: Arc<EventFd>,
    retry: TimerFd,
    /// The tap is watched for writability too (a transmission waits for room).
    watching_room: bool,
}

impl NetTapEvents {
    /// Watches `tap` (an fd the device keeps open for the machine's life) for the device
    /// behind `service`; `waker` is the eventfd the device writes when it starts waiting.
    pub fn new(
        tap: RawFd,
        status: Arc<dyn NetStatus>,
        service: DoorbellService,
        waker: Arc<EventFd>,
        access: DeviceAccess,
    ) -> std::io::Result<Self> {
        Ok(Self {
            tap,
            status,
            service,
            access,
            waker,
            retry: TimerFd::new()?,
            watching_room: false,
        })
    }

    fn tap_events(&self, room: bool) -> Events {
        let mut set = EventSet::IN | EventSet::EDGE_TRIGGERED;
        if room {
            set |= EventSet::OUT;
        }
        Events::new_raw(self.tap, set)
    }

    /// Watches for what the device now waits for: room in the tap, the limiter's time.
    fn rearm(&mut self, ops: &mut EventOps) {
        if self.status.tx_blocked() && !self.watching_room {
            // EPOLL_CTL_MOD looks at the tap's readiness again: room already there is
            // reported at once, not lost to the edge.
            self.watching_room = ops.modify(self.tap_events(true)).is_ok();
        }
        if let Some(at) = self.status.retry_after_ns() {
            let wait = Duration::from_nanos(at.saturating_sub(self.status.now_ns()));
            let _ = self.retry.reset(wait.max(MIN_RETRY), None);
        }
    }
}

impl MutEventSubscriber for NetTapEvents {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.tap {
            let set = events.event_set();
            if set.contains(EventSet::OUT) && self.watching_room {
                self.watching_room = ops.modify(self.tap_events(false)).is_err();
                self.service.ring(&self.access, Some(TX_QUEUE));
            }
            if set.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP) {
                self.service.ring(&self.access, Some(RX_QUEUE));
            }
        } else if fd == self.waker.as_raw_fd() {
            let _ = self.waker.read();
        } else if fd == self.retry.as_raw_fd() {
            // Clearing also resets the expiry count, so epoll stops reporting it.
            let _ = self.retry.clear();
            self.service.ring(&self.access, None);
        }
        self.rearm(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(self.tap_events(false));
        let _ = ops.add(Events::new(&*self.waker, EventSet::IN));
        let _ = ops.add(Events::new(&self.retry, EventSet::IN));
        // Frames that arrived before the loop watched the tap made no edge it will see.
        self.service.ring(&self.access, Some(RX_QUEUE));
        self.rearm(ops);
    }
}
