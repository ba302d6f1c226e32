//! A lock-free log-linear histogram of microsecond values (about 3 % precision), shared by
//! thousands of client tasks without a lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// Linear sub-buckets per power of two.
const SUB: u64 = 32;
const SUB_BITS: u32 = 5;
/// Values up to 2^41 µs (25 days) are bucketed; larger ones land in the last bucket.
const MAX_EXP: u32 = 41;
const BUCKETS: usize = (SUB + (MAX_EXP - SUB_BITS + 1) as u64 * SUB) as usize;

pub struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

fn index(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let exp = 63 - value.leading_zeros(); // >= SUB_BITS
    let sub = (value >> (exp - SUB_BITS)) - SUB; // 0..SUB
    let i = SUB + (exp - SUB_BITS) as u64 * SUB + sub;
    (i as usize).min(BUCKETS - 1)
}

/// The largest value that maps to bucket `i` (percentiles report this upper edge).
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let exp = (i - SUB) / SUB + SUB_BITS as u64;
    let sub = (i - SUB) % SUB;
    ((SUB + sub + 1) << (exp - SUB_BITS as u64)) - 1
}

impl Histogram {
    pub fn record(&self, value: u64) {
        self.buckets[index(value)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> Option<u64> {
        (self.count() > 0).then(|| self.max.load(Ordering::Relaxed))
    }

    /// The `q` quantile (0.0..=1.0), as the upper edge of its bucket, capped at the exact maximum.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                return Some(upper(i).min(self.max.load(Ordering::Relaxed)));
            }
        }
        self.max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut last = 0;
        for v in [0u64, 1, 31, 32, 33, 63, 64, 100, 1_000, 65_535, 1_000_000, 3_000_000_000] {
            let i = index(v);
            assert!(i >= last, "index not monotonic at {v}");
            last = i;
            assert!(upper(i) >= v, "upper edge {} below {v}", upper(i));
            assert!(
                upper(i) as f64 <= v as f64 * 1.07 + 1.0,
                "bucket of {v} too wide: {}",
                upper(i)
            );
        }
    }

    #[test]
    fn quantiles() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=1000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5).unwrap();
        let p99 = h.quantile(0.99).unwrap();
        assert!((480..=530).contains(&p50), "p50 {p50}");
        assert!((980..=1000).contains(&p99), "p99 {p99}");
        assert_eq!(h.quantile(1.0), Some(1000));
        assert_eq!(h.max(), Some(1000));
        assert_eq!(h.count(), 1000);
    }
}
