//! Time as the service sees it. Everything that compares against "now" takes
//! a [`Clock`], so tests can move time forward instead of sleeping.

use chrono::{DateTime, Duration, TimeZone, Utc};
use std::sync::{Arc, Mutex};

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// A clock shared between components.
pub type SharedClock = Arc<dyn Clock>;

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that follows the wall clock shifted by an offset the owner can
/// change, or stands still at a fixed time. Used by tests and by
/// `tokenvault retention --now`.
#[derive(Debug, Default)]
pub struct ManualClock {
    state: Mutex<ManualState>,
}

#[derive(Debug, Default, Clone, Copy)]
struct ManualState {
    offset: Duration,
    frozen_at: Option<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock that reads the wall clock until it is moved.
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock that stands still at `at` until it is moved.
    pub fn frozen(at: DateTime<Utc>) -> Self {
        let clock = Self::default();
        clock.lock().frozen_at = Some(at);
        clock
    }

    /// Moves the clock forward (or backward, for a negative duration).
    pub fn advance(&self, by: Duration) {
        let mut state = self.lock();
        match state.frozen_at.as_mut() {
            Some(at) => *at += by,
            None => state.offset += by,
        }
    }

    /// Sets the clock to `at`; a frozen clock stays frozen there, a running one keeps running from there.
    pub fn set(&self, at: DateTime<Utc>) {
        let mut state = self.lock();
        match state.frozen_at.as_mut() {
            Some(frozen) => *frozen = at,
            None => state.offset = at - Utc::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ManualState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        let state = *self.lock();
        state.frozen_at.unwrap_or_else(|| Utc::now() + state.offset)
    }
}

/// Milliseconds since the Unix epoch, the portable form timestamps take in the database.
pub fn to_millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// The inverse of [`to_millis`]; out-of-range values clamp to the epoch.
pub fn from_millis(millis: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(millis)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// A protobuf timestamp for `at`.
pub fn to_proto(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// The time a protobuf timestamp names, if it is in range.
pub fn from_proto(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(ts.nanos).ok()?;
    Utc.timestamp_opt(ts.seconds, nanos).single()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_clock_moves_only_when_told() {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let clock = ManualClock::frozen(start);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::days(30));
        assert_eq!(clock.now(), start + Duration::days(30));
    }

    #[test]
    fn running_clock_keeps_its_offset() {
        let clock = ManualClock::new();
        clock.advance(Duration::days(1));
        let ahead = clock.now() - Utc::now();
        assert!(ahead > Duration::hours(23) && ahead <= Duration::days(1));
    }

    #[test]
    fn millis_and_proto_round_trip() {
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 5, 6, 7).unwrap() + Duration::milliseconds(891);
        assert_eq!(from_millis(to_millis(at)), at);
        assert_eq!(from_proto(&to_proto(at)), Some(at));
    }
}
