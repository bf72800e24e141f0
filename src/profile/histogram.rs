//! A log-linear histogram of nanosecond durations: exact below 32 ns, then 16 buckets per
//! power of two (about 6% wide), so a median costs nothing to keep.

const EXACT: u64 = 32;
const SUB_BUCKETS: usize = 16;
const SUB_BITS: u32 = 4;
/// 32 exact buckets, then 16 for each power of two from 2^5 to 2^63.
const BUCKETS: usize = EXACT as usize + (64 - 5) * SUB_BUCKETS;

/// Counts per bucket.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
        }
    }
}

fn bucket_of(value: u64) -> usize {
    if value < EXACT {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let mantissa = ((value >> (exponent - SUB_BITS)) as usize) & (SUB_BUCKETS - 1);
    EXACT as usize + (exponent as usize - 5) * SUB_BUCKETS + mantissa
}

/// The middle of a bucket's range.
fn bucket_middle(index: usize) -> u64 {
    if index < EXACT as usize {
        return index as u64;
    }
    let exponent = (index - EXACT as usize) / SUB_BUCKETS + 5;
    let mantissa = ((index - EXACT as usize) % SUB_BUCKETS) as u64;
    let width = 1u64 << (exponent - SUB_BITS as usize);
    (1u64 << exponent) + mantissa * width + width / 2
}

impl Histogram {
    /// Counts one value.
    pub fn record(&mut self, value: u64) {
        self.counts[bucket_of(value)] += 1;
        self.total += 1;
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
    }

    /// Values counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The value below which a fraction `q` of the counts lie (bucket middle).
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((self.total as f64 * q).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        self.counts.iter().enumerate().find_map(|(index, count)| {
            seen += count;
            (seen >= rank).then(|| bucket_middle(index))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for value in (0..100_000u64).chain([u64::MAX / 2, u64::MAX]) {
            let bucket = bucket_of(value);
            assert!(bucket >= last && bucket < BUCKETS, "{value}");
            last = bucket;
            let middle = bucket_middle(bucket) as f64;
            assert!(
                (middle - value as f64).abs() <= value as f64 / 16.0 + 1.0,
                "{value} -> {middle}"
            );
        }
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let mut histogram = Histogram::default();
        assert_eq!(histogram.quantile(0.5), None);
        for value in 1..=1000u64 {
            histogram.record(value);
        }
        let median = histogram.quantile(0.5).unwrap();
        assert!((470..=530).contains(&median), "{median}");
        assert_eq!(histogram.total(), 1000);
    }
}
