//! Failing fast while the consent service is unreachable. Without it, every read that misses the
//! cache while the consent service hangs waits its full deadline (2 s) before failing closed:
//! correct, but every caller of the profile service stalls. Once a call finds the service
//! unreachable, the breaker opens: further calls fail closed at once, and one call every
//! `probe_every` is let through to find out whether it is back. A successful call closes it. A
//! probe abandoned before it ends (its caller went away) frees the next one, one interval later.
//!
//! Only unreachability opens it (a deadline passed, the transport failed, `UNAVAILABLE`): a
//! refused question or credentials is an answer, not an outage.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Whether a call may go to the consent service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The service answered lately: go ahead.
    Closed,
    /// The breaker is open and this call is the probe.
    Probe,
    /// The breaker is open and a probe is due in this long (or under way): fail closed now.
    Rejected(Duration),
}

/// The breaker. Lock-free: the hot path (closed) is one atomic load.
#[derive(Debug)]
pub(crate) struct Breaker {
    probe_every: Duration,
    epoch: Instant,
    /// 0: closed. Otherwise µs since `epoch` at which the next probe may go.
    next_probe_micros: AtomicU64,
    /// A probe is under way (only one at a time).
    probing: AtomicBool,
}

impl Breaker {
    pub(crate) fn new(probe_every: Duration) -> Breaker {
        Breaker {
            probe_every,
            epoch: Instant::now(),
            next_probe_micros: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    fn now_micros(&self) -> u64 {
        // Never 0, which means closed.
        u64::try_from(self.epoch.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Whether a call may go now.
    pub(crate) fn admit(&self) -> Admission {
        let next = self.next_probe_micros.load(Ordering::Acquire);
        if next == 0 {
            return Admission::Closed;
        }
        let now = self.now_micros();
        if now >= next
            && self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Admission::Probe;
        }
        Admission::Rejected(Duration::from_micros(next.saturating_sub(now)))
    }

    /// The service answered: close.
    pub(crate) fn succeeded(&self) {
        self.next_probe_micros.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }

    /// The service could not be reached (by the probe, when `probe`): open, or stay open, until
    /// the next probe is due. Returns whether this opened a closed breaker. A late failure of a
    /// call admitted before the breaker opened leaves a probe under way alone.
    pub(crate) fn unreachable(&self, probe: bool) -> bool {
        let next =
            self.now_micros() + u64::try_from(self.probe_every.as_micros()).unwrap_or(u64::MAX / 2);
        let was = self.next_probe_micros.swap(next, Ordering::AcqRel);
        if probe {
            self.probing.store(false, Ordering::Release);
        }
        was == 0
    }

    /// The probe was dropped before it ended: no news, so the next probe goes one interval on.
    pub(crate) fn abandoned(&self) {
        self.unreachable(true);
    }

    /// Whether it is open.
    pub(crate) fn is_open(&self) -> bool {
        self.next_probe_micros.load(Ordering::Acquire) != 0
    }

    /// How often an open breaker lets a probe through.
    pub(crate) fn probe_every(&self) -> Duration {
        self.probe_every
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_breaker_rejects_until_its_probe_is_due() {
        let breaker = Breaker::new(Duration::from_secs(3600));
        assert_eq!(breaker.admit(), Admission::Closed);
        assert!(breaker.unreachable(false), "the first failure opens it");
        assert!(!breaker.unreachable(false), "a second one keeps it open");
        match breaker.admit() {
            Admission::Rejected(wait) => assert!(wait > Duration::from_secs(3000), "{wait:?}"),
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert!(breaker.is_open());
    }

    #[test]
    fn one_probe_at_a_time_and_a_success_closes() {
        // Probes are due at once: no waiting in the test.
        let breaker = Breaker::new(Duration::ZERO);
        breaker.unreachable(false);
        assert_eq!(breaker.admit(), Admission::Probe);
        assert!(
            matches!(breaker.admit(), Admission::Rejected(_)),
            "a second caller while the probe is under way"
        );
        breaker.unreachable(false);
        assert!(
            matches!(breaker.admit(), Admission::Rejected(_)),
            "a late failure of another call does not free a second probe"
        );
        breaker.unreachable(true);
        assert_eq!(
            breaker.admit(),
            Admission::Probe,
            "the failed probe frees the next"
        );
        breaker.abandoned();
        assert_eq!(
            breaker.admit(),
            Admission::Probe,
            "an abandoned probe frees the next"
        );
        breaker.succeeded();
        assert_eq!(breaker.admit(), Admission::Closed);
        assert!(!breaker.is_open());
    }
}
