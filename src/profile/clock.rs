//! The profiler's clock: the TSC, read directly. Two reads per exit through the vDSO's
//! `clock_gettime` cost about as much as the rest of hushvm's exit path on the
//! development host; `rdtsc` costs a fraction. Ticks are converted to nanoseconds with a
//! ratio measured once per process against the monotonic clock.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A point in time, in TSC ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticks(u64);

/// The TSC and its rate.
#[derive(Debug, Clone, Copy)]
pub struct ExitClock {
    /// Nanoseconds per tick, as a 32.32 fixed-point number.
    ns_per_tick: u64,
}

const CALIBRATION: Duration = Duration::from_millis(10);

fn read_tsc() -> u64 {
    // The TSC is readable from user space on every x86-64 Linux host hushvm supports.
    #[allow(unused_unsafe)]
    // SAFETY: rdtsc has no memory effects and no preconditions.
    unsafe {
        std::arch::x86_64::_rdtsc()
    }
}

impl ExitClock {
    /// The process's clock, calibrated on first use (about 10 ms).
    pub fn get() -> ExitClock {
        static CLOCK: OnceLock<ExitClock> = OnceLock::new();
        *CLOCK.get_or_init(Self::calibrate)
    }

    fn calibrate() -> ExitClock {
        let (start, start_ticks) = (Instant::now(), read_tsc());
        while start.elapsed() < CALIBRATION {
            std::hint::spin_loop();
        }
        let (elapsed, ticks) = (start.elapsed(), read_tsc().wrapping_sub(start_ticks).max(1));
        let ns_per_tick = ((elapsed.as_nanos() << 32) / u128::from(ticks)) as u64;
        ExitClock { ns_per_tick }
    }

    /// Now.
    #[inline]
    pub fn now(&self) -> Ticks {
        Ticks(read_tsc())
    }

    /// Time from `start` to now.
    #[inline]
    pub fn since(&self, start: Ticks) -> Duration {
        Duration::from_nanos(self.ns_since(start))
    }

    /// Time from `start` to now, ns (the exit path's form: no `Duration` round trip).
    #[inline]
    pub fn ns_since(&self, start: Ticks) -> u64 {
        let ticks = read_tsc().saturating_sub(start.0);
        ((u128::from(ticks) * u128::from(self.ns_per_tick)) >> 32) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tsc_clock_agrees_with_the_monotonic_clock() {
        let clock = ExitClock::get();
        let (start, ticks) = (Instant::now(), clock.now());
        std::thread::sleep(Duration::from_millis(50));
        let (real, measured) = (start.elapsed(), clock.since(ticks));
        let error = (measured.as_secs_f64() - real.as_secs_f64()).abs() / real.as_secs_f64();
        assert!(error < 0.05, "tsc {measured:?} against {real:?}");
    }
}
