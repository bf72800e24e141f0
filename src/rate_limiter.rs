//! Token-bucket rate limiters as Firecracker defines them: a bandwidth bucket (bytes)
//! and an operations bucket, each with a `size`, an optional `one_time_burst` and a
//! `refill_time` in milliseconds (the time an empty bucket takes to fill). The serde
//! types read Firecracker's API JSON (`{"bandwidth": {...}, "ops": {...}}`).
//!
//! Hand-written because no published crate has these semantics: `governor` is GCRA with
//! no one-time burst, `leaky-bucket` is async, and Firecracker's `rate_limiter` is not
//! published on its own. Pure: the caller passes the time (nanoseconds of a monotonic
//! clock), so every decision is testable without a host clock.
//!
//! A limited device waits, it never drops: `admit` says either go (and charges both
//! buckets) or how long until the request fits. A request larger than a bucket goes
//! through once the bucket is full and leaves a debt that the refill pays first, so a
//! 64 KiB frame through a 16 KiB bucket is delayed, not refused. A device without a
//! limiter holds `None` and pays nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};

const NANOS_PER_MS: u128 = 1_000_000;

/// One bucket's configuration, as Firecracker's API spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Tokens the bucket holds when full.
    pub size: u64,
    /// Tokens spent before the bucket's own, once, never refilled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds for an empty bucket to fill.
    pub refill_time: u64,
}

/// A device's limiter configuration; a bucket left out (or of size or refill time 0,
/// as in Firecracker) does not limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    /// The limiter, or None when neither bucket limits anything.
    pub fn build(&self, now_ns: u64) -> Option<RateLimiter> {
        let bandwidth = self.bandwidth.and_then(|c| TokenBucket::new(c, now_ns));
        let ops = self.ops.and_then(|c| TokenBucket::new(c, now_ns));
        (bandwidth.is_some() || ops.is_some()).then_some(RateLimiter { bandwidth, ops })
    }
}

/// What the limiter says about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead: both buckets were charged.
    Go,
    /// Nothing was charged; ask again after this long.
    Wait(Duration),
}

/// A bucket's state. `budget` goes below zero only by a request larger than the bucket
/// (the debt the refill pays first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    size: u64,
    refill_ns: u128,
    budget: i128,
    burst: u64,
    /// When `budget` was last brought up to date.
    updated_ns: u64,
    /// The fraction of a token earned since, in nanoseconds times `size` (below
    /// `refill_ns`): kept exactly, so frequent small refills lose nothing.
    earned: u128,
}

impl TokenBucket {
    /// A full bucket, or None for one that does not limit (size or refill time 0).
    pub fn new(config: TokenBucketConfig, now_ns: u64) -> Option<Self> {
        if config.size == 0 || config.refill_time == 0 {
            return None;
        }
        Some(TokenBucket {
            size: config.size,
            refill_ns: u128::from(config.refill_time) * NANOS_PER_MS,
            budget: i128::from(config.size),
            burst: config.one_time_burst.unwrap_or(0),
            updated_ns: now_ns,
            earned: 0,
        })
    }

    /// Tokens in the bucket (not counting the one-time burst); negative while in debt.
    pub fn budget(&self) -> i128 {
        self.budget
    }

    /// What is left of the one-time burst.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    fn refill(&mut self, now_ns: u64) {
        let elapsed = u128::from(now_ns.saturating_sub(self.updated_ns));
        self.updated_ns = self.updated_ns.max(now_ns);
        let size = u128::from(self.size);
        // elapsed * size < 2^128: both are below 2^64.
        let earned = elapsed * size + self.earned;
        let tokens = earned / self.refill_ns;
        self.earned = earned % self.refill_ns;
        let full = size as i128;
        self.budget = (self.budget + tokens.min(u128::from(u64::MAX)) as i128).min(full);
        if self.budget == full {
            // A full bucket earns nothing more: time spent full is not saved up.
            self.earned = 0;
        }
    }

    /// How long until `tokens` can be taken (0: now). Refills first.
    fn wait_for(&mut self, tokens: u64, now_ns: u64) -> u128 {
        self.refill(now_ns);
        let from_bucket = tokens.saturating_sub(self.burst);
        // A request larger than the bucket needs a full bucket, not more.
        let needed = i128::from(from_bucket.min(self.size));
        if needed <= self.budget {
            return 0;
        }
        let missing = (needed - self.budget) as u128;
        missing
            .saturating_mul(self.refill_ns)
            .saturating_sub(self.earned)
            .div_ceil(u128::from(self.size))
    }

    fn take(&mut self, tokens: u64) {
        let from_burst = tokens.min(self.burst);
        self.burst -= from_burst;
        self.budget -= i128::from(tokens - from_burst);
    }
}

/// A device's limiter: a bandwidth bucket, an operations bucket, or both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// One operation of `bytes` bytes at time `now_ns`: charged to both buckets if both
    /// have room, otherwise nothing is charged and the answer is how long to wait.
    pub fn admit(&mut self, bytes: u64, now_ns: u64) -> Admission {
        let admission = self.check(bytes, now_ns);
        if admission == Admission::Go {
            self.charge(bytes, now_ns);
        }
        admission
    }

    /// Whether one operation of `bytes` bytes may go now, charging nothing: for a
    /// device that learns only afterwards whether (and how much) it moved, and then
    /// calls `charge`.
    pub fn check(&mut self, bytes: u64, now_ns: u64) -> Admission {
        let wait_bytes = self
            .bandwidth
            .as_mut()
            .map_or(0, |bucket| bucket.wait_for(bytes, now_ns));
        let wait_ops = self
            .ops
            .as_mut()
            .map_or(0, |bucket| bucket.wait_for(1, now_ns));
        match wait_bytes.max(wait_ops) {
            0 => Admission::Go,
            wait => Admission::Wait(Duration::from_nanos(
                u64::try_from(wait).unwrap_or(u64::MAX),
            )),
        }
    }

    /// Charges one operation of `bytes` bytes whatever the budgets (a debt the refill
    /// pays first): a receive's size is known only once it has arrived.
    pub fn charge(&mut self, bytes: u64, now_ns: u64) {
        if let Some(bucket) = self.bandwidth.as_mut() {
            bucket.refill(now_ns);
            bucket.take(bytes);
        }
        if let Some(bucket) = self.ops.as_mut() {
            bucket.refill(now_ns);
            bucket.take(1);
        }
    }

    pub fn bandwidth(&self) -> Option<&TokenBucket> {
        self.bandwidth.as_ref()
    }

    pub fn ops(&self) -> Option<&TokenBucket> {
        self.ops.as_ref()
    }
}

#[cfg(test)]
#[path = "rate_limiter_tests.rs"]
mod tests;
