//! The per-device rate limit on mutations (a token bucket per device).

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota};

use crate::store::DeviceIdentity;

/// Mutations each device may push per second, with a burst allowance.
pub struct DeviceRateLimit {
    limiter: DefaultKeyedRateLimiter<DeviceIdentity>,
    burst: NonZeroU32,
}

impl DeviceRateLimit {
    /// `per_sec` mutations per second sustained, `burst` at once.
    pub fn new(per_sec: u32, burst: u32) -> DeviceRateLimit {
        let per_sec = NonZeroU32::new(per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        DeviceRateLimit {
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst)),
            burst,
        }
    }

    /// Takes `mutations` from the device's bucket; `false` if it has not
    /// enough (the batch must be refused whole).
    pub fn allow(&self, device: &DeviceIdentity, mutations: usize) -> bool {
        let Some(n) = u32::try_from(mutations).ok().and_then(NonZeroU32::new) else {
            return true;
        };
        if n > self.burst {
            return false;
        }
        matches!(self.limiter.check_key_n(device, n), Ok(Ok(())))
    }

    /// Forgets buckets that are full again, so idle devices cost no memory.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
    }
}
