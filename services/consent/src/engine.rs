//! The consent engine: records changes, answers decisions from a cache of subject states, and
//! feeds the change stream. Protocol-free; [`crate::service`] builds the RPCs' meaning on it.
//!
//! Cache correctness: writes go through this engine, which invalidates every affected subject
//! after commit and bumps a generation counter; a reader that loaded a state while a write
//! committed drops what it inserted. A caller holding a revision token (`at_least_as_fresh`)
//! never gets a state read before that revision: the cache entry records the store's high water
//! at load time and is bypassed when it is older than the token.

use crate::ledger::LedgerKeys;
use crate::model::{
    Change, StoredRecord, StoredSignal, SubjectKey, SubjectRows, Write, WriteOutcome,
};
use crate::store::{ConsentStore, StoreError};
use consentgate_policy::{
    AgeBand, CheckInput, CollectionMethod, Decision, DecisionError, Policy, SubjectState, decide,
    validate,
};
use consentgate_runtime::errors::echo;
use consentgate_store::notify::{Notice, Notices};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use time::OffsetDateTime;

/// The idempotency scope of GPC flags recorded by the engine itself (not a caller's name: every
/// enforcer's flags for one subject share it, so they record one signal between them).
pub const GPC_FLAG_RECORDER: &str = "consentgate:gpc-flag";

/// Why an engine call failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad input: (field, description) pairs.
    #[error("invalid argument")]
    Invalid(Vec<(String, String)>),
    /// The subject was erased.
    #[error("the subject was erased")]
    Erased,
    /// The idempotency key was reused with different content.
    #[error("idempotency key reused with a different request")]
    IdempotencyConflict,
    /// The store failed.
    #[error("store unavailable: {0}")]
    Store(StoreError),
    /// A consistency token beyond every revision the database has committed.
    #[error("consistency token {token} is beyond the committed revision {head}")]
    TokenAhead {
        /// The caller's `at_least_as_fresh`.
        token: u64,
        /// The database's last committed revision.
        head: u64,
    },
    /// A change stream asked to resume after a revision the database has not committed.
    #[error("resume revision {after} is beyond the committed revision {head}")]
    RevisionAhead {
        /// The watcher's `after_revision`.
        after: u64,
        /// The database's last committed revision.
        head: u64,
    },
}

/// How long a read whose token is ahead of the database waits before it reads once more: a
/// write another replica committed as the first read began is in the second one.
const TOKEN_RECHECK: Duration = Duration::from_millis(50);

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::SubjectErased => EngineError::Erased,
            StoreError::IdempotencyConflict => EngineError::IdempotencyConflict,
            other => EngineError::Store(other),
        }
    }
}

impl From<DecisionError> for EngineError {
    fn from(e: DecisionError) -> Self {
        EngineError::Invalid(vec![(e.field(), e.describe(echo))])
    }
}

/// A subject's state as decisions see it, plus when it was read.
#[derive(Debug)]
pub struct CachedState {
    /// The decision function's input.
    pub state: SubjectState,
    /// The store's high water when this was read.
    pub as_of: u64,
}

/// A decision request, already authenticated.
#[derive(Debug, Clone)]
pub struct CheckQuery {
    /// Whom it is about.
    pub subject: SubjectKey,
    /// Purpose key.
    pub purpose: String,
    /// Requested categories.
    pub categories: Vec<String>,
    /// Channel.
    pub channel: String,
    /// Jurisdiction code.
    pub jurisdiction: String,
    /// GPC flag on the originating request.
    pub gpc: bool,
    /// The minimum revision the decision must reflect.
    pub at_least_as_fresh: u64,
    /// Build the explanation and allow details (see `CheckInput::explain`).
    pub explain: bool,
}

impl CheckQuery {
    /// The decision function's input for `caller`, as of now.
    pub fn input<'a>(&'a self, caller: &'a str) -> CheckInput<'a> {
        CheckInput {
            caller,
            purpose: &self.purpose,
            categories: &self.categories,
            channel: Some(self.channel.as_str()),
            jurisdiction: &self.jurisdiction,
            gpc: self.gpc,
            now: OffsetDateTime::now_utc(),
            explain: self.explain,
        }
    }
}

/// The consent engine.
pub struct Engine {
    policy: Arc<Policy>,
    store: Arc<dyn ConsentStore>,
    keys: Arc<LedgerKeys>,
    cache: moka::future::Cache<SubjectKey, Arc<CachedState>>,
    generation: AtomicU64,
    high_water: tokio::sync::watch::Sender<u64>,
    loads: AtomicU64,
    /// Flips to true when the server begins shutting down: long-lived streams end so that
    /// graceful shutdown can finish (and gates reconnect to another replica).
    closing: tokio::sync::watch::Sender<bool>,
    /// Revisions this replica committed (and already invalidated); the follower skips them.
    local_revisions: std::sync::Mutex<std::collections::BTreeSet<u64>>,
    /// The clock [`Engine::feed_current`] reads.
    epoch: std::time::Instant,
    /// When the follower last read the change feed to its end, in µs since `epoch`.
    feed_read_at_micros: AtomicU64,
    /// When the commit-notice listener last reported its connection lost, in µs since `epoch`
    /// (0: never). Only a feed read that began after it makes the view current again.
    feed_lost_at_micros: AtomicU64,
    /// How long a feed read stays proof of being current, in µs (set by the follower).
    feed_stale_after_micros: AtomicU64,
    /// The feed's high water when the engine was built: where the follower starts, whatever
    /// local writes raised the high water since.
    started_at: u64,
}

/// How long the follower waits for its commit-notice listener before following by polls alone.
const LISTEN_WITHIN: Duration = Duration::from_secs(5);

/// How many missed polls make a replica's view of the change feed stale.
pub const STALE_POLLS: u32 = 4;

/// Changes are read from the feed in pages of this many.
const FEED_PAGE: u32 = 1000;

/// The next commit notice, or never when there is no listener (the poll alone follows).
async fn next_notice(notices: &mut Option<Notices>) -> Option<Notice> {
    match notices {
        Some(n) => n.recv().await,
        None => std::future::pending().await,
    }
}

impl Engine {
    /// An engine over a store. `cache_capacity` bounds the number of cached subjects.
    pub async fn new(
        policy: Arc<Policy>,
        store: Arc<dyn ConsentStore>,
        keys: Arc<LedgerKeys>,
        cache_capacity: u64,
    ) -> Result<Engine, StoreError> {
        let (_, high) = store.changes_after(u64::MAX - 1, 1).await?;
        let cache = moka::future::Cache::builder()
            .max_capacity(cache_capacity)
            // A last resort only: changes by other replicas are invalidated by `follow_changes`.
            .time_to_live(Duration::from_secs(600))
            .build();
        let (high_water, _) = tokio::sync::watch::channel(high);
        let (closing, _) = tokio::sync::watch::channel(false);
        Ok(Engine {
            policy,
            store,
            keys,
            cache,
            generation: AtomicU64::new(0),
            high_water,
            loads: AtomicU64::new(0),
            closing,
            local_revisions: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            epoch: std::time::Instant::now(),
            // The high water was just read from the feed.
            feed_read_at_micros: AtomicU64::new(0),
            feed_lost_at_micros: AtomicU64::new(0),
            // Until a follower says how often it reads: one second.
            feed_stale_after_micros: AtomicU64::new(1_000_000),
            started_at: high,
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The store: the service's alone (receipts, ledger verification, the change stream); tests
    /// read it through [`crate::testing`].
    pub(crate) fn store(&self) -> &Arc<dyn ConsentStore> {
        &self.store
    }

    /// The signing keys: the service's alone (receipts, ledger verification).
    pub(crate) fn keys(&self) -> &Arc<LedgerKeys> {
        &self.keys
    }

    /// Drops every cached subject state. Tombstones given back to a restored database are
    /// written outside any change, so a cached state could still say "not erased"; a reader
    /// that raced this discards what it read (the generation moves).
    pub(crate) fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate_all();
    }

    /// Transactions the write path committed and the writes they carried: the group commit's
    /// batching (`writes / commits` is the mean batch).
    pub fn group_commits(&self) -> (u64, u64) {
        self.store.group_commits()
    }

    /// How many times a subject's state was read from the store (the cache's misses).
    pub fn store_loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// Subscribes to the revision high water: changes whenever a write commits.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.high_water.subscribe()
    }

    /// Follows the store's change feed so that changes committed by *other* replicas sharing the
    /// database invalidate this replica's cache (local writes invalidate at once) and wake this
    /// replica's change watchers. Runs until shutdown.
    ///
    /// On PostgreSQL every committing transaction notifies the others (`LISTEN`/`NOTIFY`, see
    /// `consentgate_store::notify`), and a notice makes this replica read the feed at once: a
    /// change reaches it in milliseconds. The feed is also read every `poll`, as a safety net
    /// (a notice lost on a connection that died silently is read within `poll`) and as proof
    /// that this replica still sees the feed: [`Engine::feed_current`] turns false once no read
    /// has succeeded for [`STALE_POLLS`] polls, or at once when the listener reports its
    /// connection lost, until a read succeeds again; meanwhile change streams stop heartbeating
    /// and checks read through instead of trusting the cache, so gates stop trusting a replica
    /// that has lost its database. SQLite has no other writer to
    /// hear from: the poll only proves the file is readable.
    pub async fn follow_changes(self: Arc<Self>, poll: Duration) {
        self.feed_stale_after_micros.store(
            u64::try_from((poll * STALE_POLLS).as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        // Not waited for long: the replica serves meanwhile, and the poll follows the feed.
        let mut notices = match tokio::time::timeout(LISTEN_WITHIN, self.store.commit_notices())
            .await
        {
            Ok(Ok(notices)) => notices,
            Ok(Err(e)) => {
                tracing::warn!(error = %e.log_safe(), every = ?poll, "cannot listen for commit notices; following the change feed by polling alone");
                None
            }
            Err(_) => {
                tracing::warn!(every = ?poll, "no commit-notice listener within 5 s; following the change feed by polling alone");
                None
            }
        };
        let mut last = self.started_at;
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let heard = tokio::select! {
                _ = ticker.tick() => None,
                notice = next_notice(&mut notices) => match notice {
                    Some(notice) => Some(notice),
                    None => {
                        notices = None;
                        continue;
                    }
                },
                () = self.closed() => return,
            };
            if let Some(Notice::Committed(revision)) = heard
                && self.only_local_up_to(&mut last, revision)
            {
                continue;
            }
            if heard == Some(Notice::Lost) {
                // Commits by other replicas may now go unheard: stop vouching at once (no
                // heartbeats, no cached answers) rather than after STALE_POLLS polls. The read
                // below, if the database still answers, makes the view current again.
                self.lose_feed();
            }
            // The read proves the feed as of when it began, not when it ended.
            let began = self.epoch.elapsed();
            match self.catch_up(&mut last).await {
                Ok(()) => self.confirm_feed(began),
                Err(e) => {
                    tracing::warn!(error = %e.log_safe(), "cannot follow the change feed; retrying")
                }
            }
        }
    }

    /// Whether every revision after `last` up to `revision` was committed by this replica (and
    /// so already invalidated): then nothing needs reading, and `last` moves to `revision`.
    /// Revisions are dense (one per change, writers serialized), so the set says it exactly.
    fn only_local_up_to(&self, last: &mut u64, revision: u64) -> bool {
        if revision <= *last {
            return true;
        }
        let mut local = self
            .local_revisions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if (*last + 1..=revision).all(|r| local.contains(&r)) {
            let later = local.split_off(&(revision + 1));
            *local = later;
            *last = revision;
            return true;
        }
        false
    }

    /// Reads the feed after `last` to its end, invalidating what other replicas changed and
    /// waking change watchers; advances `last`.
    async fn catch_up(&self, last: &mut u64) -> Result<(), StoreError> {
        loop {
            let (events, high) = self.store.changes_after(*last, FEED_PAGE).await?;
            if high < *last {
                return Ok(());
            }
            let full = events.len() == FEED_PAGE as usize;
            let remote: Vec<_> = {
                let mut local = self
                    .local_revisions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let remote = events
                    .iter()
                    .filter(|e| !local.remove(&e.revision))
                    .collect();
                // Anything at or below the feed's high water is settled: forget it.
                let settled = local.split_off(&(high + 1));
                *local = settled;
                remote
            };
            // Count the change before invalidating, as `record` does: a load that read older
            // state and inserts after the invalidation then sees the generation move and drops
            // what it inserted.
            if !remote.is_empty() {
                self.generation.fetch_add(1, Ordering::SeqCst);
            }
            for event in &remote {
                match &event.subject {
                    Some(subject) => self.cache.invalidate(subject).await,
                    // An erasure names nobody: drop everything (devices linked to the erased subject included).
                    None => self.cache.invalidate_all(),
                }
            }
            // Devices linked to a changed subject embed its state: a remote change to a linked
            // group is rare, so drop device entries wholesale rather than track group membership.
            if remote.iter().any(|e| e.kind == "link" || e.kind == "erase") {
                self.cache.invalidate_all();
            }
            *last = events.last().map_or(high, |e| e.revision).max(*last);
            let reached = *last;
            self.high_water.send_if_modified(|h| {
                let newer = reached > *h;
                if newer {
                    *h = reached;
                }
                newer
            });
            if !full {
                return Ok(());
            }
        }
    }

    /// Notes that the feed was read to its end by a read that began at `began` (since `epoch`).
    fn confirm_feed(&self, began: Duration) {
        let micros = u64::try_from(began.as_micros()).unwrap_or(u64::MAX);
        self.feed_read_at_micros.store(micros, Ordering::Release);
    }

    /// Notes that the commit-notice listener lost its connection: the view is not current
    /// until a feed read that begins after now succeeds.
    fn lose_feed(&self) {
        let micros = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.feed_lost_at_micros
            .store(micros.max(1), Ordering::Release);
    }

    /// Whether this replica read the change feed to its end recently enough (see
    /// [`Engine::follow_changes`]), and since its commit-notice listener last lost its
    /// connection, to promise that it has missed nothing: a heartbeat is that promise, and so is
    /// an answer from the cache.
    pub fn feed_current(&self) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        let read_at = self.feed_read_at_micros.load(Ordering::Acquire);
        read_at >= self.feed_lost_at_micros.load(Ordering::Acquire)
            && now.saturating_sub(read_at) <= self.feed_stale_after_micros.load(Ordering::Relaxed)
    }

    /// Tells long-lived streams to end: the server is shutting down.
    pub fn begin_shutdown(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once shutdown has begun.
    pub async fn closed(&self) {
        let mut closing = self.closing.subscribe();
        let _ = closing.wait_for(|c| *c).await;
    }

    /// Records a change durably, then invalidates what it affects and wakes change watchers.
    pub async fn record(&self, write: Write) -> Result<WriteOutcome, EngineError> {
        self.record_many(vec![write])
            .await?
            .pop()
            .unwrap_or_else(|| Err(StoreError::GroupCommitFailed("no answer".into()).into()))
    }

    /// Records several changes as [`Engine::record`] records one, in one group commit
    /// ([`ConsentStore::write_many`]), each answered on its own; the cache is invalidated once
    /// per subject they touch and watchers are woken once. `Err` when none of the answers can
    /// be trusted (the commit was lost, or the deadline passed first).
    pub async fn record_many(
        &self,
        writes: Vec<Write>,
    ) -> Result<Vec<Result<WriteOutcome, EngineError>>, EngineError> {
        let subjects: std::collections::HashSet<SubjectKey> =
            writes.iter().map(|w| w.change.subject().clone()).collect();
        let answers = self.store.write_many(writes).await?;
        let mut touched = subjects;
        let mut newest = None;
        {
            let mut local = self
                .local_revisions
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for outcome in answers.iter().filter_map(|a| a.as_ref().ok()) {
                if !outcome.replayed {
                    local.insert(outcome.revision);
                }
                newest = newest.max(Some(outcome.revision));
                touched.extend(outcome.affected.iter().cloned());
            }
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        for key in &touched {
            self.cache.invalidate(key).await;
        }
        if let Some(newest) = newest {
            self.high_water.send_if_modified(|high| {
                let newer = newest > *high;
                if newer {
                    *high = newest;
                }
                newer
            });
        }
        Ok(answers
            .into_iter()
            .map(|a| a.map_err(EngineError::from))
            .collect())
    }

    /// The subject's state, from the cache when it is at least as fresh as `at_least` and this
    /// replica's view of the change feed is current. A replica that cannot vouch for its view
    /// (it lost its database, or its listener) reads through: a cached state may predate a
    /// change another replica committed meanwhile, and a gate whose lease ran out asks exactly
    /// such a replica. Without the database the read fails, and the answer fails closed.
    ///
    /// A token (`at_least`) beyond what this replica has heard of is not refused: the read goes
    /// to the database, which holds every other replica's commits. Only a token beyond the
    /// database's committed revision (read twice, [`TOKEN_RECHECK`] apart) is from the future —
    /// invented, or issued before the database was restored to an earlier point — and answered
    /// [`EngineError::TokenAhead`], never as if it were satisfied.
    pub async fn state(
        &self,
        subject: &SubjectKey,
        at_least: u64,
    ) -> Result<Arc<CachedState>, EngineError> {
        if let Some(hit) = self.cache.get(subject).await
            && hit.as_of >= at_least
            && self.feed_current()
        {
            return Ok(hit);
        }
        self.load(subject, at_least).await
    }

    /// Reads the subject's state from the database and caches it, whatever the cache holds:
    /// what a cache miss costs (the benchmark's breakdown times it), and a fresh time-to-live.
    pub async fn reload(&self, subject: &SubjectKey) -> Result<Arc<CachedState>, EngineError> {
        self.load(subject, 0).await
    }

    /// The read behind [`Engine::state`] and [`Engine::reload`]: from the database, refused
    /// when the database is behind `at_least` (twice, [`TOKEN_RECHECK`] apart), then cached.
    async fn load(
        &self,
        subject: &SubjectKey,
        at_least: u64,
    ) -> Result<Arc<CachedState>, EngineError> {
        let generation = self.generation.load(Ordering::SeqCst);
        let mut rows = self.load_rows(subject).await?;
        if rows.as_of < at_least {
            tokio::time::sleep(TOKEN_RECHECK).await;
            rows = self.load_rows(subject).await?;
            if rows.as_of < at_least {
                return Err(EngineError::TokenAhead {
                    token: at_least,
                    head: rows.as_of,
                });
            }
        }
        self.loads.fetch_add(1, Ordering::Relaxed);
        let loaded = Arc::new(CachedState {
            as_of: rows.as_of,
            state: to_state(&rows),
        });
        self.cache.insert(subject.clone(), loaded.clone()).await;
        if self.generation.load(Ordering::SeqCst) != generation {
            // A write committed while we read: what we inserted may predate it.
            self.cache.invalidate(subject).await;
        }
        Ok(loaded)
    }

    /// Refuses a change stream's resume point beyond the database's committed revision: a
    /// stream resumed there would skip, unannounced, every change committed up to it (after a
    /// restore to an earlier point, the very changes that reuse those revisions). The head is
    /// read from the database, not from this replica's view (which may lag another replica's
    /// commits), and read once more [`TOKEN_RECHECK`] later before refusing, as for a token.
    pub async fn resumable_after(&self, after: u64) -> Result<(), EngineError> {
        let mut head = self.committed_head(after).await?;
        if head < after {
            tokio::time::sleep(TOKEN_RECHECK).await;
            head = self.committed_head(after).await?;
        }
        if head < after {
            return Err(EngineError::RevisionAhead { after, head });
        }
        Ok(())
    }

    /// The database's committed head, or some committed revision past `after` (one page of one
    /// change: either it holds a change after `after`, or its high water is the head).
    async fn committed_head(&self, after: u64) -> Result<u64, EngineError> {
        let (changes, high) = self.store.changes_after(after, 1).await?;
        Ok(changes.first().map_or(high, |c| c.revision))
    }

    /// Everything stored about a subject, read in one snapshot (traced).
    async fn load_rows(&self, subject: &SubjectKey) -> Result<SubjectRows, EngineError> {
        Ok(consentgate_runtime::traces::in_span(
            "consentgate.consent.store.load",
            || [],
            self.store.load_subject(subject),
        )
        .await?)
    }

    /// Decides a check for `caller` (the original caller under delegation).
    ///
    /// A GPC flag on the request, for a subject (or device) with no GPC signal on, is first
    /// recorded as a signal (docs/architecture.md §3 rule 6): from then on the recorded signal rules, so an
    /// explicit opt-in made *after* it can override it, which a flag counted as "now" on every
    /// request never could. Repeated flags find the signal on and write nothing.
    pub async fn check(&self, caller: &str, query: &CheckQuery) -> Result<Decision, EngineError> {
        let mut state = self.state(&query.subject, query.at_least_as_fresh).await?;
        if query.gpc && state.state.gpc_signal.is_none() && !state.state.erased {
            let revision = self
                .record_gpc_flag(&query.subject, state.state.revision)
                .await?;
            state = self.state(&query.subject, revision).await?;
        }
        Ok(self.decide(caller, query, &state.state)?)
    }

    /// Decides like [`Engine::check`] but writes nothing, for `Explain`: an audit of a question
    /// (perhaps a hypothetical one) must not record facts about a person's browser. A GPC flag
    /// with no signal recorded counts as a signal as of now, which no earlier grant overrides.
    pub async fn explain(&self, caller: &str, query: &CheckQuery) -> Result<Decision, EngineError> {
        let state = self.state(&query.subject, query.at_least_as_fresh).await?;
        Ok(self.decide(caller, query, &state.state)?)
    }

    /// Records a request's GPC flag as a signal (collection method `gpc_signal`, in the ledger
    /// like any change) and returns its revision. The idempotency key names the subject (by
    /// digest) and the revision its state was read at, so concurrent checks that saw the same
    /// state, on this replica or another, record one signal between them; after the person
    /// clears the signal, the next flag (at a later revision) records it again.
    async fn record_gpc_flag(
        &self,
        subject: &SubjectKey,
        seen_at_revision: u64,
    ) -> Result<u64, EngineError> {
        use sha2::{Digest, Sha256};
        let digest = hex::encode(Sha256::digest(subject.storage().as_bytes()));
        let write = Write {
            caller: GPC_FLAG_RECORDER.to_owned(),
            delegate: None,
            idempotency_key: format!("gpc-flag:{}:{seen_at_revision}", &digest[..32]),
            fingerprint: Sha256::digest(b"consentgate-gpc-flag-v1").into(),
            change: Change::Signal {
                subject: subject.clone(),
                kind: "gpc".to_owned(),
                value: "1".to_owned(),
                collection_method: CollectionMethod::GpcSignal,
            },
        };
        let outcome = self.record(write).await?;
        tracing::debug!(
            revision = outcome.revision,
            replayed = outcome.replayed,
            "recorded a request's GPC flag as a signal"
        );
        Ok(outcome.revision)
    }

    /// Validates a check against the policy without touching state (cheap; run before any I/O).
    pub fn validate_check(&self, query: &CheckQuery) -> Result<(), DecisionError> {
        validate(&self.policy, &query.input(""))
    }

    /// Runs the decision function.
    pub fn decide(
        &self,
        caller: &str,
        query: &CheckQuery,
        state: &SubjectState,
    ) -> Result<Decision, DecisionError> {
        decide(&self.policy, &query.input(caller), state)
    }

    /// Everything stored about a subject, read fresh (for GetConsents).
    pub async fn rows(&self, subject: &SubjectKey) -> Result<SubjectRows, EngineError> {
        Ok(self.store.load_subject(subject).await?)
    }

    /// A page of the subject's history.
    pub async fn history(
        &self,
        subject: &SubjectKey,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, EngineError> {
        Ok(self.store.history(subject, after, limit).await?)
    }
}

/// The latest record per (purpose, channel, scope), and the signals folded to their current values.
pub fn to_state(rows: &SubjectRows) -> SubjectState {
    let mut latest: HashMap<(&str, Option<&str>, Option<&str>), consentgate_policy::Record> =
        HashMap::new();
    for r in &rows.records {
        let key = (
            r.consent.purpose.as_str(),
            r.consent.channel.as_deref(),
            r.consent.scope.as_deref(),
        );
        let record = r.to_policy_record();
        // The latest in the subject's order, not the last read: an imported record can be
        // newer by revision and older by time.
        if latest
            .get(&key)
            .is_none_or(|held| held.order() < record.order())
        {
            latest.insert(key, record);
        }
    }
    let mut records: Vec<_> = latest.into_values().collect();
    records.sort_by_key(consentgate_policy::Record::order);

    let mut gpc_on: Option<&StoredSignal> = None;
    let mut age_band = None;
    let mut guardians = Vec::new();
    for s in &rows.signals {
        match s.kind.as_str() {
            "gpc" => gpc_on = (s.value == "1").then_some(s),
            "age_band" => age_band = AgeBand::parse(&s.value),
            "guardian" => guardians.push(s.value.clone()),
            _ => {}
        }
    }
    SubjectState {
        revision: rows.revision,
        erased: rows.erased,
        restricted: rows.restricted,
        records,
        gpc_signal: gpc_on.map(|s| consentgate_policy::Order {
            at: s.ordered_at,
            revision: s.revision,
        }),
        gpc_signal_at: gpc_on.map(|s| s.recorded_at),
        age_band,
        guardians,
    }
}
