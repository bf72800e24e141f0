//! The work the machine does off the vCPUs: the RTC's timed events, virtqueue doorbells
//! that KVM signalled instead of exiting, host input. One implementation each, driven by
//! the event loop in a live run and by the trace's records in a replay.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::access::DeviceAccess;
use crate::devices::rtc::{Clock, Rtc};
use crate::devices::uart::Uart;
use crate::devices::virtio::console::Console;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::{Net, NetBackend};
use crate::devices::virtio::pci::VirtioPciTransport;
use crate::devices::virtio::{OnBus, QueueNotify, VirtioDevice};
use crate::sync::LockExt;
use crate::trace::Record;

/// Which device host input goes to, as a trace names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputTarget {
    Com1,
    VirtioConsole,
}

impl InputTarget {
    /// The trace's sink number.
    pub fn sink(self) -> u8 {
        match self {
            InputTarget::Com1 => 0,
            InputTarget::VirtioConsole => 1,
        }
    }

    /// The target a trace's sink number names.
    pub fn from_sink(sink: u8) -> Option<Self> {
        match sink {
            0 => Some(InputTarget::Com1),
            1 => Some(InputTarget::VirtioConsole),
            _ => None,
        }
    }
}

/// A device that takes host input.
pub trait InputSink: Send {
    /// Takes what it can of `bytes`; returns how many it took.
    fn receive(&mut self, bytes: &[u8]) -> usize;
}

impl<W: io::Write + Send> InputSink for Uart<W> {
    fn receive(&mut self, bytes: &[u8]) -> usize {
        Uart::receive(self, bytes)
    }
}

impl<W: io::Write + Send> InputSink for OnBus<MmioTransport<Console<W>>> {
    fn receive(&mut self, bytes: &[u8]) -> usize {
        let taken = self.0.device().receive(bytes);
        self.0.notify(Some(0));
        taken
    }
}

impl<W: io::Write + Send> InputSink for OnBus<VirtioPciTransport<Console<W>>> {
    fn receive(&mut self, bytes: &[u8]) -> usize {
        let taken = self.0.device().receive(bytes);
        self.0.notify(Some(0));
        taken
    }
}

/// What the event loop asks of a virtio-net device to know what it waits for.
pub trait NetStatus: Send + Sync {
    /// A transmission met a full backend: retry when the tap is writable.
    fn tx_blocked(&self) -> bool;
    /// When a limited direction may go on (ns of `now_ns`'s clock), if one waits.
    fn retry_after_ns(&self) -> Option<u64>;
    /// Now, on the limiters' clock.
    fn now_ns(&self) -> u64;
    /// The device's frame counters (sent, received, dropped, ...), by name.
    fn counters(&self) -> Vec<(&'static str, u64)>;
}

macro_rules! net_status_on {
    ($transport:ident) => {
        impl<B: NetBackend> NetStatus for $transport<Net<B>> {
            fn tx_blocked(&self) -> bool {
                self.device().tx_blocked()
            }
            fn retry_after_ns(&self) -> Option<u64> {
                self.device().retry_after_ns()
            }
            fn now_ns(&self) -> u64 {
                self.device().now_ns()
            }
            fn counters(&self) -> Vec<(&'static str, u64)> {
                self.device().counters.snapshot()
            }
        }
    };
}
net_status_on!(MmioTransport);
net_status_on!(VirtioPciTransport);

/// A device behind a level-triggered line: told when the guest ended the interrupt, it
/// raises the line again if it still asserts it (PCI INTx through an irqfd's resample).
pub trait LevelTriggered: Send {
    fn resample(&mut self);
}

impl<D: VirtioDevice> LevelTriggered for OnBus<VirtioPciTransport<D>> {
    fn resample(&mut self) {
        self.0.intx_resample();
    }
}

/// The RTC's periodic, alarm and update events.
pub struct RtcService<C: Clock> {
    rtc: Arc<Mutex<Rtc<C>>>,
}

impl<C: Clock> Clone for RtcService<C> {
    fn clone(&self) -> Self {
        Self {
            rtc: self.rtc.clone(),
        }
    }
}

impl<C: Clock> RtcService<C> {
    pub fn new(rtc: Arc<Mutex<Rtc<C>>>) -> Self {
        Self { rtc }
    }

    /// Lets the RTC raise what is due; returns when its next event is due (`None`: no
    /// event enabled).
    pub fn tick(&self, access: &DeviceAccess) -> Option<Duration> {
        access.recorded_operation(
            || {
                let mut rtc = self.rtc.locked();
                rtc.tick();
                rtc.next_event()
            },
            |_| Record::RtcTick,
        )
    }

    /// Hooks `notify` to the guest's writes that change the RTC's timing.
    pub fn on_rearm(&self, notify: Box<dyn Fn() + Send>) {
        self.rtc.locked().set_rearm_notifier(notify);
    }
}

/// A virtio device's doorbell: the device serves the queue (or, for a doorbell that does
/// not say which, every queue).
#[derive(Clone)]
pub struct DoorbellService {
    /// The device's virtio slot, as the trace names it.
    pub slot: u8,
    device: Arc<dyn QueueNotify>,
}

impl DoorbellService {
    pub fn new(slot: u8, device: Arc<dyn QueueNotify>) -> Self {
        Self { slot, device }
    }

    /// Serves `queue` (`None`: any queue with work).
    pub fn ring(&self, access: &DeviceAccess, queue: Option<u32>) {
        access.recorded_operation(
            || self.device.notify(queue),
            |_| Record::Doorbell {
                slot: self.slot,
                queue,
            },
        );
    }

    /// Serves every queue if the driver published buffers since the last look, with no
    /// doorbell (recorded as a doorbell that names no queue); true if it had.
    pub fn poll(&self, access: &DeviceAccess) -> bool {
        // One operation, like every path that touches a device (the ring drained first).
        access.operation(|_| {
            let moved = self.device.avail_moved();
            if moved {
                self.device.notify(None);
                access.record(|| Record::Doorbell {
                    slot: self.slot,
                    queue: None,
                });
            }
            moved
        })
    }
}

/// Host input for one device.
#[derive(Clone)]
pub struct InputService {
    pub target: InputTarget,
    device: Arc<Mutex<dyn InputSink>>,
}

impl InputService {
    pub fn new(target: InputTarget, device: Arc<Mutex<dyn InputSink>>) -> Self {
        Self { target, device }
    }

    /// Hands `data` to the device; returns how many bytes it took.
    pub fn deliver(&self, access: &DeviceAccess, data: &[u8]) -> usize {
        access.recorded_operation(
            || self.device.locked().receive(data),
            |taken| Record::Input {
                sink: self.target.sink(),
                data: data[..*taken].to_vec(),
            },
        )
    }
}

/// Every service of a machine.
pub struct Services<C: Clock> {
    pub rtc: RtcService<C>,
    /// One per virtio device.
    pub doorbells: Vec<DoorbellService>,
    /// COM1's, and the virtio console's if there is one.
    pub inputs: Vec<InputService>,
}

impl<C: Clock> Services<C> {
    /// The doorbell service of virtio slot `slot`.
    pub fn doorbell(&self, slot: u8) -> Option<&DoorbellService> {
        self.doorbells.iter().find(|service| service.slot == slot)
    }

    /// The input service for `target`.
    pub fn input(&self, target: InputTarget) -> Option<&InputService> {
        self.inputs.iter().find(|service| service.target == target)
    }
}
