//! The mixed load: people who grant, have data collected, are read by a mailer and get
//! recommendations, withdraw, are read again (with and without the withdrawal's token), and grant
//! again, over and over; plus readers that go to each profile replica directly, so that a read
//! through *every* replica is checked, not only the ones the Service happens to pick.
//!
//! Every write is retried with the same idempotency key until it is acknowledged (a write in
//! flight when a replica dies may or may not have committed; only an acknowledged one is a
//! promise), and every read is recorded in the [`Journal`] with its times and outcome.

use crate::journal::{Ack, Journal, Outcome, Read, ReadKind, Stored};
use consentgate_proto::common::v1::{DataSource, SubjectRef, subject_ref};
use consentgate_proto::consent::v1 as consent;
use consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient;
use consentgate_proto::profile::v1 as profile;
use consentgate_proto::profile::v1::profile_service_client::ProfileServiceClient;
use consentgate_proto::recommendation::v1 as rec;
use consentgate_proto::recommendation::v1::recommendation_service_client::RecommendationServiceClient;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Marketing e-mail: what the mailer reads (a `reader` under delegation).
pub const EMAIL: &str = "marketing.communications.email";
/// Limited personalization: what `Recommend` uses the person's stated preferences for.
pub const LIMITED: &str = "personalize.content.limited";
/// How long a write is retried before the rehearsal says the suite did not recover.
const WRITE_PATIENCE: Duration = Duration::from_secs(60);

/// Adds `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// A channel that connects when first used and reconnects after a failure (through a Service
/// address, possibly to another pod); over TLS when `tls` gives the trust bundle and the
/// service's name (a token caller's TLS: no client certificate).
fn channel(addr: SocketAddr, tls: Option<(&str, &str)>) -> Channel {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5));
    if let Some((ca_pem, service)) = tls {
        endpoint = endpoint
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca_pem))
                    .domain_name(service),
            )
            .expect("a TLS client configuration");
    }
    endpoint.connect_lazy()
}

/// Who the load calls as, and where.
#[derive(Clone)]
pub struct Callers {
    pub tokens: BTreeMap<String, String>,
    pub consent: SocketAddr,
    pub profile: SocketAddr,
    pub recommendation: SocketAddr,
    /// The trust bundle, when the services serve TLS (`prod-mtls`).
    pub ca_pem: Option<String>,
}

impl Callers {
    fn bearer(&self, caller: &str) -> Bearer {
        Bearer(
            format!("Bearer {}", self.tokens[caller])
                .parse()
                .expect("token"),
        )
    }
    /// A channel to `service` (its Service name, which its certificate carries) at `at`.
    pub fn channel(&self, service: &str, at: SocketAddr) -> Channel {
        channel(at, self.ca_pem.as_deref().map(|ca| (ca, service)))
    }
    pub fn consent(&self, caller: &str, at: SocketAddr) -> ConsentServiceClient<Authed> {
        ConsentServiceClient::with_interceptor(self.channel("consent", at), self.bearer(caller))
    }
    pub fn profile(&self, caller: &str, at: SocketAddr) -> ProfileServiceClient<Authed> {
        ProfileServiceClient::with_interceptor(self.channel("profile", at), self.bearer(caller))
    }
    pub fn recommendation(&self, caller: &str) -> RecommendationServiceClient<Authed> {
        RecommendationServiceClient::with_interceptor(
            self.channel("recommendation", self.recommendation),
            self.bearer(caller),
        )
    }
}

pub fn subject(id: &str) -> Option<SubjectRef> {
    Some(SubjectRef {
        id: Some(subject_ref::Id::SubjectId(id.to_owned())),
    })
}

/// Whether an error is what a fault causes (retry) rather than a bug in the request (fail).
pub fn transient(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(
        status.code(),
        Unavailable
            | DeadlineExceeded
            | Cancelled
            | Unknown
            | Internal
            | Aborted
            | ResourceExhausted
    )
}

/// Calls `op` until it succeeds; a transient error is retried until `patience` runs out, any
/// other fails the rehearsal.
pub async fn until_ok<T, F, Fut>(what: &str, patience: Duration, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + patience;
    loop {
        match op().await {
            Ok(v) => return v,
            Err(s) if transient(&s) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!(
                "{what}: {:?} {} (not acknowledged within {patience:?})",
                s.code(),
                s.message()
            ),
        }
    }
}

/// The profile pods the direct readers go to, kept current by the test.
pub type Directory = Arc<Mutex<Vec<(String, SocketAddr)>>>;

/// One person's life under load, cycle after cycle, until `stop`.
pub struct Person {
    pub id: String,
    pub callers: Callers,
    pub journal: Journal,
    pub lease: Duration,
}

impl Person {
    /// Grants or withdraws `purpose`, retried with one idempotency key until acknowledged.
    async fn consent_write(
        &self,
        pc: &mut ConsentServiceClient<Authed>,
        purpose: &'static str,
        grant: bool,
        key: String,
    ) -> Ack {
        {
            let sent = Instant::now();
            let target = Some(consent::ConsentTarget {
                subject: subject(&self.id),
                purpose: purpose.to_owned(),
                channel: if purpose == EMAIL {
                    "email".into()
                } else {
                    String::new()
                },
                ..Default::default()
            });
            let (record, revision) = if grant {
                let notice = if purpose == EMAIL { "1.2" } else { "2.0" };
                let r = until_ok("Grant", WRITE_PATIENCE, || {
                    let mut pc = pc.clone();
                    let request = consent::GrantRequest {
                        target: target.clone(),
                        consent_type: consent::ConsentType::Explicit as i32,
                        notice_version: notice.into(),
                        idempotency_key: key.clone(),
                        ..Default::default()
                    };
                    async move { pc.grant(request).await }
                })
                .await
                .into_inner();
                (r.record, r.revision)
            } else {
                let r = until_ok("Withdraw", WRITE_PATIENCE, || {
                    let mut pc = pc.clone();
                    let request = consent::WithdrawRequest {
                        target: target.clone(),
                        idempotency_key: key.clone(),
                        ..Default::default()
                    };
                    async move { pc.withdraw(request).await }
                })
                .await
                .into_inner();
                (r.record, r.revision)
            };
            let ack = Ack {
                subject: self.id.clone(),
                purpose,
                grant,
                record_id: record.map(|r| r.record_id).unwrap_or_default(),
                revision,
                sent,
                acked: Instant::now(),
            };
            self.journal.lock().acks.push(ack.clone());
            ack
        }
    }

    /// A gated read of the person's e-mail address by the mailer.
    async fn read_profile(
        &self,
        mailer: &mut ProfileServiceClient<Authed>,
        via: &str,
        token: Option<u64>,
    ) {
        let started = Instant::now();
        let answer = mailer
            .get_profile(profile::GetProfileRequest {
                subject: subject(&self.id),
                purpose: EMAIL.into(),
                data_categories: vec!["user.contact.email".into()],
                at_least_as_fresh: token.map(|t| t.to_string()).unwrap_or_default(),
                ..Default::default()
            })
            .await;
        record_profile_read(
            &self.journal,
            &self.id,
            via,
            token.is_some(),
            started,
            answer,
        );
    }

    /// A recommendation for the person.
    async fn recommend(
        &self,
        client: &mut RecommendationServiceClient<Authed>,
        token: Option<u64>,
    ) {
        let started = Instant::now();
        let answer = client
            .recommend(rec::RecommendRequest {
                subject: subject(&self.id),
                context: Some(rec::RecommendContext {
                    device: "mobile".into(),
                    region: "EU".into(),
                    ..Default::default()
                }),
                n: 3,
                at_least_as_fresh: token.map(|t| t.to_string()).unwrap_or_default(),
            })
            .await;
        let outcome = match answer {
            Ok(r) => match r.into_inner().tier() {
                rec::Tier::Profiled | rec::Tier::Limited | rec::Tier::Segment => Outcome::Data,
                other => Outcome::Nothing(other.as_str_name().to_owned()),
            },
            Err(s) => Outcome::Failed(s.code()),
        };
        self.journal.lock().reads.push(Read {
            subject: self.id.clone(),
            kind: ReadKind::Recommend,
            via: "recommendation (Service)".into(),
            token: token.is_some(),
            started,
            ended: Instant::now(),
            outcome,
        });
    }

    /// Cycles until `stop` (at least once): grant both purposes, collect an e-mail address and a stated
    /// preference, read, withdraw both, read with the token, read without it past the lease.
    pub async fn live(self, stop: Arc<AtomicBool>) {
        let c = &self.callers;
        let mut pc = c.consent("preference-center", c.consent);
        let collector = c.profile("collector", c.profile);
        let answers = c.profile("preference-center", c.profile);
        let mut mailer = c.profile("mailer", c.profile);
        // The shop's backend, as in production: the recommendation service asks consent on
        // its behalf.
        let mut recommender = c.recommendation("storefront");
        let mut cycle = 0u32;
        // At least one cycle, then until told to stop.
        loop {
            if cycle > 0 && stop.load(Ordering::Relaxed) {
                break;
            }
            cycle += 1;
            let id = self.id.clone();
            self.consent_write(&mut pc, EMAIL, true, format!("{id}-{cycle}-ge"))
                .await;
            self.consent_write(&mut pc, LIMITED, true, format!("{id}-{cycle}-gl"))
                .await;
            let email = format!("{id}.c{cycle}@rehearsal.invalid");
            collect("SetAttributes", &self.journal, &id, &email, true, || {
                let mut collector = collector.clone();
                let request = profile::SetAttributesRequest {
                    subject: subject(&id),
                    attributes: vec![profile::AttributeInput {
                        name: "email".into(),
                        value: email.clone(),
                        data_category: "user.contact.email".into(),
                        source: DataSource::ZeroParty as i32,
                        purpose: EMAIL.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                async move {
                    collector
                        .set_attributes(request)
                        .await
                        .map(|r| r.into_inner().results)
                }
            })
            .await;
            let answer = format!("{id}-likes-{cycle}");
            collect("SubmitAnswers", &self.journal, &id, &answer, false, || {
                let mut answers = answers.clone();
                let request = profile::SubmitAnswersRequest {
                    subject: subject(&id),
                    purpose: LIMITED.into(),
                    answers: vec![profile::AnswerInput {
                        kind: profile::AnswerKind::Preference as i32,
                        question_id: format!("fav-{cycle}"),
                        question: "Your favourite sport?".into(),
                        answer: answer.clone(),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                async move {
                    answers
                        .submit_answers(request)
                        .await
                        .map(|r| r.into_inner().results)
                }
            })
            .await;
            for _ in 0..3 {
                self.read_profile(&mut mailer, "profile (Service)", None)
                    .await;
            }
            self.recommend(&mut recommender, None).await;
            let email_withdrawn = self
                .consent_write(&mut pc, EMAIL, false, format!("{id}-{cycle}-we"))
                .await;
            let limited_withdrawn = self
                .consent_write(&mut pc, LIMITED, false, format!("{id}-{cycle}-wl"))
                .await;
            // With the withdrawal's revision: never the data, whichever replica answers.
            self.read_profile(
                &mut mailer,
                "profile (Service)",
                Some(email_withdrawn.revision),
            )
            .await;
            self.recommend(&mut recommender, Some(limited_withdrawn.revision))
                .await;
            // Without it, until past the lease: the data may linger only within it.
            let until = limited_withdrawn.acked + self.lease + Duration::from_millis(300);
            let mut n = 0u32;
            while Instant::now() < until {
                self.read_profile(&mut mailer, "profile (Service)", None)
                    .await;
                if n.is_multiple_of(4) {
                    self.recommend(&mut recommender, None).await;
                }
                n += 1;
                // Pacing, so that a 2-core machine keeps room for the replicas themselves.
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
}

/// Writes one item to the profile service until it is accepted; a rejection for lack of consent
/// is what a gate with a cached denial answers until the grant's change arrives, and is retried.
async fn collect<F, Fut>(
    what: &str,
    journal: &Journal,
    subject: &str,
    value: &str,
    attribute: bool,
    mut op: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<profile::ItemResult>, tonic::Status>>,
{
    let deadline = Instant::now() + WRITE_PATIENCE;
    loop {
        let results = until_ok(what, WRITE_PATIENCE, &mut op).await;
        let result = results.first().expect("one item result");
        if result.accepted {
            break;
        }
        assert!(
            matches!(result.reason.as_str(), "NO_CONSENT" | "WITHDRAWN"),
            "{what} rejected for {}: {}",
            result.reason,
            result.detail
        );
        assert!(
            Instant::now() < deadline,
            "{what} was still rejected ({}) {WRITE_PATIENCE:?} after the grant was acknowledged",
            result.reason
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    journal.lock().stored.push(Stored {
        subject: subject.to_owned(),
        value: value.to_owned(),
        attribute,
    });
}

/// Records a mailer's read: whether it returned the person's address (and only theirs).
fn record_profile_read(
    journal: &Journal,
    subject: &str,
    via: &str,
    token: bool,
    started: Instant,
    answer: Result<tonic::Response<profile::GetProfileResponse>, tonic::Status>,
) {
    let ended = Instant::now();
    let mut j = journal.lock();
    let outcome = match answer {
        Ok(r) => {
            let r = r.into_inner();
            let mine = format!("{subject}.c");
            for a in &r.attributes {
                if !a.value.starts_with(&mine) {
                    j.foreign.push(a.value.clone());
                }
            }
            if r.attributes.is_empty() {
                Outcome::Nothing(
                    r.decision
                        .map(|d| d.reason)
                        .filter(|r| !r.is_empty())
                        .unwrap_or_else(|| "NO_DATA".into()),
                )
            } else {
                Outcome::Data
            }
        }
        Err(s) => Outcome::Failed(s.code()),
    };
    j.reads.push(Read {
        subject: subject.to_owned(),
        kind: ReadKind::Profile,
        via: via.to_owned(),
        token,
        started,
        ended,
        outcome,
    });
}

/// Reads people's addresses through each profile pod in turn, directly, until `stop`.
pub async fn read_every_replica(
    callers: Callers,
    people: Vec<String>,
    directory: Directory,
    journal: Journal,
    stop: Arc<AtomicBool>,
) {
    let mut clients: BTreeMap<String, ProfileServiceClient<Authed>> = BTreeMap::new();
    let mut turn = 0usize;
    while !stop.load(Ordering::Relaxed) {
        turn += 1;
        let pods = directory.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if pods.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let (pod, addr) = &pods[turn % pods.len()];
        let subject = &people[(turn / pods.len()) % people.len()];
        let client = clients
            .entry(pod.clone())
            .or_insert_with(|| callers.profile("mailer", *addr));
        let started = Instant::now();
        let answer = client
            .get_profile(profile::GetProfileRequest {
                subject: self::subject(subject),
                purpose: EMAIL.into(),
                data_categories: vec!["user.contact.email".into()],
                ..Default::default()
            })
            .await;
        record_profile_read(&journal, subject, pod, false, started, answer);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
