//! Unlearning: what the model learned from a subject goes when its consent changes (the gate's
//! change stream), when its training lease lapses and the re-check does not allow it again (the
//! sweep), or when an operator asks (Unlearn). Learning itself happens in [`super::recommend`],
//! under the training decision that [`training_check`] asks for.

use super::{Recommender, TRAINING};
use crate::model::{CoOccurrence, Lapsed};
use crate::observe::Unlearning;
use consentgate_gate::subject_of_key;
use consentgate_proto::common::v1::{RequestContext, SubjectRef};
use consentgate_proto::consent::v1::{CheckRequest, Verdict};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// The longest the training sweep waits between looks unless set otherwise
/// ([`Recommender::set_training_sweep`]): the gate's default heartbeat lease. The sweep also
/// wakes when the earliest lease it knows of ends, so this bounds only leases taken while it
/// waits.
pub const TRAINING_SWEEP: Duration = Duration::from_secs(1);
/// The shortest wait between sweeps, so that a lease that keeps lapsing cannot make it spin.
const SWEEP_MIN_WAIT: Duration = Duration::from_millis(10);
/// The most re-checks in one `BatchCheck` (the consent service's limit).
const SWEEP_BATCH: usize = 1000;
/// The most batches one sweep sends: a backlog larger than this waits for the next sweep rather
/// than keeping one sweep busy for ever.
const SWEEP_BATCHES: usize = 100;
/// The data categories the model learns from, as the training check names them.
const TRAINING_CATEGORIES: [&str; 2] = [
    "user.behavior.browsing_history",
    "user.behavior.purchase_history",
];

/// Counters of the training sweep (no subject ids).
#[derive(Default)]
pub(super) struct SweepCounters {
    renewed: AtomicU64,
    unlearned: AtomicU64,
}

/// What training sweeps have done, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepTotals {
    /// Lapsed subjects the consent service allowed again: held under a new lease.
    pub renewed: u64,
    /// Lapsed subjects unlearned: denied, or no decision could be had (fail closed).
    pub unlearned: u64,
}

/// The training check for `subject`: whether the model may learn from (and keep) its history.
pub(super) fn training_check(
    subject: SubjectRef,
    context: Option<RequestContext>,
    at_least_as_fresh: String,
) -> CheckRequest {
    CheckRequest {
        subject: Some(subject),
        purpose: TRAINING.into(),
        data_categories: TRAINING_CATEGORIES
            .iter()
            .map(|c| (*c).to_owned())
            .collect(),
        context,
        at_least_as_fresh,
        ..Default::default()
    }
}

impl Recommender {
    /// Sets the longest the training sweep waits between looks (default [`TRAINING_SWEEP`]);
    /// applies from now on, also to a sweep that is waiting. An expired training consent leaves
    /// the model at most about this long after its expiry (usually at once: the sweep wakes
    /// when the earliest lease ends).
    pub fn set_training_sweep(&self, every: Duration) {
        self.sweep_every
            .send_replace(every.max(Duration::from_millis(10)));
    }

    /// What training sweeps have done so far.
    pub fn sweep_totals(&self) -> SweepTotals {
        SweepTotals {
            renewed: self.sweeps.renewed.load(Ordering::Relaxed),
            unlearned: self.sweeps.unlearned.load(Ordering::Relaxed),
        }
    }

    /// Starts the training sweep: when the earliest training lease ends (and at least every
    /// period), the subjects whose lease has lapsed are asked about again
    /// ([`Recommender::sweep_lapsed_training`]). Runs until the recommender is dropped.
    ///
    /// Why a sweep: a consent that reaches its `expires_at` produces no change event, so
    /// [`Recommender::follow_changes`] never hears of it, and the model would keep the subject's
    /// contribution for ever. Why not on the request path: a Recommend already holds the
    /// decision it learns under (its `valid_until` becomes the lease at no cost), but checking
    /// every learned subject's consent per request would add a call to the consent service to
    /// the hot path; lapsed leases are few at any moment and go in batches of up to 1,000.
    pub fn sweep_training(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let mut every = self.sweep_every.subscribe();
        tokio::spawn(async move {
            loop {
                let period = *every.borrow_and_update();
                let Some(wait) = me.upgrade().map(|me| me.next_sweep_in(period)) else {
                    return;
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    changed = every.changed() => match changed {
                        // A new period: wait that long from now.
                        Ok(()) => continue,
                        // The recommender is gone.
                        Err(_) => return,
                    },
                }
                let Some(me) = me.upgrade() else {
                    return;
                };
                me.sweep_lapsed_training().await;
            }
        });
    }

    /// How long the sweep may wait: until just past the earliest lease's end, at most `period`.
    fn next_sweep_in(&self, period: Duration) -> Duration {
        let next = self
            .model
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_lapse();
        next.map_or(period, |until| {
            until
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .saturating_add(Duration::from_millis(1))
                .min(period)
        })
        .max(SWEEP_MIN_WAIT)
    }

    /// Asks the consent service again about every learned subject whose training lease has
    /// lapsed, in batches through the gate: still allowed → held until the new `valid_until`;
    /// denied, or no decision could be had → unlearned (fail closed), exactly as at a
    /// withdrawal. The re-check is the service's own (no `on_behalf_of`): the model is this
    /// service's, whoever's request first taught it the subject. Returns what it did.
    pub async fn sweep_lapsed_training(&self) -> SweepTotals {
        let mut done = SweepTotals::default();
        for _ in 0..SWEEP_BATCHES {
            let lapsed = self
                .model
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .lapsed(SystemTime::now(), SWEEP_BATCH);
            if lapsed.is_empty() {
                break;
            }
            let full = lapsed.len() == SWEEP_BATCH;
            // Each lapsed subject with what to do: `Some(until)` renew, `None` unlearn. A key
            // that names no subject cannot be asked about, so it is unlearned (fail closed).
            let mut askable = Vec::with_capacity(lapsed.len());
            let mut outcome: Vec<(Lapsed, Option<SystemTime>)> = Vec::new();
            for l in lapsed {
                match subject_of_key(&l.subject) {
                    Some(s) => askable.push((l, s)),
                    None => outcome.push((l, None)),
                }
            }
            if !askable.is_empty() {
                let checks = askable
                    .iter()
                    .map(|(l, s)| training_check(s.clone(), l.lease.context.clone(), String::new()))
                    .collect();
                match self.gate.check_many(checks, None).await {
                    Ok(decisions) => {
                        let now = SystemTime::now();
                        for ((l, _), d) in askable.into_iter().zip(&decisions) {
                            // Never hold a subject on a decision that no longer holds itself.
                            let allowed = d.verdict() == Verdict::Allow && d.holds_at(now);
                            outcome.push((l, allowed.then(|| d.valid_until())));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(
                            error = %e,
                            subjects = askable.len(),
                            "no training decision for lapsed subjects; unlearning them (fail closed)"
                        );
                        outcome.extend(askable.into_iter().map(|(l, _)| (l, None)));
                    }
                }
            }
            let mut model = self.model.lock().unwrap_or_else(|e| e.into_inner());
            for (l, renew) in &outcome {
                match renew {
                    Some(until) if model.renew(l, *until) => done.renewed += 1,
                    None if model.unlearn_lapsed(l) => done.unlearned += 1,
                    // Re-learned or unlearned meanwhile: it rests on something newer.
                    _ => {}
                }
            }
            drop(model);
            if !full {
                break;
            }
        }
        self.sweeps
            .renewed
            .fetch_add(done.renewed, Ordering::Relaxed);
        self.sweeps
            .unlearned
            .fetch_add(done.unlearned, Ordering::Relaxed);
        self.metrics
            .unlearned(Unlearning::LapsedLease, done.unlearned);
        if done.unlearned > 0 {
            tracing::info!(
                renewed = done.renewed,
                unlearned = done.unlearned,
                "training sweep: lapsed training consents unlearned"
            );
        }
        done
    }

    /// Drops what was derived from a subject whenever its consent changes (a later profiled
    /// request re-learns if the subject still consents). Runs for as long as the gate lives.
    pub fn follow_changes(self: &Arc<Self>) {
        let mut changes = self.gate.subscribe();
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let notice = changes.recv().await;
                let Some(me) = me.upgrade() else {
                    return;
                };
                match notice {
                    Ok(n) => {
                        if let Some(key) = n.subject_key
                            && me.forget_older_than(&key, n.revision)
                        {
                            me.metrics.unlearned(Unlearning::ConsentChange, 1);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Changes were missed: nothing derived can be trusted any more.
                        tracing::warn!(
                            "missed consent changes; the model is dropped and re-learned"
                        );
                        *me.model.lock().unwrap_or_else(|e| e.into_inner()) = CoOccurrence::new();
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Forgets what was derived from the subject under a consent revision older than `revision`
    /// (a change event). What was learned at or after it already reflects the change.
    pub fn forget_older_than(&self, key: &str, revision: u64) -> bool {
        let mut model = self.model.lock().unwrap_or_else(|e| e.into_inner());
        match model.learned_revision(key) {
            Some(learned) if learned < revision => model.unlearn(key),
            _ => false,
        }
    }

    /// Forgets everything derived from the subject key (an erasure's request); whether there
    /// was anything.
    pub fn forget(&self, key: &str) -> bool {
        let forgot = self
            .model
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unlearn(key);
        if forgot {
            self.metrics.unlearned(Unlearning::Request, 1);
        }
        forgot
    }

    /// How many subjects the model has learned from.
    pub fn learned_subjects(&self) -> usize {
        self.model
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .subjects()
    }
}
