//! Exponential backoff with jitter, and the randomness it draws on.
//!
//! Reconnects wait 0.5 s, 1 s, 2 s, ... up to 30 s; retries of a mutation
//! wait 1 s, 2 s, 4 s, ... up to 60 s. Each wait gets up to a fifth more,
//! at random, so that devices cut off together do not come back in
//! lockstep.

use std::time::Duration;

/// Where the engine's randomness comes from (injected, so tests are
/// deterministic).
pub trait Jitter: Send {
    /// A number in `[0, 1)`.
    fn unit(&mut self) -> f64;
}

/// A small seeded generator (SplitMix64): enough for spreading waits.
#[derive(Debug, Clone)]
pub struct SeededJitter(u64);

impl SeededJitter {
    /// A generator that yields the same numbers for the same seed.
    pub fn new(seed: u64) -> SeededJitter {
        SeededJitter(seed)
    }

    /// A generator seeded from the wall clock and the process.
    pub fn from_entropy() -> SeededJitter {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // Truncation is fine: any bits make a seed.
        #[allow(clippy::cast_possible_truncation)]
        let seed = (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32);
        SeededJitter(seed)
    }
}

impl Jitter for SeededJitter {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // The top 53 bits as a fraction in [0, 1).
        #[allow(clippy::cast_precision_loss)]
        let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
        unit
    }
}

/// An exponential backoff schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait.
    pub base: Duration,
    /// The longest wait before jitter.
    pub cap: Duration,
}

/// The most jitter adds to a wait: this fraction of it.
pub const JITTER_FRACTION: f64 = 0.2;

impl Backoff {
    /// Reconnecting: 0.5 s doubling to 30 s.
    pub const RECONNECT: Backoff = Backoff {
        base: Duration::from_millis(500),
        cap: Duration::from_secs(30),
    };

    /// Retrying a mutation: 1 s doubling to 60 s.
    pub const RETRY: Backoff = Backoff {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(60),
    };

    /// The wait before attempt `n + 1` after `n` failures in a row (`n`
    /// from 0), without jitter.
    pub fn nominal(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before the next attempt after `n` failures, with jitter.
    pub fn delay(&self, n: u32, jitter: &mut dyn Jitter) -> Duration {
        let nominal = self.nominal(n);
        nominal + nominal.mul_f64(JITTER_FRACTION * jitter.unit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap() {
        let b = Backoff::RECONNECT;
        let secs: Vec<f64> = (0..9).map(|n| b.nominal(n).as_secs_f64()).collect();
        assert_eq!(secs, vec![0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]);
        assert_eq!(Backoff::RETRY.nominal(100), Duration::from_secs(60));
    }

    #[test]
    fn jitter_adds_at_most_a_fifth() {
        let mut j = SeededJitter::new(7);
        for n in 0..20 {
            let d = Backoff::RETRY.delay(n, &mut j);
            let nominal = Backoff::RETRY.nominal(n);
            assert!(d >= nominal && d <= nominal.mul_f64(1.0 + JITTER_FRACTION));
        }
        let a: Vec<f64> = (0..5).map(|_| SeededJitter::new(1).unit()).collect();
        assert!(
            a.iter().all(|x| *x == a[0]),
            "the same seed, the same numbers"
        );
    }
}
