//! Rate-limited warnings, for anything a guest can trigger over and over.

use std::time::{Duration, Instant};

/// Lets through `burst` messages per `interval` and counts the rest.
#[derive(Debug)]
pub struct RateLimiter {
    burst: u32,
    interval: Duration,
    window_start: Option<Instant>,
    sent: u32,
    suppressed: u64,
}

impl RateLimiter {
    /// A limiter of `burst` messages per `interval`.
    pub fn new(burst: u32, interval: Duration) -> Self {
        Self {
            burst,
            interval,
            window_start: None,
            sent: 0,
            suppressed: 0,
        }
    }

    /// True if a message may go out now. When a new window opens, `suppressed` says how
    /// many were held back in the last one.
    pub fn allow(&mut self, now: Instant) -> (bool, u64) {
        let expired = self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= self.interval);
        let mut held_back = 0;
        if expired {
            self.window_start = Some(now);
            self.sent = 0;
            held_back = std::mem::take(&mut self.suppressed);
        }
        if self.sent < self.burst {
            self.sent += 1;
            (true, held_back)
        } else {
            self.suppressed += 1;
            (false, held_back)
        }
    }

    /// Prints `message()` to stderr if allowed.
    pub fn warn(&mut self, message: impl FnOnce() -> String) {
        let (allowed, held_back) = self.allow(Instant::now());
        if held_back > 0 {
            eprintln!("hushvm: warning: {held_back} similar warnings suppressed");
        }
        if allowed {
            eprintln!("hushvm: warning: {}", message());
        }
    }
}

impl Default for RateLimiter {
    /// Ten messages per second.
    fn default() -> Self {
        Self::new(10, Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_suppresses_then_reports_what_it_held_back() {
        let mut limiter = RateLimiter::new(2, Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(limiter.allow(start), (true, 0));
        assert_eq!(limiter.allow(start), (true, 0));
        assert_eq!(limiter.allow(start), (false, 0));
        assert_eq!(
            limiter.allow(start + Duration::from_millis(999)),
            (false, 0)
        );
        assert_eq!(limiter.allow(start + Duration::from_secs(1)), (true, 2));
    }
}
