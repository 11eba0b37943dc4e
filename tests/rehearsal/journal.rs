//! What the load did and saw, with the time of each step, and the verdicts drawn from it: no
//! personal data past the lease after an acknowledged withdrawal, none through a token at all,
//! none while the gates had lost the consent service for longer than the lease.
//!
//! Times are the client's: a read "started" when the request was sent, a write was
//! "acknowledged" when its answer arrived. The lease bound is stated from the acknowledgement, so
//! it is the client-side view of the promise the README makes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A consent write that was acknowledged (retried with one idempotency key until it was).
#[derive(Debug, Clone)]
pub struct Ack {
    pub subject: String,
    pub purpose: &'static str,
    /// `true` for a grant, `false` for a withdrawal.
    pub grant: bool,
    pub record_id: String,
    pub revision: u64,
    /// When the first attempt was sent.
    pub sent: Instant,
    pub acked: Instant,
}

/// A profile write that was acknowledged (`accepted`), and what it stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub subject: String,
    /// The value stored (an attribute's or an answer's); never printed.
    pub value: String,
    /// An attribute (replaced by the next one of its name) or an answer (kept).
    pub attribute: bool,
}

/// What a read got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Personal data of the subject (a profile value, or a tier built from the person's data).
    Data,
    /// An answer without personal data (a denial with its reason, or a contextual tier).
    Nothing(String),
    /// An error status (failing closed).
    Failed(tonic::Code),
}

/// Which read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReadKind {
    /// A reader's gated `GetProfile` (the mailer, marketing e-mail).
    Profile,
    /// `Recommend` (its tier says whether the person's data was used).
    Recommend,
}

impl ReadKind {
    /// The purpose whose withdrawal must stop this read's personal data.
    pub fn purpose(self) -> &'static str {
        match self {
            ReadKind::Profile => crate::load::EMAIL,
            ReadKind::Recommend => crate::load::LIMITED,
        }
    }
}

/// One read.
#[derive(Debug, Clone)]
pub struct Read {
    pub subject: String,
    pub kind: ReadKind,
    /// Through which address: a Service, or a pod by name.
    pub via: String,
    /// Sent with the withdrawal's revision as `at_least_as_fresh`.
    pub token: bool,
    pub started: Instant,
    pub ended: Instant,
    pub outcome: Outcome,
}

/// A fault the test injected, and when.
#[derive(Debug, Clone)]
pub struct Fault {
    pub what: String,
    pub began: Instant,
    pub ended: Instant,
    /// For an outage: how long after `began` no read may return personal data (the lease, plus
    /// how long a replica that lost its database keeps heartbeating).
    pub no_data_after: Option<Duration>,
}

/// Everything recorded, shared by the load's tasks.
#[derive(Default)]
pub struct Inner {
    pub acks: Vec<Ack>,
    pub stored: Vec<Stored>,
    pub reads: Vec<Read>,
    pub faults: Vec<Fault>,
    /// Values a read returned that belong to another subject (must stay empty).
    pub foreign: Vec<String>,
}

/// The shared journal.
#[derive(Clone, Default)]
pub struct Journal(pub Arc<Mutex<Inner>>);

impl Journal {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Acknowledged writes so far (consent and profile), a measure of progress.
    pub fn writes(&self) -> usize {
        let j = self.lock();
        j.acks.len() + j.stored.len()
    }
}

/// A broken promise, in words.
pub type Violation = String;

/// What the reads show.
#[derive(Default)]
pub struct Findings {
    pub violations: Vec<Violation>,
    /// The longest time from an acknowledged withdrawal to the start of a read that still
    /// returned the data it covered, by read kind and by the fault going on when the withdrawal
    /// was acknowledged (or "no fault").
    pub max_staleness: BTreeMap<(ReadKind, String), Duration>,
    /// Reads after a withdrawal whose window closed (started later than its acknowledgement).
    pub after_withdrawal: usize,
}

/// Checks every read against the acknowledged withdrawals, the tokens and the outages.
pub fn judge(inner: &Inner, lease: Duration) -> Findings {
    let mut f = Findings::default();
    // (subject, purpose) → acknowledged writes in order.
    let mut by_target: BTreeMap<(&str, &str), Vec<&Ack>> = BTreeMap::new();
    for a in &inner.acks {
        by_target
            .entry((a.subject.as_str(), a.purpose))
            .or_default()
            .push(a);
    }
    for r in &inner.reads {
        if r.outcome != Outcome::Data {
            continue;
        }
        if r.token {
            f.violations.push(format!(
                "a {:?} read through {} with a withdrawal's revision as its token returned personal data",
                r.kind, r.via
            ));
        }
        let acks = by_target
            .get(&(r.subject.as_str(), r.kind.purpose()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        // The latest withdrawal acknowledged before the read began…
        let Some(w) = acks
            .iter()
            .filter(|a| !a.grant && a.acked <= r.started)
            .max_by_key(|a| a.acked)
        else {
            continue;
        };
        // …with no grant sent since that the read could have seen.
        if acks
            .iter()
            .any(|a| a.grant && a.sent >= w.acked && a.sent < r.ended)
        {
            continue;
        }
        f.after_withdrawal += 1;
        let staleness = r.started - w.acked;
        let context = inner
            .faults
            .iter()
            .find(|fault| w.acked >= fault.began && w.acked <= fault.ended)
            .map_or("no fault".to_owned(), |fault| fault.what.clone());
        let max = f.max_staleness.entry((r.kind, context)).or_default();
        *max = (*max).max(staleness);
        if staleness > lease {
            f.violations.push(format!(
                "a {:?} read through {} returned personal data {:?} after the withdrawal (revision {}) was acknowledged; the lease is {:?}",
                r.kind, r.via, staleness, w.revision, lease
            ));
        }
    }
    for fault in &inner.faults {
        let Some(after) = fault.no_data_after else {
            continue;
        };
        let from = fault.began + after;
        for r in &inner.reads {
            // Judged: reads that began past the bound and were answered before the fault
            // ended. One still in flight when the database or the Service came back may have
            // been decided after that, rightly with data (seen once, a read that began 0.5 ms
            // before PostgreSQL was restored).
            if r.outcome == Outcome::Data && r.started >= from && r.ended <= fault.ended {
                f.violations.push(format!(
                    "a {:?} read through {} returned personal data {:?} into \"{}\" (none may after {:?})",
                    r.kind,
                    r.via,
                    r.started - fault.began,
                    fault.what,
                    after
                ));
            }
        }
    }
    // Failing closed is what a fault may cause; a read refused for its credentials, its
    // permissions or its arguments is a broken path whatever the faults (an mTLS overlay that
    // locked out a caller once passed as "failed closed"). `INTERNAL` is both: tonic reports a
    // stream the peer reset, or a connection that broke mid-answer, as `INTERNAL` (seen once in
    // a rolling restart of profile), but a server's own `INTERNAL` is a bug. So it is a fault's
    // only while a fault is under way.
    let during_a_fault = |r: &Read| {
        inner
            .faults
            .iter()
            .any(|fault| r.started <= fault.ended && r.ended >= fault.began)
    };
    let mut refused: BTreeMap<(ReadKind, &str, String), usize> = BTreeMap::new();
    for r in &inner.reads {
        if let Outcome::Failed(code) = r.outcome
            && !matches!(
                code,
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
                    | tonic::Code::ResourceExhausted
            )
            && !(code == tonic::Code::Internal && during_a_fault(r))
        {
            *refused
                .entry((r.kind, r.via.as_str(), format!("{code:?}")))
                .or_default() += 1;
        }
    }
    for ((kind, via, code), n) in refused {
        f.violations.push(format!(
            "{n} {kind:?} reads through {via} were refused with {code}, which no fault causes"
        ));
    }
    // A kind of read that never returned personal data is a broken path, not a safe one.
    for kind in [ReadKind::Profile, ReadKind::Recommend] {
        if !inner
            .reads
            .iter()
            .any(|r| r.kind == kind && r.outcome == Outcome::Data)
        {
            f.violations.push(format!(
                "no {kind:?} read returned personal data, even with consent given"
            ));
        }
    }
    for value in &inner.foreign {
        f.violations.push(format!(
            "a read returned another subject's data ({} characters)",
            value.len()
        ));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(grant: bool, sent: Instant, acked: Instant) -> Ack {
        Ack {
            subject: "s".into(),
            purpose: crate::load::EMAIL,
            grant,
            record_id: String::new(),
            revision: 1,
            sent,
            acked,
        }
    }

    fn read(started: Instant, outcome: Outcome) -> Read {
        Read {
            subject: "s".into(),
            kind: ReadKind::Profile,
            via: "t".into(),
            token: false,
            started,
            ended: started + Duration::from_millis(1),
            outcome,
        }
    }

    /// The verdicts: data inside the lease is measured, past it is a violation, after a new
    /// grant is allowed, and into an outage past its bound is a violation.
    #[test]
    fn reads_are_judged_against_withdrawals_and_outages() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut inner = Inner {
            acks: vec![
                ack(true, t, t + ms(1)),
                ack(false, t + ms(10), t + ms(20)),
                ack(true, t + ms(3000), t + ms(3010)),
            ],
            ..Default::default()
        };
        inner.reads = vec![
            read(t + ms(5), Outcome::Data),
            read(t + ms(500), Outcome::Data),
            read(t + ms(1500), Outcome::Nothing("WITHDRAWN".into())),
            read(t + ms(3005), Outcome::Data),
            Read {
                kind: ReadKind::Recommend,
                ..read(t + ms(2), Outcome::Data)
            },
        ];
        let f = judge(&inner, ms(1000));
        assert!(f.violations.is_empty(), "{:?}", f.violations);
        assert_eq!(
            f.max_staleness[&(ReadKind::Profile, "no fault".to_owned())],
            ms(480)
        );
        inner.reads.push(read(t + ms(1100), Outcome::Data));
        assert_eq!(judge(&inner, ms(1000)).violations.len(), 1);
        inner.reads.pop();
        inner.faults.push(Fault {
            what: "cut".into(),
            began: t + ms(3004),
            ended: t + ms(9000),
            no_data_after: Some(ms(1)),
        });
        assert_eq!(judge(&inner, ms(1000)).violations.len(), 1);
    }

    /// Failing closed under a fault is judged by the rules above; a refusal no fault causes,
    /// or a kind of read that never returns data, is a violation by itself.
    #[test]
    fn refusals_and_paths_that_never_serve_are_violations() {
        let t = Instant::now();
        let mut inner = Inner {
            reads: vec![
                read(t, Outcome::Data),
                read(t, Outcome::Failed(tonic::Code::Unavailable)),
                Read {
                    kind: ReadKind::Recommend,
                    ..read(t, Outcome::Nothing("CONTEXTUAL".into()))
                },
            ],
            ..Default::default()
        };
        let f = judge(&inner, Duration::from_secs(1));
        assert_eq!(f.violations.len(), 1, "{:?}", f.violations);
        assert!(f.violations[0].contains("no Recommend read"));
        inner.reads[2].outcome = Outcome::Data;
        assert!(judge(&inner, Duration::from_secs(1)).violations.is_empty());
        for _ in 0..3 {
            inner
                .reads
                .push(read(t, Outcome::Failed(tonic::Code::Unauthenticated)));
        }
        let f = judge(&inner, Duration::from_secs(1));
        assert_eq!(f.violations.len(), 1, "{:?}", f.violations);
        assert!(
            f.violations[0]
                .starts_with("3 Profile reads through t were refused with Unauthenticated")
        );
        inner.reads.truncate(3);

        // INTERNAL: a fault's while one is under way (a reset stream), a bug otherwise.
        inner
            .reads
            .push(read(t, Outcome::Failed(tonic::Code::Internal)));
        let f = judge(&inner, Duration::from_secs(1));
        assert_eq!(f.violations.len(), 1, "{:?}", f.violations);
        assert!(f.violations[0].contains("refused with Internal"));
        inner.faults.push(Fault {
            what: "rolling restart of profile".into(),
            began: t,
            ended: t + Duration::from_millis(500),
            no_data_after: None,
        });
        let f = judge(&inner, Duration::from_secs(1));
        assert!(f.violations.is_empty(), "{:?}", f.violations);
    }
}
