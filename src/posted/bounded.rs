//! Adaptive bounded zones (issue 11): a posted register whose flush rule is
//! [`Flush::Bounded`] (COM1's THR) must reach the outside within the drain period, and
//! KVM's ring has no notification, so while such writes may be posted something must
//! poll. That poll is paid only while the guest uses the register:
//!
//! - at start the bounded zones are **not** registered with KVM: the guest's first write
//!   to one is an ordinary exit, served directly, and the exit path then *activates*
//!   them: the drain timer is armed (periodic at the bound) and the zones registered;
//! - each timer tick drains the ring; after [`IDLE_PERIODS`] periods in which no bounded
//!   write was applied (by a tick or by any exit's drain), the tick *deactivates*:
//!   unregisters the zones, drains once more, disarms the timer.
//!
//! So a guest that never writes THR (the rtc bench) arms no timer at all.
//!
//! Why it is correct (the bound, and the races):
//! - **Under [`BoundedDrain`]'s control lock the zones are registered exactly when the
//!   timer is armed.** Activation and deactivation take that lock (they are rare); the
//!   exit path's common case reads one atomic and takes no lock.
//! - **Activation arms first, then registers.** A write can be posted only after the
//!   register call, so after the timer was armed: the next expiry is at most one period
//!   after it was posted. The write that triggered the activation exited and was served
//!   before the guest runs again.
//! - **Deactivation unregisters, then drains.** KVM's unregister returns only after
//!   `synchronize_srcu`: every write that a vCPU was posting to the zone is in the ring
//!   by then, and every later write exits. The drain after it applies the former at
//!   once; the exit path serves the latter (draining the ring first, so order holds).
//! - **A vCPU activating while the event loop deactivates** waits for the control lock
//!   and re-checks the policy under it: either it activates before (the tick then sees
//!   an active policy and a fresh write count, or deactivates a zone registered anew,
//!   and a later write exits and activates again), or after (it registers and arms a
//!   disarmed timer). A vCPU that reads the fast flag as still active while the zone
//!   is already unregistered skips activation: its write exited and was served; a later
//!   write exits again and activates.
//! - **Two vCPUs activating at once**: the second finds the policy active under the lock.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;

use crate::bus::{AddressSpace, PostedZone};
use crate::sync::LockExt;

/// Drain periods with no bounded write before the zones are unregistered: 20 ms at the
/// default 1 ms bound. An activation and a deactivation each cost a KVM io-bus change
/// (`synchronize_srcu`, tens to hundreds of microseconds) and the activation an exit
/// (~7 us here); an idle period costs one timer wake-up (a few microseconds). Staying
/// active until the idle wake-ups have cost about what a switch costs is the
/// ski-rental rule: never more than twice the better choice's cost, whatever the
/// guest's gaps. 20 also lets a guest that prints line by line with short pauses
/// (a shell prompt, a boot log) keep one activation.
pub const IDLE_PERIODS: u32 = 20;

/// Registers and unregisters a posted zone with the hypervisor (KVM's coalesced zones
/// in `kvm/`; the machine passes it in, so nothing here knows KVM).
pub trait ZoneSwitch: Send {
    /// Writes to `zone` may be posted from now on.
    fn register(&self, zone: &PostedZone) -> io::Result<()>;
    /// Writes to `zone` exit from now on; every write already posted is in the ring.
    fn unregister(&self, zone: &PostedZone) -> io::Result<()>;
}

/// The drain's timer: the event loop waits on it and drains at each expiry.
pub trait DrainTimer: Send + Sync {
    /// Expires every `period`, the first time one period from now.
    fn arm(&self, period: Duration) -> io::Result<()>;
    /// Expires no more.
    fn disarm(&self) -> io::Result<()>;
}

/// Switching the bounded zones failed.
#[derive(Debug, Error)]
pub enum DrainError {
    #[error("cannot arm the bounded drain's timer")]
    Arm(#[source] io::Error),
    #[error("cannot register the posted zone of {device} at {addr:#x}")]
    Register {
        device: &'static str,
        addr: u64,
        #[source]
        source: io::Error,
    },
    #[error("cannot unregister the posted zone of {device} at {addr:#x}")]
    Unregister {
        device: &'static str,
        addr: u64,
        #[source]
        source: io::Error,
    },
}

/// What a drain tick decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Not active (an activation failed and left the timer armed): disarm.
    Inactive,
    /// Stay registered; the timer goes on.
    Keep,
    /// Unregister, drain once more, disarm.
    Deactivate,
}

/// The decisions alone, with time passed in as timer periods: when to arm, when to
/// unregister. No clock, no KVM, no locks.
#[derive(Debug, Clone)]
pub struct BoundedDrainPolicy {
    period: Duration,
    idle_limit: u32,
    active: Option<Activity>,
}

#[derive(Debug, Clone, Copy)]
struct Activity {
    /// Periods since a bounded write was last seen.
    idle: u64,
    /// The bounded-write count at the last look.
    seen: u64,
}

impl BoundedDrainPolicy {
    /// Drains every `period`; deactivates after `idle_limit` idle periods.
    pub fn new(period: Duration, idle_limit: u32) -> Self {
        Self {
            period,
            idle_limit: idle_limit.max(1),
            active: None,
        }
    }

    /// True while the zones are (to be) registered and the timer armed.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// A bounded write exited, so its zone is not registered; `seen` is the count of
    /// bounded writes applied so far. Returns the period to arm the timer with, or
    /// `None` if already active.
    pub fn activate(&mut self, seen: u64) -> Option<Duration> {
        if self.active.is_some() {
            return None;
        }
        self.active = Some(Activity { idle: 0, seen });
        Some(self.period)
    }

    /// The timer expired `periods` times (at least once) and the ring was drained;
    /// `seen` is the count of bounded writes applied so far.
    pub fn tick(&mut self, periods: u64, seen: u64) -> Tick {
        let Some(activity) = &mut self.active else {
            return Tick::Inactive;
        };
        if seen != activity.seen {
            *activity = Activity { idle: 0, seen };
            return Tick::Keep;
        }
        activity.idle += periods.max(1);
        if activity.idle < u64::from(self.idle_limit) {
            return Tick::Keep;
        }
        self.active = None;
        Tick::Deactivate
    }

    /// Unregistering failed: the zones may still be posted to, so stay active and
    /// count idle periods again.
    pub fn stay_active(&mut self, seen: u64) {
        self.active = Some(Activity { idle: 0, seen });
    }

    /// Activation failed: back to inactive.
    pub fn abandon(&mut self) {
        self.active = None;
    }
}

/// The bounded zones of a machine at run time: the policy behind a small lock, the
/// hypervisor switch, the timer, and the two atomics the hot paths read.
pub struct BoundedDrain {
    zones: Vec<PostedZone>,
    /// True when a bounded write's exit needs no activation: the zones are registered,
    /// or registering them failed and every write is served by its exit from now on.
    /// Written under `control`; read without it on every exit that writes a zone.
    activation_done: AtomicBool,
    /// Bounded writes applied so far, by any drainer (the policy's sign of life).
    seen: AtomicU64,
    control: Mutex<Control>,
}

struct Control {
    policy: BoundedDrainPolicy,
    switch: Box<dyn ZoneSwitch>,
    timer: Arc<dyn DrainTimer>,
}

impl std::fmt::Debug for BoundedDrain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedDrain")
            .field("zones", &self.zones)
            .field("activation_done", &self.activation_done)
            .finish_non_exhaustive()
    }
}

impl BoundedDrain {
    /// `zones`, inactive (not registered), drained every `period` once active.
    pub fn new(
        zones: Vec<PostedZone>,
        period: Duration,
        switch: Box<dyn ZoneSwitch>,
        timer: Arc<dyn DrainTimer>,
    ) -> Self {
        Self {
            zones,
            activation_done: AtomicBool::new(false),
            seen: AtomicU64::new(0),
            control: Mutex::new(Control {
                policy: BoundedDrainPolicy::new(period, IDLE_PERIODS),
                switch,
                timer,
            }),
        }
    }

    /// The zones, registered or not.
    pub fn zones(&self) -> &[PostedZone] {
        &self.zones
    }

    /// True if `addr` lies in a bounded zone.
    pub fn covers(&self, space: AddressSpace, addr: u64) -> bool {
        self.zones.iter().any(|zone| {
            zone.space == space && addr >= zone.addr && addr - zone.addr < u64::from(zone.size)
        })
    }

    /// Counts bounded writes a drainer applied.
    pub fn saw(&self, writes: u64) {
        if writes > 0 {
            self.seen.fetch_add(writes, Ordering::Release);
        }
    }

    /// True while the zones are registered (or given up on).
    pub fn activation_done(&self) -> bool {
        self.activation_done.load(Ordering::Acquire)
    }

    /// The exit path, after serving a write that exited: activates the zones if the
    /// write was to one of them and they are not registered. One atomic load in the
    /// common case.
    pub fn exited_write(&self, space: AddressSpace, addr: u64) -> Result<(), DrainError> {
        if self.activation_done() || !self.covers(space, addr) {
            return Ok(());
        }
        self.activate()
    }

    fn activate(&self) -> Result<(), DrainError> {
        let mut control = self.control.locked();
        let Some(period) = control.policy.activate(self.seen.load(Ordering::Acquire)) else {
            return Ok(());
        };
        // Armed before registered: no write can be posted before the timer runs.
        let result = control.timer.arm(period).map_err(DrainError::Arm);
        let result = result.and_then(|()| self.register_all(&*control.switch));
        if result.is_err() {
            // Given up for this run: every write to the zones exits and is served
            // there, which needs no drain. The flag keeps the exits from retrying; the
            // timer, if armed, is disarmed by the event loop's next tick (see `tick`).
            control.policy.abandon();
        }
        self.activation_done.store(true, Ordering::Release);
        result
    }

    fn register_all(&self, switch: &dyn ZoneSwitch) -> Result<(), DrainError> {
        for (index, zone) in self.zones.iter().enumerate() {
            if let Err(source) = switch.register(zone) {
                for registered in &self.zones[..index] {
                    let _ = switch.unregister(registered);
                }
                return Err(DrainError::Register {
                    device: zone.device,
                    addr: zone.addr,
                    source,
                });
            }
        }
        Ok(())
    }

    /// The event loop, after a drain: `periods` timer expirations since the last tick.
    /// Returns true if the zones were just unregistered: the caller must then drain
    /// once more (writes posted before the unregister).
    ///
    /// Only this (the event loop, right after reading the timer) disarms the timer: a
    /// disarm elsewhere could clear an expiry epoll has already reported, and the
    /// event loop's read of the timer would then block.
    pub fn tick(&self, periods: u64) -> Result<bool, DrainError> {
        let mut control = self.control.locked();
        let seen = self.seen.load(Ordering::Acquire);
        match control.policy.tick(periods, seen) {
            Tick::Keep => return Ok(false),
            Tick::Inactive => {
                // An activation that failed left the timer armed.
                let _ = control.timer.disarm();
                return Ok(false);
            }
            Tick::Deactivate => {}
        }
        for zone in &self.zones {
            if let Err(source) = control.switch.unregister(zone) {
                control.policy.stay_active(seen);
                return Err(DrainError::Unregister {
                    device: zone.device,
                    addr: zone.addr,
                    source,
                });
            }
        }
        self.activation_done.store(false, Ordering::Release);
        // A timer left armed by a failed disarm only costs ticks the inactive policy
        // ignores.
        let _ = control.timer.disarm();
        Ok(true)
    }
}

#[cfg(test)]
#[path = "bounded_tests.rs"]
mod tests;
