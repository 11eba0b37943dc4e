//! Keeps the gate's view of consent changes: a `WatchChanges` subscription that raises
//! per-subject floors (cached decisions older than a floor are stale) and renews a heartbeat
//! lease (cached *allows* are served only while the lease runs).

use crate::observe::GateMetrics;
use consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient;
use consentgate_proto::consent::v1::{WatchChangesRequest, watch_changes_response};
use metrics::Counter;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::clearance::subject_key;

/// A consent change as the stream reported it, for services that drop derived data on change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeNotice {
    /// The subject's key (`s:<id>` or `d:<id>`), when the change names one.
    pub subject_key: Option<String>,
    /// The change's revision.
    pub revision: u64,
    /// `grant`, `refuse`, `withdraw`, `signal`, `link`, `erase` or `restrict`.
    pub kind: String,
}

/// What the change stream has told the gate so far.
pub(crate) struct Freshness {
    /// Every change applied, for subscribers (see [`crate::Gate::subscribe`]).
    pub(crate) notices: tokio::sync::broadcast::Sender<ChangeNotice>,
    /// The latest change revision seen per person (`s:<id>`): a cached decision about that person
    /// computed from an older revision is stale.
    floors: moka::sync::Cache<String, u64>,
    /// Every change up to this revision has been applied to the floors.
    high_water: AtomicU64,
    /// The revision of the latest change to a *device*. A device's consent can change a linked
    /// person's decisions (GPC on a linked device), and the gate does not know the links, so such a
    /// change makes every cached decision issued before it stale.
    last_device_change: AtomicU64,
    /// The lease runs until this many nanoseconds after `epoch`.
    live_until: AtomicU64,
    /// The last heartbeat arrived this many nanoseconds after `epoch` (0: none yet).
    last_heartbeat: AtomicU64,
    epoch: Instant,
    lease: Duration,
    /// Counts each lapse of the lease once: when the stream breaks, or, for a lease that ran out
    /// silently and came back before the stream was declared broken, at its renewal.
    lapses: Counter,
    /// Whether the lease ever ran (a gate that never had a live stream has not lapsed).
    ever_live: AtomicBool,
    /// Whether the current lapse was already counted.
    lapse_counted: AtomicBool,
    /// The consent database no longer has revisions this gate applied (it was restored to an
    /// earlier point): the floors and the high water describe a history the database lost, and
    /// its new changes reuse those revisions. The lease never runs again in this process.
    diverged: AtomicBool,
}

impl Freshness {
    pub(crate) fn new(lease: Duration, capacity: u64, lapses: Counter) -> Self {
        Freshness {
            notices: tokio::sync::broadcast::channel(4096).0,
            floors: moka::sync::Cache::new(capacity.max(1024)),
            high_water: AtomicU64::new(0),
            last_device_change: AtomicU64::new(0),
            live_until: AtomicU64::new(0),
            last_heartbeat: AtomicU64::new(0),
            epoch: Instant::now(),
            lease,
            lapses,
            ever_live: AtomicBool::new(false),
            lapse_counted: AtomicBool::new(false),
            diverged: AtomicBool::new(false),
        }
    }

    /// How long ago the last heartbeat arrived (`None`: never).
    pub(crate) fn heartbeat_age(&self) -> Option<Duration> {
        match self.last_heartbeat.load(Ordering::Acquire) {
            0 => None,
            at => Some(Duration::from_nanos(self.now_nanos().saturating_sub(at))),
        }
    }

    fn now_nanos(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the stream is live and caught up: a heartbeat arrived within the lease (and the
    /// database has not gone back behind what the gate applied).
    pub(crate) fn live(&self) -> bool {
        !self.diverged() && self.now_nanos() < self.live_until.load(Ordering::Acquire)
    }

    /// Whether the consent database went back behind what this gate applied (see `diverged`).
    pub(crate) fn diverged(&self) -> bool {
        self.diverged.load(Ordering::Acquire)
    }

    fn renew(&self) {
        if self.ever_live.load(Ordering::Acquire)
            && !self.live()
            && !self.lapse_counted.load(Ordering::Acquire)
        {
            // It ran out between two heartbeats, unnoticed by the stream: a lapse all the same.
            self.lapses.increment(1);
        }
        self.lapse_counted.store(false, Ordering::Release);
        self.ever_live.store(true, Ordering::Release);
        let now = self.now_nanos();
        self.last_heartbeat.store(now.max(1), Ordering::Release);
        let until = now + u64::try_from(self.lease.as_nanos()).unwrap_or(u64::MAX);
        self.live_until.store(until, Ordering::Release);
    }

    /// Ends the lease at once (the stream broke).
    pub(crate) fn lapse(&self) {
        self.live_until.store(0, Ordering::Release);
        if self.ever_live.load(Ordering::Acquire)
            && !self.lapse_counted.swap(true, Ordering::AcqRel)
        {
            self.lapses.increment(1);
        }
    }

    pub(crate) fn high_water(&self) -> u64 {
        self.high_water.load(Ordering::Acquire)
    }

    pub(crate) fn last_device_change(&self) -> u64 {
        self.last_device_change.load(Ordering::Acquire)
    }

    pub(crate) fn floor(&self, subject_key: &str) -> u64 {
        self.floors.get(subject_key).unwrap_or(0)
    }

    /// Applies a change: floors first, then the high water, so that a reader that sees the new
    /// high water also sees the floor.
    pub(crate) fn apply_change(&self, key: Option<String>, revision: u64) {
        match key {
            Some(k) if k.starts_with("s:") => {
                let floor = self.floor(&k).max(revision);
                self.floors.insert(k, floor);
            }
            _ => {
                self.last_device_change
                    .fetch_max(revision, Ordering::AcqRel);
            }
        }
        self.high_water.fetch_max(revision, Ordering::AcqRel);
    }

    /// Applies a heartbeat; returns how many revisions behind the announced high water the
    /// gate was when it arrived.
    fn apply_heartbeat(&self, high_water: u64) -> u64 {
        let before = self.high_water.fetch_max(high_water, Ordering::AcqRel);
        self.renew();
        high_water.saturating_sub(before)
    }
}

/// Follows `WatchChanges` for as long as the gate lives, reconnecting with backoff and resuming
/// after the last revision it applied. A stream that falls silent past the lease, or cannot be
/// opened within it, is left on a new connection (`connect`): behind a Service address the new
/// connection may reach another replica, while the old one may be stuck to a hung one.
///
/// A resume point the consent service refuses as ahead of its database (it was restored to an
/// earlier point) ends the following for good: retried, it would be served again once the
/// database's new changes pass it, with those changes, which reuse the revisions in between,
/// skipped. The gate fails closed instead (the lease never runs again: no cached allow is
/// served, every read asks the consent service), logs it as an error and counts it; restarting
/// the gate starts it over on the restored database.
pub(crate) async fn follow(
    connect: impl Fn() -> ConsentServiceClient<Channel> + Send + 'static,
    auth: Option<MetadataValue<Ascii>>,
    heartbeat: Duration,
    freshness: std::sync::Weak<Freshness>,
    metrics: Arc<GateMetrics>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    let mut client = connect();
    loop {
        let Some(state) = freshness.upgrade() else {
            return;
        };
        if !std::mem::replace(&mut first, false) {
            metrics.reconnects.increment(1);
        }
        let mut request = tonic::Request::new(WatchChangesRequest {
            after_revision: state.high_water(),
            heartbeat_millis: u32::try_from(heartbeat.as_millis()).unwrap_or(250),
        });
        crate::authorize(request.metadata_mut(), &auth);
        let lease = state.lease;
        drop(state);
        let opened = match tokio::time::timeout(lease * 2, client.watch_changes(request)).await {
            Ok(opened) => opened,
            Err(_) => {
                tracing::warn!(
                    "the consent change stream did not open within the lease; reconnecting"
                );
                if let Some(state) = freshness.upgrade() {
                    state.lapse();
                }
                client = connect();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        match opened {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    let Some(state) = freshness.upgrade() else {
                        return;
                    };
                    // A stream that stays silent past the lease is as good as broken.
                    let next = tokio::time::timeout(state.lease * 2, stream.message()).await;
                    match next {
                        Ok(Ok(Some(message))) => {
                            backoff = Duration::from_millis(50);
                            match message.message {
                                Some(watch_changes_response::Message::Change(change)) => {
                                    let key = change.subject.as_ref().and_then(subject_key);
                                    state.apply_change(key.clone(), change.revision);
                                    metrics.propagated(
                                        &change.kind,
                                        change
                                            .committed_at
                                            .and_then(|t| SystemTime::try_from(t).ok()),
                                    );
                                    metrics.high_water.set(state.high_water() as f64);
                                    // Nobody listening is fine.
                                    let _ = state.notices.send(ChangeNotice {
                                        subject_key: key,
                                        revision: change.revision,
                                        kind: change.kind,
                                    });
                                }
                                Some(watch_changes_response::Message::Heartbeat(beat)) => {
                                    let lag = state.apply_heartbeat(beat.high_water_revision);
                                    metrics.lag.set(lag as f64);
                                    metrics.high_water.set(state.high_water() as f64);
                                }
                                None => {}
                            }
                        }
                        Ok(Ok(None)) => {
                            tracing::warn!("consent change stream ended; reconnecting");
                            state.lapse();
                            break;
                        }
                        Ok(Err(status)) => {
                            tracing::warn!(code = ?status.code(), "consent change stream failed; reconnecting");
                            state.lapse();
                            break;
                        }
                        Err(_) => {
                            tracing::warn!(
                                "consent change stream silent past the lease; reconnecting on a new connection"
                            );
                            state.lapse();
                            client = connect();
                            break;
                        }
                    }
                }
            }
            Err(status) if ahead_of_database(&status) => {
                if let Some(state) = freshness.upgrade() {
                    state.diverged.store(true, Ordering::Release);
                    state.lapse();
                    metrics.diverged.increment(1);
                    tracing::error!(
                        high_water = state.high_water(),
                        "the consent database is behind revisions this gate applied (restored to an earlier point?): the change stream stops and no cached allow is served; restart the gate to follow the restored database"
                    );
                }
                return;
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), "cannot open the consent change stream; retrying");
                if let Some(state) = freshness.upgrade() {
                    state.lapse();
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Whether the consent service refused the resume point as beyond its database's head.
fn ahead_of_database(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::FailedPrecondition
        && consentgate_runtime::errors::reason_of(status).as_deref()
            == Some("REVISION_AHEAD_OF_DATABASE")
}
