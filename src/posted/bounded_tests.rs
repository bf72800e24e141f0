//! The bounded drain without KVM: the policy alone, the switch with a fake hypervisor
//! and timer, and the time bound in a simulation driven by an injected clock.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::*;
use crate::access::DeviceAccess;
use crate::bus::{Access, Flush, IoBuses};
use crate::devices::uart::{Uart, UartOptions};
use crate::exit::VmExit;
use crate::irq::CountingLine;
use crate::posted::{MemoryRing, PostedWrite, PostedWrites};
use crate::profile::ExitProfile;
use crate::ratelimit::RateLimiter;
use crate::run_loop::{ExitContext, ExitOutcome};

const PERIOD: Duration = Duration::from_millis(1);

#[test]
fn activation_arms_the_timer_at_the_bound_once() {
    let mut policy = BoundedDrainPolicy::new(PERIOD, IDLE_PERIODS);
    assert!(!policy.is_active());
    assert_eq!(policy.activate(0), Some(PERIOD));
    assert!(policy.is_active());
    assert_eq!(policy.activate(0), None, "a second vCPU finds it active");
}

#[test]
fn a_write_seen_keeps_it_armed_and_idle_periods_deactivate() {
    let mut policy = BoundedDrainPolicy::new(PERIOD, IDLE_PERIODS);
    policy.activate(0);
    for _ in 1..IDLE_PERIODS {
        assert_eq!(policy.tick(1, 0), Tick::Keep);
    }
    // A bounded write applied (by the drain or by any exit's drain) starts over.
    assert_eq!(policy.tick(1, 1), Tick::Keep);
    for _ in 1..IDLE_PERIODS {
        assert_eq!(policy.tick(1, 1), Tick::Keep);
    }
    assert_eq!(policy.tick(1, 1), Tick::Deactivate);
    assert!(!policy.is_active());
    assert_eq!(policy.tick(1, 1), Tick::Inactive);
}

#[test]
fn late_ticks_count_every_period_they_cover() {
    // An event loop that slept through several expirations reads them all at once: the
    // idle time is what counts, not the wake-ups.
    let mut policy = BoundedDrainPolicy::new(PERIOD, IDLE_PERIODS);
    policy.activate(5);
    assert_eq!(policy.tick(u64::from(IDLE_PERIODS) - 1, 5), Tick::Keep);
    assert_eq!(policy.tick(1, 5), Tick::Deactivate);
}

#[test]
fn a_write_after_deactivation_activates_again() {
    let mut policy = BoundedDrainPolicy::new(PERIOD, 1);
    policy.activate(0);
    assert_eq!(policy.tick(1, 0), Tick::Deactivate);
    assert_eq!(policy.activate(0), Some(PERIOD));
    // A failed unregister keeps it active and counts again.
    assert_eq!(policy.tick(1, 0), Tick::Deactivate);
    policy.stay_active(0);
    assert!(policy.is_active());
}

/// What the fake hypervisor and timer were asked, in order.
#[derive(Default)]
struct Log {
    calls: Mutex<Vec<&'static str>>,
    registered: AtomicBool,
    refuse_register: AtomicBool,
    refuse_unregister: AtomicBool,
    /// The fake clock's now, and the timer's (start, period) when armed.
    now: Mutex<Duration>,
    armed: Mutex<Option<(Duration, Duration)>>,
}

impl Log {
    fn calls(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.calls.locked())
    }

    fn refusal(&self, refuse: &AtomicBool) -> io::Result<()> {
        match refuse.load(Ordering::Relaxed) {
            true => Err(io::Error::from_raw_os_error(libc::EINVAL)),
            false => Ok(()),
        }
    }

    /// The armed timer's first expiry after `after`.
    fn next_expiry(&self, after: Duration) -> Option<Duration> {
        let (start, period) = (*self.armed.locked())?;
        let periods = (after.saturating_sub(start).as_nanos() / period.as_nanos()) as u32 + 1;
        Some(start + period * periods)
    }
}

struct FakeSwitch(Arc<Log>);

impl ZoneSwitch for FakeSwitch {
    fn register(&self, _zone: &PostedZone) -> io::Result<()> {
        self.0.calls.locked().push("register");
        self.0.refusal(&self.0.refuse_register)?;
        self.0.registered.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn unregister(&self, _zone: &PostedZone) -> io::Result<()> {
        self.0.calls.locked().push("unregister");
        self.0.refusal(&self.0.refuse_unregister)?;
        self.0.registered.store(false, Ordering::Relaxed);
        Ok(())
    }
}

struct FakeTimer(Arc<Log>);

impl DrainTimer for FakeTimer {
    fn arm(&self, period: Duration) -> io::Result<()> {
        self.0.calls.locked().push("arm");
        *self.0.armed.locked() = Some((*self.0.now.locked(), period));
        Ok(())
    }

    fn disarm(&self) -> io::Result<()> {
        self.0.calls.locked().push("disarm");
        *self.0.armed.locked() = None;
        Ok(())
    }
}

/// The machine around COM1: its THR posted with a bounded flush, a fake KVM ring that
/// posts THR writes only while the fake hypervisor has the zone registered.
struct Machine {
    log: Arc<Log>,
    ring: Arc<MemoryRing>,
    access: DeviceAccess,
    output: Arc<Mutex<Vec<u8>>>,
    profile: ExitProfile,
    warnings: RateLimiter,
}

struct Output(Arc<Mutex<Vec<u8>>>);

impl io::Write for Output {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.locked().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Machine {
    fn new() -> Self {
        let output = Arc::new(Mutex::new(Vec::new()));
        let options = UartOptions {
            post_transmit: true,
        };
        let line = Arc::new(CountingLine::default());
        let uart = Uart::with_options(Output(output.clone()), line, options);
        let mut buses = IoBuses::default();
        buses
            .pio
            .insert("com1", 0x3f8, 8, Arc::new(Mutex::new(uart)))
            .unwrap();
        let zones: Vec<_> = buses.posted_zones();
        assert_eq!(zones[0].flush, Flush::Bounded);
        let log = Arc::new(Log::default());
        let switch = Box::new(FakeSwitch(log.clone()));
        let timer = Arc::new(FakeTimer(log.clone()));
        let ring = Arc::new(MemoryRing::default());
        let bounded = BoundedDrain::new(zones, PERIOD, switch, timer);
        let posted = PostedWrites::new(ring.clone()).with_bounded(bounded);
        let access = DeviceAccess {
            posted: Arc::new(posted),
            ..DeviceAccess::plain(Arc::new(buses))
        };
        Self {
            log,
            ring,
            access,
            output,
            profile: ExitProfile::default(),
            warnings: RateLimiter::default(),
        }
    }

    fn bounded(&self) -> &BoundedDrain {
        self.access.posted.bounded().unwrap()
    }

    /// The guest writes `byte` to THR: KVM posts it if the zone is registered, else it
    /// exits and the exit path serves it. Returns true if it exited.
    fn write_thr(&mut self, byte: u8) -> bool {
        if self.log.registered.load(Ordering::Relaxed) {
            let mut data = [0; 8];
            data[0] = byte;
            self.ring.push(PostedWrite {
                space: AddressSpace::Pio,
                addr: 0x3f8,
                len: 1,
                data,
            });
            return false;
        }
        let exit = VmExit::Io {
            port: 0x3f8,
            size: 1,
            access: Access::Write(&[byte]),
        };
        let outcome = ExitContext {
            access: &self.access,
            profile: &mut self.profile,
            warnings: &mut self.warnings,
            vcpu: 0,
        }
        .handle(exit);
        assert_eq!(outcome, ExitOutcome::Continue);
        true
    }
}

#[test]
fn the_first_exited_write_arms_then_registers_and_idle_ticks_unregister_then_disarm() {
    let mut machine = Machine::new();
    assert!(machine.write_thr(b'a'), "inactive: the write exits");
    assert_eq!(*machine.output.locked(), b"a", "and is served at once");
    assert_eq!(machine.log.calls(), ["arm", "register"]);
    assert!(!machine.write_thr(b'b'), "active: posted");
    // The first tick applies 'b' (a sign of life); IDLE_PERIODS idle ones follow.
    for _ in 0..=IDLE_PERIODS {
        machine.access.drain_tick(1).unwrap();
    }
    assert_eq!(*machine.output.locked(), b"ab");
    assert_eq!(machine.log.calls(), ["unregister", "disarm"]);
    assert!(machine.write_thr(b'c'), "inactive again: exits");
    assert_eq!(machine.log.calls(), ["arm", "register"]);
}

#[test]
fn other_exited_writes_activate_nothing() {
    let mut machine = Machine::new();
    let exit = VmExit::Io {
        port: 0x3fb,
        size: 1,
        access: Access::Write(&[0x03]),
    };
    ExitContext {
        access: &machine.access,
        profile: &mut machine.profile,
        warnings: &mut machine.warnings,
        vcpu: 0,
    }
    .handle(exit);
    assert!(machine.log.calls().is_empty());
    assert!(!machine.bounded().activation_done());
}

#[test]
fn a_zone_that_cannot_be_registered_keeps_exiting_and_stops_trying() {
    let mut machine = Machine::new();
    machine.log.refuse_register.store(true, Ordering::Relaxed);
    assert!(machine.write_thr(b'a'));
    assert_eq!(machine.log.calls(), ["arm", "register"]);
    assert!(machine.write_thr(b'b'));
    assert!(machine.log.calls().is_empty(), "no retry on every exit");
    // The armed timer's next tick, on the event loop, disarms it.
    machine.access.drain_tick(1).unwrap();
    assert_eq!(machine.log.calls(), ["disarm"]);
    assert_eq!(*machine.output.locked(), b"ab");
}

#[test]
fn a_failed_unregister_keeps_the_drain_running() {
    let mut machine = Machine::new();
    machine.write_thr(b'a');
    machine.log.calls();
    machine.log.refuse_unregister.store(true, Ordering::Relaxed);
    let errors = (0..IDLE_PERIODS)
        .filter(|_| machine.access.drain_tick(1).is_err())
        .count();
    assert_eq!(errors, 1);
    assert_eq!(machine.log.calls(), ["unregister"], "still armed");
    assert!(machine.bounded().activation_done());
    assert!(!machine.write_thr(b'b'), "still posted, and still drained");
    machine.access.drain_tick(1).unwrap();
    assert_eq!(*machine.output.locked(), b"ab");
}

/// The guest's THR writes in the simulation: (time, byte). Bursts, gaps shorter and
/// longer than the idle limit, writes slower than the period.
fn guest_script() -> Vec<(Duration, u8)> {
    let mut script = Vec::new();
    let mut at = |start_us: u64, count: u64, every_us: u64| {
        for i in 0..count {
            let byte = (script.len() % 251) as u8;
            script.push((Duration::from_micros(start_us + i * every_us), byte));
        }
    };
    at(100, 60, 300); // a burst, faster than the period
    at(50_000, 40, 2_500); // after a gap longer than the idle limit; slower than a period
    at(200_000, 3, 10); // a few bytes, then silence
    at(230_000, 1, 0); // one byte, after the zone went idle
    script
}

#[test]
fn a_posted_bounded_write_is_drained_within_the_bound_with_an_injected_clock() {
    let mut machine = Machine::new();
    let script = guest_script();
    let mut written: Vec<Duration> = Vec::new();
    let (mut exits, mut seen) = (0, 0);
    let mut check = |machine: &Machine, now: Duration, written: &[Duration]| {
        let output = machine.output.locked();
        for (index, at) in written.iter().enumerate().take(output.len()).skip(seen) {
            let delay = now - *at;
            assert!(
                delay <= PERIOD,
                "byte {index} written at {at:?} out at {now:?}"
            );
        }
        seen = output.len();
    };
    let mut guest: VecDeque<_> = script.iter().copied().collect();
    let end = Duration::from_millis(300);
    loop {
        let now = *machine.log.now.locked();
        let tick = machine.log.next_expiry(now);
        let next = guest.front().map(|(at, _)| *at);
        match (next, tick) {
            (Some(at), tick) if tick.is_none_or(|tick| at < tick) => {
                *machine.log.now.locked() = at;
                let (_, byte) = guest.pop_front().unwrap();
                written.push(at);
                exits += u32::from(machine.write_thr(byte));
                check(&machine, at, &written);
            }
            (_, Some(tick)) if tick <= end => {
                *machine.log.now.locked() = tick;
                machine.access.drain_tick(1).unwrap();
                check(&machine, tick, &written);
            }
            _ => break,
        }
    }
    let expected: Vec<u8> = script.iter().map(|(_, byte)| *byte).collect();
    assert_eq!(*machine.output.locked(), expected, "every byte, in order");
    // One exit per activation: the start, after the long gap, after the silence.
    assert_eq!(exits, 4);
    assert!(
        machine.log.armed.locked().is_none(),
        "idle at the end: no timer"
    );
    assert!(!machine.log.registered.load(Ordering::Relaxed));
}
