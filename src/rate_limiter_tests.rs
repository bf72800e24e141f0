use super::*;

const MS: u64 = 1_000_000;

fn bucket(size: u64, burst: Option<u64>, refill_ms: u64) -> TokenBucketConfig {
    TokenBucketConfig {
        size,
        one_time_burst: burst,
        refill_time: refill_ms,
    }
}

fn bandwidth(size: u64, burst: Option<u64>, refill_ms: u64) -> RateLimiter {
    RateLimiterConfig {
        bandwidth: Some(bucket(size, burst, refill_ms)),
        ops: None,
    }
    .build(0)
    .expect("a limiting bucket")
}

fn wait_ns(admission: Admission) -> u64 {
    match admission {
        Admission::Wait(wait) => wait.as_nanos() as u64,
        Admission::Go => panic!("expected a wait, got Go"),
    }
}

#[test]
fn firecracker_json_reads_and_round_trips() {
    let json = r#"{"bandwidth":{"size":1000,"one_time_burst":500,"refill_time":100},
                   "ops":{"size":10,"refill_time":1000}}"#;
    let config: RateLimiterConfig = serde_json::from_str(json).unwrap();
    assert_eq!(config.bandwidth, Some(bucket(1000, Some(500), 100)));
    assert_eq!(config.ops, Some(bucket(10, None, 1000)));
    let again: RateLimiterConfig =
        serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
    assert_eq!(again, config);
    let empty: RateLimiterConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, RateLimiterConfig::default());
}

#[test]
fn unknown_and_missing_json_fields_are_errors() {
    assert!(serde_json::from_str::<RateLimiterConfig>(r#"{"bandwith":{}}"#).is_err());
    assert!(serde_json::from_str::<TokenBucketConfig>(r#"{"size":1}"#).is_err());
    assert!(serde_json::from_str::<TokenBucketConfig>(r#"{"size":-1,"refill_time":1}"#).is_err());
}

#[test]
fn a_zero_bucket_does_not_limit_and_no_bucket_means_no_limiter() {
    assert!(RateLimiterConfig::default().build(0).is_none());
    let zero = RateLimiterConfig {
        bandwidth: Some(bucket(0, None, 100)),
        ops: Some(bucket(10, None, 0)),
    };
    assert!(zero.build(0).is_none());
}

#[test]
fn a_full_bucket_admits_its_size_then_waits_for_the_refill() {
    // 1000 bytes per 100 ms: 10 bytes a millisecond.
    let mut limiter = bandwidth(1000, None, 100);
    assert_eq!(limiter.admit(600, 0), Admission::Go);
    assert_eq!(limiter.admit(400, 0), Admission::Go);
    assert_eq!(limiter.bandwidth().unwrap().budget(), 0);
    // 100 bytes need 10 ms.
    assert_eq!(wait_ns(limiter.admit(100, 0)), 10 * MS);
    // Nothing was charged by the refused request; 4 ms later 6 ms remain.
    assert_eq!(wait_ns(limiter.admit(100, 4 * MS)), 6 * MS);
    assert_eq!(limiter.admit(100, 10 * MS), Admission::Go);
    assert_eq!(limiter.bandwidth().unwrap().budget(), 0);
}

#[test]
fn fractions_of_a_token_are_not_lost_between_refills() {
    // 3 tokens per 10 ms: one token every 3.33 ms.
    let mut limiter = bandwidth(3, None, 10);
    for _ in 0..3 {
        assert_eq!(limiter.admit(1, 0), Admission::Go);
    }
    let mut admitted = 0;
    let mut now = 0;
    // Asking every 1 ms for 30 ms earns exactly 9 tokens.
    for _ in 0..30 {
        now += MS;
        if limiter.admit(1, now) == Admission::Go {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 9);
}

#[test]
fn the_bucket_never_holds_more_than_its_size() {
    let mut limiter = bandwidth(100, None, 10);
    // An hour idle still leaves one bucketful.
    let hour = 3_600_000 * MS;
    assert_eq!(limiter.admit(100, hour), Admission::Go);
    assert!(matches!(limiter.admit(1, hour), Admission::Wait(_)));
}

#[test]
fn the_one_time_burst_is_spent_first_and_never_refills() {
    let mut limiter = bandwidth(100, Some(250), 10);
    assert_eq!(limiter.admit(200, 0), Admission::Go);
    assert_eq!(limiter.bandwidth().unwrap().burst(), 50);
    assert_eq!(limiter.bandwidth().unwrap().budget(), 100);
    // The burst's last 50 plus 100 of the bucket's own.
    assert_eq!(limiter.admit(150, 0), Admission::Go);
    assert_eq!(limiter.bandwidth().unwrap().burst(), 0);
    assert_eq!(limiter.bandwidth().unwrap().budget(), 0);
    assert_eq!(limiter.admit(100, 10 * MS), Admission::Go);
    assert_eq!(limiter.bandwidth().unwrap().burst(), 0);
}

#[test]
fn a_request_larger_than_the_bucket_waits_for_a_full_bucket_then_leaves_a_debt() {
    let mut limiter = bandwidth(1000, None, 100);
    assert_eq!(limiter.admit(500, 0), Admission::Go);
    // 3000 bytes need a full bucket: the missing 500 take 50 ms.
    assert_eq!(wait_ns(limiter.admit(3000, 0)), 50 * MS);
    assert_eq!(limiter.admit(3000, 50 * MS), Admission::Go);
    assert_eq!(limiter.bandwidth().unwrap().budget(), -2000);
    // The debt is paid before anything else goes: 2000 + 1 bytes take 200.1 ms.
    assert_eq!(wait_ns(limiter.admit(1, 50 * MS)), 200 * MS + 100_000);
    assert_eq!(limiter.admit(1, 250 * MS + 100_000), Admission::Go);
}

#[test]
fn the_long_run_rate_is_the_configured_rate() {
    // A sender that always retries after the wait it is told moves size bytes per
    // refill_time, whatever its frame size.
    for frame in [1u64, 1500, 9000, 65_536] {
        let mut limiter = bandwidth(16_384, None, 10);
        let (mut now, mut sent) = (0u64, 0u64);
        while now < 1000 * MS {
            match limiter.admit(frame, now) {
                Admission::Go => sent += frame,
                Admission::Wait(wait) => now += wait.as_nanos() as u64,
            }
        }
        // 100 refills of 16384 bytes, plus the full bucket at the start, give or take
        // a frame.
        let expected = 101 * 16_384;
        assert!(
            sent.abs_diff(expected) <= frame.max(2),
            "frame {frame}: sent {sent}, expected about {expected}"
        );
    }
}

#[test]
fn both_buckets_must_have_room_and_a_refusal_charges_neither() {
    let mut limiter = RateLimiterConfig {
        bandwidth: Some(bucket(1000, None, 100)),
        ops: Some(bucket(2, None, 100)),
    }
    .build(0)
    .unwrap();
    assert_eq!(limiter.admit(100, 0), Admission::Go);
    assert_eq!(limiter.admit(100, 0), Admission::Go);
    // The ops bucket is empty: one op takes 50 ms; the bytes bucket keeps its 800.
    assert_eq!(wait_ns(limiter.admit(100, 0)), 50 * MS);
    assert_eq!(limiter.bandwidth().unwrap().budget(), 800);
    assert_eq!(limiter.admit(700, 50 * MS), Admission::Go);
    assert_eq!(limiter.bandwidth().unwrap().budget(), 300);
    // Both short: the longer wait (ops, 50 ms) is the answer, and nothing is charged.
    assert_eq!(wait_ns(limiter.admit(600, 50 * MS)), 50 * MS);
    assert_eq!(limiter.bandwidth().unwrap().budget(), 300);
    // Bytes short only: at 100 ms there are 800; 1000 need 20 ms more.
    assert_eq!(wait_ns(limiter.admit(1000, 100 * MS)), 20 * MS);
    assert_eq!(limiter.ops().unwrap().budget(), 1);
}

#[test]
fn a_clock_that_goes_backwards_waits_instead_of_panicking() {
    let mut limiter = bandwidth(10, None, 10);
    assert_eq!(limiter.admit(10, 100 * MS), Admission::Go);
    assert!(matches!(limiter.admit(10, 0), Admission::Wait(_)));
    assert_eq!(limiter.admit(10, 110 * MS), Admission::Go);
}

#[test]
fn extreme_configurations_do_not_overflow() {
    let mut limiter = bandwidth(u64::MAX, Some(u64::MAX), u64::MAX);
    assert_eq!(limiter.admit(u64::MAX, 0), Admission::Go);
    assert_eq!(limiter.admit(u64::MAX, 0), Admission::Go);
    assert!(matches!(
        limiter.admit(u64::MAX, u64::MAX),
        Admission::Wait(_)
    ));
    let mut tiny = bandwidth(1, None, 1);
    assert_eq!(tiny.admit(u64::MAX, 0), Admission::Go);
    assert!(matches!(tiny.admit(1, u64::MAX / 2), Admission::Wait(_)));
}

#[test]
fn a_charge_after_the_fact_leaves_a_debt_that_holds_the_next_admission() {
    let mut limiter = bandwidth(1000, None, 100);
    // A receive is let start with nothing known, then charged what arrived.
    assert_eq!(limiter.check(0, 0), Admission::Go);
    assert_eq!(
        limiter.bandwidth().unwrap().budget(),
        1000,
        "check charges nothing"
    );
    limiter.charge(1500, 0);
    assert_eq!(limiter.bandwidth().unwrap().budget(), -500);
    // The debt (500) is paid at 10 bytes/ms before even an empty admission goes.
    assert_eq!(wait_ns(limiter.admit(0, 0)), 50 * MS);
    assert_eq!(limiter.admit(0, 50 * MS), Admission::Go);
}
