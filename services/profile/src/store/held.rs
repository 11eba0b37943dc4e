//! What a profile store keeps in memory about subjects (zero-party data, newest events,
//! pseudonym keys), and how those copies stay true when other replicas write the same database.
//!
//! On a SQLite file this process is the only writer, so its own writes' invalidations are all
//! there is. On PostgreSQL every write announces the subjects it changed with a `NOTIFY` sent
//! in its transaction ([`announcement`]); every replica listens ([`follow`]) and forgets those
//! subjects. `NOTIFY` is asynchronous and lost while a listener is disconnected, so the copies
//! are served only while the listener is *proven* current: each replica also notifies itself
//! every [`BEAT_EVERY`] with the time it sent the beat, and PostgreSQL delivers notifications
//! in commit order, so hearing a beat sent at `T` proves every write committed before `T` has
//! been heard and forgotten. Memory serves a read only if such a proof is at most [`LEASE`]
//! old; otherwise the read goes to the database. Hence the guarantee, whatever happens to the
//! listener's connection (a reset, a silent partition, a stalled database): **a read on one
//! replica reflects every write acknowledged on another more than [`LEASE`] ago**; with a
//! healthy listener, within the notification's delivery (milliseconds, measured by
//! `profilegen --replicas`). The whole memory is dropped whenever the listener reconnects.

use crate::model::{Answer, Attribute, Event};
use consentgate_store::notify::{Heard, Payloads};
use sha2::{Digest, Sha256};
use sqlx::AnyPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// The channel profile writes are announced on.
pub(super) const CHANNEL: &str = "consentgate_profile_changes";

/// How often a replica proves its listener current by notifying itself.
pub(super) const BEAT_EVERY: Duration = Duration::from_millis(250);

/// How old the newest proof may be for memory to serve a read: the bound on how far behind
/// another replica's acknowledged write a read can be (four beats: a slow beat or two does not
/// send every read to the database).
pub(super) const LEASE: Duration = Duration::from_secs(1);

/// Subjects whose zero-party data is kept in memory.
const ZERO_PARTY_SUBJECTS: u64 = 50_000;

/// The newest events of a subject kept in memory: what a history read asks for (the
/// recommendation service reads 40, or 500 to learn a subject; pages hold up to 1,000).
pub(super) const RECENT_EVENTS: usize = 1000;

/// Events held in memory across subjects (a few hundred bytes each: about 50 MB).
const RECENT_EVENTS_HELD: u64 = 200_000;

/// Pseudonym keys held in memory.
const SECRETS_HELD: u64 = 100_000;

/// The most subjects one announcement names; a bigger write announces "everyone" (a `NOTIFY`
/// payload must stay under 8,000 bytes; 200 digests are 6,600).
const SUBJECTS_PER_ANNOUNCEMENT: usize = 200;

/// Which subject a copy belongs to: 128 bits of SHA-256 of its storage key. Announcements carry
/// this, never the subject id, and it keys the memory so that an announcement can find what to
/// forget; each copy also keeps its subject's key, so a collision could only cost a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct SubjectDigest(u128);

impl SubjectDigest {
    /// The digest of a subject's storage key.
    pub(super) fn of(subject_key: &str) -> SubjectDigest {
        let hash = Sha256::digest(subject_key.as_bytes());
        let mut first = [0u8; 16];
        first.copy_from_slice(&hash[..16]);
        SubjectDigest(u128::from_be_bytes(first))
    }

    fn parse(hex: &str) -> Option<SubjectDigest> {
        (hex.len() == 32)
            .then(|| u128::from_str_radix(hex, 16).ok())
            .flatten()
            .map(SubjectDigest)
    }
}

impl std::fmt::Display for SubjectDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A subject's newest events, all kinds and fields, newest first (the store's order).
pub(super) struct RecentEvents {
    pub(super) events: Vec<Event>,
    /// Whether these are all of the subject's events (else older ones exist in the database).
    pub(super) complete: bool,
}

/// What a subject shared or was asked about itself: its attribute rows (by name) and answers
/// (oldest first), all categories.
pub(super) struct ZeroParty {
    pub(super) attributes: Vec<Attribute>,
    pub(super) answers: Vec<Answer>,
}

/// One subject's copy: the subject it belongs to, and the data.
type Copy<T> = (Arc<str>, Arc<T>);

/// One kind of copy, by subject digest.
type Copies<T> = moka::sync::Cache<SubjectDigest, Copy<T>>;

/// The memory of a profile store. Denied categories are filtered out per read by the store, as
/// from the database; nothing here decides what a caller may see.
pub(super) struct Held {
    zero_party: Copies<ZeroParty>,
    recent_events: Copies<RecentEvents>,
    /// Pseudonym keys (a read's access-log entry then costs one statement). An erasure anywhere
    /// forgets its subject's key here too: a shredded key must not live on in a replica.
    secrets: Copies<String>,
    /// Counts changes to what is held, local and announced. A lock rather than an atomic: a
    /// read's "nothing changed since I started, so keep what I read" and a change's "count me
    /// and forget" must not interleave, or a stale copy could be kept after the change.
    changes: std::sync::Mutex<u64>,
    /// Whether copies may be served now.
    proof: Proof,
    /// How many times the listener lost its connection and everything held was dropped.
    gaps: AtomicU64,
}

/// Whether this process may trust its copies.
enum Proof {
    /// The only writer (a SQLite file): its own invalidations are complete.
    Exclusive,
    /// Replicas share the database: copies serve only while a beat proves the listener current.
    Beats {
        /// What beat times count from.
        epoch: Instant,
        /// When the newest beat this process heard back was sent, µs after `epoch` (0: none yet).
        proven_at: AtomicU64,
    },
}

impl Held {
    /// Memory for a store that is its database's only writer.
    pub(super) fn exclusive() -> Arc<Held> {
        Arc::new(Held::with(Proof::Exclusive))
    }

    /// Memory for a replica sharing its database, kept true by the announcements `heard` on
    /// [`CHANNEL`]; it beats through `pool`. Nothing is served from memory until the first beat
    /// comes back.
    pub(super) fn followed(heard: Payloads, pool: AnyPool) -> Arc<Held> {
        let held = Arc::new(Held::with(Proof::Beats {
            epoch: Instant::now(),
            proven_at: AtomicU64::new(0),
        }));
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        tokio::spawn(follow(Arc::downgrade(&held), heard, nonce.clone()));
        tokio::spawn(beat(Arc::downgrade(&held), pool, nonce));
        held
    }

    fn with(proof: Proof) -> Held {
        Held {
            zero_party: moka::sync::Cache::new(ZERO_PARTY_SUBJECTS),
            recent_events: moka::sync::Cache::builder()
                .weigher(|_, (_, recent): &Copy<RecentEvents>| {
                    u32::try_from(recent.events.len())
                        .unwrap_or(u32::MAX)
                        .max(1)
                })
                .max_capacity(RECENT_EVENTS_HELD)
                .build(),
            secrets: moka::sync::Cache::new(SECRETS_HELD),
            changes: std::sync::Mutex::new(0),
            proof,
            gaps: AtomicU64::new(0),
        }
    }

    /// Whether copies may be served: always for the only writer; for a replica, while its
    /// newest beat heard back was sent at most [`LEASE`] ago.
    pub(super) fn current(&self) -> bool {
        match &self.proof {
            Proof::Exclusive => true,
            Proof::Beats { epoch, proven_at } => match proven_at.load(Ordering::Acquire) {
                0 => false,
                sent => {
                    let age = (epoch.elapsed().as_micros() as u64).saturating_sub(sent);
                    age <= LEASE.as_micros() as u64
                }
            },
        }
    }

    /// Waits until every write committed before this call has been applied to memory (a beat
    /// sent after it came back), at most `within`; whether it was. Immediate for the only writer.
    pub(super) async fn settled(&self, within: Duration) -> bool {
        let Proof::Beats { epoch, proven_at } = &self.proof else {
            return true;
        };
        let asked = epoch.elapsed().as_micros() as u64;
        let deadline = Instant::now() + within;
        while proven_at.load(Ordering::Acquire) <= asked {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// How many times everything held was dropped because the listener lost its connection.
    pub(super) fn gaps(&self) -> u64 {
        self.gaps.load(Ordering::Acquire)
    }

    /// The subject's zero-party data, from memory or `load`.
    pub(super) async fn zero_party(
        &self,
        subject_key: &str,
        load: impl Future<Output = Result<ZeroParty, super::StoreError>>,
    ) -> Result<Arc<ZeroParty>, super::StoreError> {
        self.copy(&self.zero_party, subject_key, load).await
    }

    /// The subject's newest events, from memory or `load`.
    pub(super) async fn recent_events(
        &self,
        subject_key: &str,
        load: impl Future<Output = Result<RecentEvents, super::StoreError>>,
    ) -> Result<Arc<RecentEvents>, super::StoreError> {
        self.copy(&self.recent_events, subject_key, load).await
    }

    /// The subject's pseudonym key, from memory or `load` (`None`: it has none).
    pub(super) async fn secret(
        &self,
        subject_key: &str,
        load: impl Future<Output = Result<Option<String>, super::StoreError>>,
    ) -> Result<Option<String>, super::StoreError> {
        if let Some(hit) = self.served(&self.secrets, subject_key) {
            return Ok(Some(hit.as_ref().clone()));
        }
        let changes = *self.changes();
        let Some(secret) = load.await? else {
            return Ok(None);
        };
        self.keep(
            &self.secrets,
            subject_key,
            changes,
            Arc::new(secret.clone()),
        );
        Ok(Some(secret))
    }

    /// Remembers a key just written in a transaction that committed.
    pub(super) fn remember_secret(&self, subject_key: &str, secret: String) {
        let changes = *self.changes();
        self.keep(&self.secrets, subject_key, changes, Arc::new(secret));
    }

    /// `copies`' entry for `subject_key` when memory may serve it, or what `load` reads, kept
    /// only if nothing changed while it read: what was read is then current until the next
    /// change, whose invalidation (see [`Held::changed`]) waits for the counter's lock.
    async fn copy<T: Send + Sync + 'static>(
        &self,
        copies: &Copies<T>,
        subject_key: &str,
        load: impl Future<Output = Result<T, super::StoreError>>,
    ) -> Result<Arc<T>, super::StoreError> {
        if let Some(hit) = self.served(copies, subject_key) {
            return Ok(hit);
        }
        let changes = *self.changes();
        let data = Arc::new(load.await?);
        self.keep(copies, subject_key, changes, data.clone());
        Ok(data)
    }

    /// The copy of `subject_key` if there is one and memory may serve it now.
    fn served<T: Send + Sync + 'static>(
        &self,
        copies: &Copies<T>,
        subject_key: &str,
    ) -> Option<Arc<T>> {
        if !self.current() {
            return None;
        }
        copies
            .get(&SubjectDigest::of(subject_key))
            .filter(|(subject, _)| &**subject == subject_key)
            .map(|(_, data)| data)
    }

    /// Keeps `data` as `subject_key`'s copy unless something changed since `changes` was read.
    fn keep<T: Send + Sync + 'static>(
        &self,
        copies: &Copies<T>,
        subject_key: &str,
        changes: u64,
        data: Arc<T>,
    ) {
        let now = self.changes();
        if *now == changes {
            copies.insert(SubjectDigest::of(subject_key), (subject_key.into(), data));
        }
    }

    /// After subjects' data changed (a local write committed, or another replica's was
    /// announced): forget what memory holds about them (`None`: everyone).
    pub(super) fn changed(&self, subjects: Changed<'_>) {
        let mut changes = self.changes();
        *changes += 1;
        match subjects {
            Changed::Subjects(keys) => {
                for key in keys {
                    self.forget(SubjectDigest::of(key));
                }
            }
            Changed::Digests(digests) => digests.iter().for_each(|d| self.forget(*d)),
            Changed::Everyone => {
                self.zero_party.invalidate_all();
                self.recent_events.invalidate_all();
                self.secrets.invalidate_all();
            }
        }
    }

    fn forget(&self, digest: SubjectDigest) {
        self.zero_party.invalidate(&digest);
        self.recent_events.invalidate(&digest);
        self.secrets.invalidate(&digest);
    }

    /// The change counter (a poisoned lock still counts: it holds a plain number).
    fn changes(&self) -> std::sync::MutexGuard<'_, u64> {
        self.changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets every proof: the listener lost its connection, so beats heard before prove
    /// nothing about what is sent now. (A beat heard after this was committed after the
    /// listener listened again, after [`Heard::Resumed`] dropped everything held.)
    fn unproven(&self) {
        if let Proof::Beats { proven_at, .. } = &self.proof {
            proven_at.store(0, Ordering::Release);
        }
    }

    /// Records that a beat sent at `sent` (µs after the epoch) came back.
    fn proven(&self, sent: u64) {
        if let Proof::Beats { proven_at, .. } = &self.proof {
            proven_at.fetch_max(sent, Ordering::AcqRel);
        }
    }
}

/// Whose data changed.
pub(super) enum Changed<'a> {
    /// These subjects' (storage keys).
    Subjects(&'a [&'a str]),
    /// The subjects with these digests (an announcement).
    Digests(&'a [SubjectDigest]),
    /// Anyone's (retention, an announcement that named too many, a gap in the announcements).
    Everyone,
}

/// The payload announcing a committed change to `subjects` (`None`: everyone): `s:` and their
/// digests, comma-separated, or `*`.
pub(super) fn announcement(subjects: Option<&[&str]>) -> String {
    match subjects {
        Some(keys) if keys.len() <= SUBJECTS_PER_ANNOUNCEMENT => {
            let mut payload = String::with_capacity(2 + keys.len() * 33);
            payload.push_str("s:");
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    payload.push(',');
                }
                payload.push_str(&SubjectDigest::of(key).to_string());
            }
            payload
        }
        _ => "*".to_owned(),
    }
}

/// What one notification on [`CHANNEL`] means to the replica with `nonce`.
#[derive(Debug, PartialEq, Eq)]
enum Meaning {
    /// These subjects changed.
    Subjects(Vec<SubjectDigest>),
    /// Anything may have changed.
    Everyone,
    /// This replica's own beat, sent at this time (µs after its epoch).
    OwnBeat(u64),
    /// Another replica's beat.
    Nothing,
}

fn meaning(payload: &str, nonce: &str) -> Meaning {
    if let Some(beat) = payload.strip_prefix("b:") {
        return match beat.split_once(':') {
            Some((from, sent)) if from == nonce => {
                sent.parse().map_or(Meaning::Nothing, Meaning::OwnBeat)
            }
            _ => Meaning::Nothing,
        };
    }
    if let Some(list) = payload.strip_prefix("s:") {
        let digests: Option<Vec<SubjectDigest>> =
            list.split(',').map(SubjectDigest::parse).collect();
        // A payload this version cannot read is taken as the widest change.
        return digests.map_or(Meaning::Everyone, Meaning::Subjects);
    }
    Meaning::Everyone
}

/// Applies what the listener hears, in the order PostgreSQL delivered it, until the store is
/// gone. A gap (the listener reconnected) forgets everything.
async fn follow(held: Weak<Held>, mut heard: Payloads, nonce: String) {
    while let Some(notice) = heard.recv().await {
        let Some(held) = held.upgrade() else {
            return;
        };
        match notice {
            // Announcements may go unheard from now on: memory stops serving at once, and only
            // a beat sent after the listener listens again makes it current.
            Heard::Lost => held.unproven(),
            Heard::Resumed => {
                held.changed(Changed::Everyone);
                held.gaps.fetch_add(1, Ordering::AcqRel);
            }
            Heard::Payload(payload) => match meaning(&payload, &nonce) {
                Meaning::Subjects(digests) => held.changed(Changed::Digests(&digests)),
                Meaning::Everyone => held.changed(Changed::Everyone),
                Meaning::OwnBeat(sent) => held.proven(sent),
                Meaning::Nothing => {}
            },
        }
    }
}

/// Notifies this replica's own listener every [`BEAT_EVERY`] with the time the beat was sent,
/// until the store is gone. A beat that cannot be sent within the lease is abandoned: memory
/// then stops serving until one comes back.
async fn beat(held: Weak<Held>, pool: AnyPool, nonce: String) {
    let mut every = tokio::time::interval(BEAT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let sent = match held.upgrade() {
            Some(held) => match &held.proof {
                Proof::Beats { epoch, .. } => (epoch.elapsed().as_micros() as u64).max(1),
                Proof::Exclusive => return,
            },
            None => return,
        };
        let send = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(format!("b:{nonce}:{sent}"))
            .execute(&pool);
        match tokio::time::timeout(LEASE, send).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %consentgate_store::Error::from(e).log_safe(), "profile memory: a beat failed")
            }
            Err(_) => tracing::debug!("profile memory: a beat timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_name_digests_and_read_back() {
        let payload = announcement(Some(&["alice", "bob"]));
        assert_eq!(
            meaning(&payload, "n"),
            Meaning::Subjects(vec![SubjectDigest::of("alice"), SubjectDigest::of("bob")])
        );
        assert!(
            !payload.contains("alice"),
            "a subject id went into a payload"
        );
        assert_eq!(announcement(None), "*");
        let many: Vec<String> = (0..=SUBJECTS_PER_ANNOUNCEMENT)
            .map(|i| i.to_string())
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(announcement(Some(&many)), "*");
        let most = announcement(Some(&many[..SUBJECTS_PER_ANNOUNCEMENT]));
        assert!(most.len() < 8000, "{} bytes", most.len());
    }

    #[test]
    fn beats_count_only_for_their_sender_and_unreadable_payloads_forget_everything() {
        assert_eq!(meaning("b:me:42", "me"), Meaning::OwnBeat(42));
        assert_eq!(meaning("b:other:42", "me"), Meaning::Nothing);
        assert_eq!(meaning("b:me:x", "me"), Meaning::Nothing);
        assert_eq!(meaning("s:zz", "me"), Meaning::Everyone);
        assert_eq!(meaning("hello", "me"), Meaning::Everyone);
        assert_eq!(meaning("*", "me"), Meaning::Everyone);
    }

    #[tokio::test]
    async fn a_replica_serves_no_copy_without_a_recent_proof() {
        let held = Held::with(Proof::Beats {
            epoch: Instant::now() - Duration::from_secs(10),
            proven_at: AtomicU64::new(0),
        });
        assert!(!held.current(), "served before any beat came back");
        held.remember_secret("alice", "k1".into());
        let loaded = held
            .secret("alice", async { Ok(Some("k2".to_owned())) })
            .await
            .unwrap();
        assert_eq!(
            loaded.as_deref(),
            Some("k2"),
            "memory served without a proof"
        );
        // A beat sent 9 s after the epoch (1 s ago at most… plus scheduling): current.
        held.proven(Duration::from_secs(10).as_micros() as u64);
        assert!(held.current());
        // One sent 8 s after the epoch is 2 s old: past the lease.
        let stale = Held::with(Proof::Beats {
            epoch: Instant::now() - Duration::from_secs(10),
            proven_at: AtomicU64::new(Duration::from_secs(8).as_micros() as u64),
        });
        assert!(
            !stale.current(),
            "a proof older than the lease still served"
        );
    }

    #[tokio::test]
    async fn a_change_during_a_load_keeps_nothing() {
        let held = Held::exclusive();
        let during = held.clone();
        let secret = held
            .secret("alice", async move {
                during.changed(Changed::Digests(&[SubjectDigest::of("alice")]));
                Ok(Some("old".to_owned()))
            })
            .await
            .unwrap();
        assert_eq!(secret.as_deref(), Some("old"));
        let again = held
            .secret("alice", async { Ok(Some("new".to_owned())) })
            .await
            .unwrap();
        assert_eq!(
            again.as_deref(),
            Some("new"),
            "a copy read across a change was kept"
        );
        held.changed(Changed::Subjects(&["alice"]));
        let after = held
            .secret("alice", async { Ok(Some("newer".to_owned())) })
            .await
            .unwrap();
        assert_eq!(
            after.as_deref(),
            Some("newer"),
            "a forgotten subject was served"
        );
    }
}
