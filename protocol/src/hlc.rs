//! The hybrid logical clock.
//!
//! Every write is stamped with an [`Hlc`]: wall-clock milliseconds, a counter
//! for events within the same millisecond (or while the wall clock is behind
//! the last stamp), and the device id to break exact ties. Stamps are totally
//! ordered by `(millis, counter, node)`, and a device's stamps only ever grow,
//! even when its wall clock jumps backwards.
//!
//! On the wire a stamp is the compact string `"<millis>-<counter>-<node>"`,
//! e.g. `"1764089696123-0-phone"`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, IdError};

/// One hybrid-logical-clock reading.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Hlc {
    /// Physical time, milliseconds since the Unix epoch.
    pub millis: u64,
    /// Logical counter within `millis`.
    pub counter: u32,
    /// The device that made the reading; breaks ties.
    pub node: DeviceId,
}

/// Why a clock string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HlcParseError {
    /// Not three `-`-separated parts.
    #[error("a clock reading is \"<millis>-<counter>-<node>\", got {0:?}")]
    Shape(String),
    /// A bad node id.
    #[error(transparent)]
    Node(#[from] IdError),
}

impl Hlc {
    /// A reading with the given parts.
    pub fn new(millis: u64, counter: u32, node: DeviceId) -> Hlc {
        Hlc {
            millis,
            counter,
            node,
        }
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.millis, self.counter, self.node)
    }
}

impl FromStr for Hlc {
    type Err = HlcParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let shape = || HlcParseError::Shape(s.chars().take(64).collect());
        let mut parts = s.splitn(3, '-');
        let millis = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(shape)?;
        let counter = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(shape)?;
        let node = parts.next().ok_or_else(shape)?;
        Ok(Hlc {
            millis,
            counter,
            node: DeviceId::new(node)?,
        })
    }
}

impl TryFrom<String> for Hlc {
    type Error = HlcParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Hlc> for String {
    fn from(h: Hlc) -> String {
        h.to_string()
    }
}

/// A device's clock. It never hands out the same reading twice and never goes
/// backwards; the wall clock is passed in, so tests can drive it.
#[derive(Debug, Clone)]
pub struct HybridClock {
    node: DeviceId,
    millis: u64,
    counter: u32,
}

impl HybridClock {
    /// A clock for `node` that has not ticked yet.
    pub fn new(node: DeviceId) -> HybridClock {
        HybridClock {
            node,
            millis: 0,
            counter: 0,
        }
    }

    /// A clock that continues after `last`, a reading persisted before a
    /// restart, so stamps stay monotonic across process lifetimes.
    pub fn resume(node: DeviceId, last: Option<&Hlc>) -> HybridClock {
        let mut clock = HybridClock::new(node);
        if let Some(last) = last {
            clock.millis = last.millis;
            clock.counter = last.counter;
        }
        clock
    }

    /// The device this clock belongs to.
    pub fn node(&self) -> &DeviceId {
        &self.node
    }

    /// The last reading handed out (or observed).
    pub fn last(&self) -> Hlc {
        Hlc::new(self.millis, self.counter, self.node.clone())
    }

    /// A new reading, later than every reading before it. `wall_millis` is the
    /// current wall-clock time; if it is behind the last reading (the clock
    /// was set back), the counter advances instead.
    pub fn tick(&mut self, wall_millis: u64) -> Hlc {
        if wall_millis > self.millis {
            self.millis = wall_millis;
            self.counter = 0;
        } else {
            self.advance_counter();
        }
        self.last()
    }

    /// Takes a reading seen from another device into account, so that this
    /// device's next stamp is later than it (causality across devices).
    pub fn observe(&mut self, remote: &Hlc, wall_millis: u64) {
        let max = self.millis.max(remote.millis).max(wall_millis);
        if max == self.millis && max == remote.millis {
            self.counter = self.counter.max(remote.counter);
        } else if max == remote.millis {
            self.millis = remote.millis;
            self.counter = remote.counter;
        } else if max != self.millis {
            self.millis = max;
            self.counter = 0;
        }
    }

    fn advance_counter(&mut self) {
        match self.counter.checked_add(1) {
            Some(c) => self.counter = c,
            None => {
                // Four billion writes within one millisecond: borrow the
                // next millisecond rather than wrap.
                self.millis += 1;
                self.counter = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    #[test]
    fn ticks_follow_the_wall_clock() {
        let mut c = HybridClock::new(dev("a"));
        assert_eq!(c.tick(100), Hlc::new(100, 0, dev("a")));
        assert_eq!(c.tick(100), Hlc::new(100, 1, dev("a")));
        assert_eq!(c.tick(105), Hlc::new(105, 0, dev("a")));
    }

    #[test]
    fn stays_monotonic_when_the_wall_clock_jumps_back() {
        let mut c = HybridClock::new(dev("a"));
        let t1 = c.tick(10_000);
        let t2 = c.tick(5_000);
        let t3 = c.tick(5_001);
        assert!(t1 < t2 && t2 < t3);
        assert_eq!(t3.millis, 10_000);
    }

    #[test]
    fn observing_a_later_clock_moves_past_it() {
        let mut c = HybridClock::new(dev("a"));
        c.tick(100);
        let remote = Hlc::new(500, 7, dev("b"));
        c.observe(&remote, 200);
        assert!(c.tick(200) > remote);
    }

    #[test]
    fn resumes_after_a_restart() {
        let last = Hlc::new(900, 3, dev("a"));
        let mut c = HybridClock::resume(dev("a"), Some(&last));
        assert!(c.tick(100) > last);
    }

    #[test]
    fn ties_are_broken_by_node() {
        assert!(Hlc::new(1, 0, dev("a")) < Hlc::new(1, 0, dev("b")));
    }

    #[test]
    fn serializes_compactly() {
        let h = Hlc::new(1764089696123, 2, dev("0193-phone"));
        let text = serde_json::to_string(&h).unwrap();
        assert_eq!(text, "\"1764089696123-2-0193-phone\"");
        assert_eq!(serde_json::from_str::<Hlc>(&text).unwrap(), h);
        assert!("12-x-a".parse::<Hlc>().is_err());
        assert!("12-1".parse::<Hlc>().is_err());
        assert!("12-1-a b".parse::<Hlc>().is_err());
    }

    #[test]
    fn counter_overflow_borrows_a_millisecond() {
        let mut c = HybridClock::resume(dev("a"), Some(&Hlc::new(10, u32::MAX, dev("a"))));
        let next = c.tick(10);
        assert_eq!((next.millis, next.counter), (11, 0));
    }
}
