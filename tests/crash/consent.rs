//! The consent service under `kill -9`: grants, withdrawals and GPC signals with unique
//! idempotency keys from 64 clients at once (so that writes share group commits, and a kill
//! lands in the middle of a batch), a change-stream watcher standing in for a gate, a kill at a
//! random moment, and the checks after every restart.
//!
//! What "no gap a gate could skip" means here: a revision is the ledger's sequence number,
//! taken as the last one plus one under the store's single writer (SQLite's write lock, a
//! PostgreSQL advisory lock) inside the write's transaction, so revisions commit in order and
//! the change feed after any restart must be exactly `1..=high`. A gate resumes
//! `WatchChanges(after = r)` from the last revision it saw; it could skip a change only if a
//! revision it saw were lost and then given to another change, or if a lower revision became
//! visible after a higher one. So the harness checks that the feed is contiguous, that every
//! event the watcher saw before a kill is still there with the same content, and that every
//! acknowledged revision is there with what was acknowledged.

use crate::child::{Process, Service};
use crate::common::{Bearer, subject};
use crate::{Rng, Scratch, Summary, died, kill_delay};
use consentgate_proto::common::v1::{SubjectRef, subject_ref};
use consentgate_proto::consent::v1 as pb;
use pb::consent_service_client::ConsentServiceClient;
use pb::watch_changes_response::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Client = ConsentServiceClient<InterceptedService<Channel, Bearer>>;

/// Concurrent writers: enough that the service's group commit batches them (issue 16), so that
/// most kills land with a batch in flight, its transaction begun or its commit under way.
const CLIENTS: u64 = 64;
/// Subjects written in one cycle (new ones every cycle, so that each subject's history is
/// complete, retries included, by the check after the next restart).
const SUBJECTS_PER_CYCLE: u64 = 32;
/// Consent-based purposes and their current notice versions (policy/default.toml).
const PURPOSES: [(&str, &str); 3] = [
    ("personalize.content.profiled", "2.0"),
    ("personalize.content.limited", "2.0"),
    ("analytics.reporting", "3.0"),
];
/// The load runs up to this long before the kill.
const MAX_LOAD_MS: u64 = 150;
/// One kill in this many also kills the next start before it serves.
const STARTUP_KILL_ONE_IN: u64 = 8;

/// A write as sent: its idempotency key is also its source's user agent, so that the history
/// shows which key each record came from.
#[derive(Debug, Clone)]
struct Sent {
    key: String,
    subject: String,
    /// Empty for a signal.
    purpose: String,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Grant(pb::GrantRequest),
    Withdraw(pb::WithdrawRequest),
    Signal(pb::RecordSignalRequest),
}

impl Sent {
    /// The change-feed kind of this write.
    fn kind(&self) -> &'static str {
        match self.op {
            Op::Grant(_) => "grant",
            Op::Withdraw(_) => "withdraw",
            Op::Signal(_) => "signal",
        }
    }
}

/// What the service acknowledged.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    revision: u64,
    record: Option<pb::ConsentRecord>,
}

/// A change-feed event, as compared.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    revision: u64,
    subject: String,
    kind: String,
    purpose: String,
}

/// Everything known across restarts.
#[derive(Default)]
struct State {
    /// The feed as verified so far, by revision.
    feed: BTreeMap<u64, Event>,
    /// Every resolved write (acknowledged, or resolved by a retry) with its answer, by subject.
    resolved: BTreeMap<String, Vec<(Sent, Answer)>>,
    /// Acknowledged writes not yet checked after a restart.
    unchecked: Vec<(Sent, Answer)>,
    high: u64,
}

impl State {
    fn resolve(&mut self, sent: Sent, answer: Answer) {
        self.resolved
            .entry(sent.subject.clone())
            .or_default()
            .push((sent, answer));
    }
}

fn id_of(subject: &Option<SubjectRef>) -> String {
    match subject.as_ref().and_then(|s| s.id.as_ref()) {
        Some(subject_ref::Id::SubjectId(s)) | Some(subject_ref::Id::DeviceId(s)) => s.clone(),
        None => String::new(),
    }
}

fn client(process: &Process, caller: &str) -> Client {
    ConsentServiceClient::with_interceptor(process.channel(), Bearer::caller(caller))
}

/// The `i`-th write of client `c` in `cycle`.
fn next_write(rng: &mut Rng, subjects: &[String], cycle: u32, c: u64, i: u64) -> Sent {
    let key = format!("crash-{cycle}-{c}-{i}");
    let who = subjects[rng.below(subjects.len() as u64) as usize].clone();
    let (purpose, notice) = PURPOSES[rng.below(PURPOSES.len() as u64) as usize];
    let target = Some(pb::ConsentTarget {
        subject: subject(&who),
        purpose: purpose.into(),
        ..Default::default()
    });
    let source = Some(pb::ConsentSource {
        ip_address: String::new(),
        user_agent: key.clone(),
    });
    let roll = rng.below(100);
    let (purpose, op) = if roll < 45 {
        let op = Op::Grant(pb::GrantRequest {
            target,
            consent_type: pb::ConsentType::Explicit as i32,
            collection_method: pb::CollectionMethod::Api as i32,
            notice_version: notice.into(),
            source,
            idempotency_key: key.clone(),
            ..Default::default()
        });
        (purpose, op)
    } else if roll < 85 {
        let op = Op::Withdraw(pb::WithdrawRequest {
            target,
            collection_method: pb::CollectionMethod::Api as i32,
            source,
            idempotency_key: key.clone(),
            ..Default::default()
        });
        (purpose, op)
    } else {
        let op = Op::Signal(pb::RecordSignalRequest {
            subject: subject(&who),
            kind: pb::SignalKind::Gpc as i32,
            value: if rng.below(2) == 0 { "1" } else { "0" }.into(),
            idempotency_key: key.clone(),
            collection_method: pb::CollectionMethod::Api as i32,
        });
        ("", op)
    };
    Sent {
        key,
        subject: who,
        purpose: purpose.into(),
        op,
    }
}

async fn send(client: &mut Client, sent: &Sent) -> Result<Answer, tonic::Status> {
    Ok(match &sent.op {
        Op::Grant(r) => {
            let a = client.grant(r.clone()).await?.into_inner();
            Answer {
                revision: a.revision,
                record: a.record,
            }
        }
        Op::Withdraw(r) => {
            let a = client.withdraw(r.clone()).await?.into_inner();
            Answer {
                revision: a.revision,
                record: a.record,
            }
        }
        Op::Signal(r) => {
            let a = client.record_signal(r.clone()).await?.into_inner();
            Answer {
                revision: a.revision,
                record: None,
            }
        }
    })
}

/// One client at full speed until the server dies: what was acknowledged, and the write in
/// flight when it died.
async fn write_until_killed(
    mut client: Client,
    mut rng: Rng,
    subjects: Arc<Vec<String>>,
    cycle: u32,
    c: u64,
) -> (Vec<(Sent, Answer)>, Sent) {
    let mut acked = Vec::new();
    let mut i = 0;
    loop {
        let sent = next_write(&mut rng, &subjects, cycle, c, i);
        match send(&mut client, &sent).await {
            Ok(answer) => acked.push((sent, answer)),
            Err(status) => {
                assert!(died(&status), "write {} failed: {status:?}", sent.key);
                return (acked, sent);
            }
        }
        i += 1;
    }
}

/// A gate's view: the change events it was sent before the kill.
async fn watch_until_killed(mut client: Client, after: u64, seen: Arc<Mutex<Vec<Event>>>) {
    let Ok(stream) = client
        .watch_changes(pb::WatchChangesRequest {
            after_revision: after,
            heartbeat_millis: 100,
        })
        .await
    else {
        return;
    };
    let mut stream = stream.into_inner();
    while let Ok(Some(m)) = stream.message().await {
        if let Some(Message::Change(c)) = m.message {
            seen.lock().expect("seen").push(event(c));
        }
    }
}

fn event(c: pb::ChangeEvent) -> Event {
    Event {
        revision: c.revision,
        subject: id_of(&c.subject),
        kind: c.kind,
        purpose: c.purpose,
    }
}

/// The change feed after `after`, read to its high water: (events, high water).
async fn read_feed(process: &Process, after: u64) -> (Vec<Event>, u64) {
    let mut c = client(process, "profile-service");
    let mut stream = c
        .watch_changes(pb::WatchChangesRequest {
            after_revision: after,
            heartbeat_millis: 100,
        })
        .await
        .expect("WatchChanges")
        .into_inner();
    let mut events: Vec<Event> = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("the change feed went silent")
            .expect("WatchChanges")
            .expect("the change feed ended");
        match m.message {
            Some(Message::Change(c)) => events.push(event(c)),
            Some(Message::Heartbeat(h)) => {
                let last = events.last().map_or(after, |e| e.revision);
                if h.high_water_revision >= last {
                    return (events, h.high_water_revision);
                }
            }
            None => {}
        }
    }
}

/// Asserts that `events` are exactly revisions `after+1..=high`, in order.
fn assert_contiguous(events: &[Event], after: u64, high: u64) {
    let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
    let expected: Vec<u64> = (after + 1..=high).collect();
    assert!(
        revisions == expected,
        "the change feed after {after} is not the gap-free 1..={high}: got {} events, first \
         differences {:?}",
        revisions.len(),
        revisions
            .iter()
            .zip(&expected)
            .filter(|(a, b)| a != b)
            .take(5)
            .collect::<Vec<_>>()
    );
}

/// Asserts that the feed holds `sent` at `answer.revision`.
fn assert_in_feed(feed: &BTreeMap<u64, Event>, sent: &Sent, answer: &Answer) {
    let e = feed.get(&answer.revision).unwrap_or_else(|| {
        panic!(
            "LOST: acknowledged write {} (revision {}) is not in the change feed",
            sent.key, answer.revision
        )
    });
    assert!(
        e.subject == sent.subject && e.kind == sent.kind() && e.purpose == sent.purpose,
        "acknowledged write {} at revision {} is {e:?} in the feed",
        sent.key,
        answer.revision
    );
}

/// A retry until the restarted service answers (it may still be warming its connections).
async fn retry(client: &mut Client, sent: &Sent) -> Answer {
    for _ in 0..50 {
        match send(client, sent).await {
            Ok(a) => return a,
            Err(s) if died(&s) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(s) => panic!("retry of {} failed: {s:?}", sent.key),
        }
    }
    panic!("retry of {} never answered", sent.key)
}

/// A subject's whole history: revision → record.
async fn history(process: &Process, who: &str) -> BTreeMap<u64, pb::ConsentRecord> {
    let mut c = client(process, "auditor");
    let mut out = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .list_consent_history(pb::ListConsentHistoryRequest {
                subject: subject(who),
                page_size: 500,
                page_token,
                ..Default::default()
            })
            .await
            .expect("ListConsentHistory")
            .into_inner();
        for r in page.records {
            let previous = out.insert(r.revision, r);
            assert!(previous.is_none(), "two history records share a revision");
        }
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

/// The checks after a restart: the acknowledged writes of the last cycle, the events the
/// watcher saw, the retries of what was in flight, each finished subject's history, the ledger.
async fn check_restart(
    process: &Process,
    state: &mut State,
    in_flight: Vec<Sent>,
    seen: Vec<Event>,
    finished: &[String],
    summary: &mut Summary,
) {
    let (events, high) = read_feed(process, state.high).await;
    assert_contiguous(&events, state.high, high);
    state
        .feed
        .extend(events.into_iter().map(|e| (e.revision, e)));
    for e in &seen {
        assert_eq!(
            state.feed.get(&e.revision),
            Some(e),
            "LOST: the watcher was sent revision {} before the kill; the feed now says otherwise",
            e.revision
        );
    }
    for (sent, answer) in std::mem::take(&mut state.unchecked) {
        assert_in_feed(&state.feed, &sent, &answer);
        state.resolve(sent, answer);
    }

    // Retries of what was in flight: the same answer twice; a revision already in the feed
    // means it had committed before the kill, a new one that it applied now.
    let mut pc = client(process, "preference-center");
    let mut applied = BTreeSet::new();
    for sent in in_flight {
        let first = retry(&mut pc, &sent).await;
        let second = retry(&mut pc, &sent).await;
        assert_eq!(
            first, second,
            "a second retry of {} answered differently",
            sent.key
        );
        if first.revision <= high {
            assert_in_feed(&state.feed, &sent, &first);
            summary.retried_committed += 1;
        } else {
            assert!(
                applied.insert(first.revision),
                "two retries share revision {}",
                first.revision
            );
            summary.retried_applied += 1;
        }
        state.resolve(sent.clone(), first.clone());
        state.unchecked.push((sent, first));
    }
    let (events, new_high) = read_feed(process, high).await;
    assert_contiguous(&events, high, new_high);
    assert_eq!(
        events.iter().map(|e| e.revision).collect::<BTreeSet<_>>(),
        applied,
        "the retries wrote other revisions than they answered"
    );
    state
        .feed
        .extend(events.into_iter().map(|e| (e.revision, e)));
    for (sent, answer) in std::mem::take(&mut state.unchecked) {
        assert_in_feed(&state.feed, &sent, &answer);
    }
    state.high = new_high;

    // Finished subjects (every key of theirs resolved): each grant or withdrawal key is in the
    // history exactly once, at its revision, with the acknowledged content; nothing else is.
    for who in finished {
        let records = history(process, who).await;
        let mine: Vec<&(Sent, Answer)> = state
            .resolved
            .get(who)
            .into_iter()
            .flatten()
            .filter(|(s, _)| s.kind() != "signal")
            .collect();
        assert_eq!(
            records.len(),
            mine.len(),
            "{who}: {} history records for {} consent writes (each key must apply once)",
            records.len(),
            mine.len()
        );
        for (sent, answer) in mine {
            let r = records.get(&answer.revision).unwrap_or_else(|| {
                panic!(
                    "LOST: {} (revision {}) is not in the history",
                    sent.key, answer.revision
                )
            });
            let acked = answer
                .record
                .as_ref()
                .expect("a consent write answers its record");
            let source = r.source.as_ref().map_or("", |s| s.user_agent.as_str());
            assert!(
                r.record_id == acked.record_id
                    && r.purpose == acked.purpose
                    && r.state == acked.state
                    && source == sent.key,
                "{} at revision {}: acknowledged {acked:?}, stored {r:?}",
                sent.key,
                answer.revision
            );
        }
    }

    let verified = client(process, "auditor")
        .verify_ledger(pb::VerifyLedgerRequest::default())
        .await
        .expect("VerifyLedger")
        .into_inner();
    assert!(verified.ok, "the ledger does not verify: {verified:?}");
    assert_eq!(
        verified.entries_checked, state.high,
        "one ledger entry per revision"
    );
}

/// The end: the whole feed again from revision 0, and each key applied once across the run.
async fn check_everything(process: &Process, state: &State) {
    let (events, high) = read_feed(process, 0).await;
    assert_eq!(high, state.high);
    assert_contiguous(&events, 0, high);
    let feed: BTreeMap<u64, Event> = events.into_iter().map(|e| (e.revision, e)).collect();
    assert!(feed == state.feed, "the feed changed since it was verified");
    let mut keys: BTreeMap<(String, &str), u64> = BTreeMap::new();
    for (sent, answer) in state.resolved.values().flatten() {
        assert_in_feed(&feed, sent, answer);
        *keys.entry((sent.subject.clone(), sent.kind())).or_default() += 1;
    }
    let mut changes: BTreeMap<(String, &str), u64> = BTreeMap::new();
    for e in feed.values() {
        let kind = ["grant", "withdraw", "signal"]
            .into_iter()
            .find(|k| *k == e.kind)
            .unwrap_or_else(|| panic!("unexpected change {e:?}"));
        *changes.entry((e.subject.clone(), kind)).or_default() += 1;
    }
    assert!(
        keys == changes,
        "changes per subject and kind differ from the keys sent (a key applied twice, or a \
         change nobody sent)"
    );
}

/// `crashes` kills of the consent service on the database at `url`.
pub async fn run(scratch: &Scratch, url: &str, crashes: u32, seed: u64) -> Summary {
    let mut service = Service::new(
        "consent",
        vec![
            "--metrics-listen".into(),
            "off".into(),
            "--database-url".into(),
            url.into(),
            "--tokens-file".into(),
            scratch.path("tokens.toml").display().to_string(),
            "--key-file".into(),
            scratch.path("consent.key").display().to_string(),
            "--create-key-file".into(),
        ],
        scratch.path("consent.log"),
    );
    let mut summary = Summary::default();
    let mut state = State::default();
    let mut in_flight: Vec<Sent> = Vec::new();
    let mut seen: Vec<Event> = Vec::new();
    let mut finished: Vec<String> = Vec::new();
    for cycle in 0..crashes {
        let mut rng = Rng::fork(seed, u64::from(cycle) << 8);
        let process = service.start().await;
        check_restart(
            &process,
            &mut state,
            std::mem::take(&mut in_flight),
            std::mem::take(&mut seen),
            &finished,
            &mut summary,
        )
        .await;

        let subjects: Arc<Vec<String>> = Arc::new(
            (0..SUBJECTS_PER_CYCLE)
                .map(|i| format!("crash-subject-{cycle}-{i}"))
                .collect(),
        );
        let watched = Arc::new(Mutex::new(Vec::new()));
        let watcher = tokio::spawn(watch_until_killed(
            client(&process, "profile-service"),
            state.high,
            watched.clone(),
        ));
        let writers: Vec<_> = (0..CLIENTS)
            .map(|c| {
                tokio::spawn(write_until_killed(
                    client(&process, "preference-center"),
                    Rng::fork(seed, (u64::from(cycle) << 8) + c + 1),
                    subjects.clone(),
                    cycle,
                    c,
                ))
            })
            .collect();
        tokio::time::sleep(kill_delay(&mut rng, MAX_LOAD_MS)).await;
        process.kill().await;
        summary.crashes += 1;
        for w in writers {
            let (acked, died_with) = w.await.expect("a writer panicked");
            summary.acknowledged_writes += acked.len() as u64;
            state.unchecked.extend(acked);
            in_flight.push(died_with);
        }
        watcher.await.expect("the watcher panicked");
        seen = std::mem::take(&mut *watched.lock().expect("seen"));
        finished = subjects.to_vec();

        if rng.below(STARTUP_KILL_ONE_IN) == 0 {
            let starting = service.spawn();
            tokio::time::sleep(kill_delay(&mut rng, 400)).await;
            starting.kill().await;
            summary.kills_starting += 1;
        }
    }
    let process = service.start().await;
    check_restart(
        &process,
        &mut state,
        in_flight,
        seen,
        &finished,
        &mut summary,
    )
    .await;
    check_everything(&process, &state).await;
    summary.final_revision = state.high;
    process.kill().await;
    summary
}
