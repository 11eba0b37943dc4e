//! What the load generator sends: seeded subjects, Grant/Check/BatchCheck requests and the
//! authenticated gRPC clients (one HTTP/2 connection each, TCP_NODELAY) that send them.

use consentgate_proto::common::v1 as common;
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient;
use std::net::SocketAddr;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

/// The purpose every seeded subject consents to and every Check asks about.
pub const PURPOSE: &str = "personalize.content.profiled";
/// The purpose's current notice version in `policy/default.toml`.
pub const NOTICE_VERSION: &str = "2.0";
/// Non-sensitive categories `personalize.content.profiled` needs; a Check asks for 2 or 3.
pub const CATEGORIES: [&str; 6] = [
    "user.preferences.stated",
    "user.survey.answers",
    "user.behavior.browsing_history",
    "user.behavior.search_history",
    "user.behavior.purchase_history",
    "user.location.coarse",
];
/// Checks per BatchCheck call (the API's maximum).
pub const BATCH_CHECKS: usize = 1000;
/// Categories per check in a BatchCheck call.
pub const BATCH_CATEGORIES: usize = 3;

/// SplitMix64: a small, seeded, reproducible generator (no cryptographic use).
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The seeded subjects: ids unique to this run, so repeated runs against one database never collide.
#[derive(Clone)]
pub struct Subjects {
    prefix: String,
    count: usize,
}

impl Subjects {
    /// `count` subjects named after `run_id`.
    pub fn new(run_id: &str, count: usize) -> Subjects {
        Subjects {
            prefix: format!("bench-{run_id}"),
            count,
        }
    }

    /// How many there are.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The subject id of subject `i`.
    pub fn id(&self, i: usize) -> String {
        format!("{}-{i:07}", self.prefix)
    }

    /// A reference to subject `i`.
    pub fn subject_ref(&self, i: usize) -> common::SubjectRef {
        common::SubjectRef {
            id: Some(common::subject_ref::Id::SubjectId(self.id(i))),
        }
    }
}

/// An explicit, purpose-wide grant of [`PURPOSE`] for subject `i`.
pub fn grant_request(subjects: &Subjects, i: usize) -> pb::GrantRequest {
    pb::GrantRequest {
        target: Some(pb::ConsentTarget {
            subject: Some(subjects.subject_ref(i)),
            purpose: PURPOSE.to_owned(),
            data_category: String::new(),
            channel: String::new(),
        }),
        consent_type: pb::ConsentType::Explicit as i32,
        collection_method: pb::CollectionMethod::PreferenceCenter as i32,
        jurisdiction: String::new(),
        notice_version: NOTICE_VERSION.to_owned(),
        expires_at: None,
        source: Some(pb::ConsentSource {
            ip_address: "192.0.2.10".to_owned(),
            user_agent: "consentgate-bench/loadgen".to_owned(),
        }),
        guardian_ref: String::new(),
        idempotency_key: format!("{}-grant", subjects.id(i)),
        language: "en".to_owned(),
    }
}

/// A Check of [`PURPOSE`] for subject `i` with `n` distinct categories drawn from [`CATEGORIES`].
pub fn check_for(subjects: &Subjects, i: usize, n: usize, rng: &mut Rng) -> pb::CheckRequest {
    let mut pool = CATEGORIES;
    // Partial Fisher–Yates: the first `n` entries become a random sample without repetition.
    for k in 0..n {
        let j = k + rng.below(pool.len() - k);
        pool.swap(k, j);
    }
    pb::CheckRequest {
        subject: Some(subjects.subject_ref(i)),
        purpose: PURPOSE.to_owned(),
        data_categories: pool[..n].iter().map(|c| (*c).to_owned()).collect(),
        channel: String::new(),
        context: None,
        at_least_as_fresh: String::new(),
        on_behalf_of: String::new(),
        include_explanation: false,
    }
}

/// A Check of a random seeded subject with 2 or 3 categories.
pub fn random_check(subjects: &Subjects, rng: &mut Rng) -> pb::CheckRequest {
    let i = rng.below(subjects.count());
    let n = 2 + rng.below(2);
    check_for(subjects, i, n, rng)
}

/// A BatchCheck of [`BATCH_CHECKS`] random subjects × [`BATCH_CATEGORIES`] categories.
pub fn random_batch(subjects: &Subjects, rng: &mut Rng) -> pb::BatchCheckRequest {
    pb::BatchCheckRequest {
        checks: (0..BATCH_CHECKS)
            .map(|_| {
                let i = rng.below(subjects.count());
                check_for(subjects, i, BATCH_CATEGORIES, rng)
            })
            .collect(),
    }
}

/// The bearer tokens of the two callers the benchmark acts as.
#[derive(Clone)]
pub struct Tokens {
    /// `preference-center` (role preference_center): records consent.
    pub preference_center: String,
    /// `recommendation-service` (role enforcer, purposes `personalize.*`): checks.
    pub enforcer: String,
}

/// Clients over one HTTP/2 connection, with the callers' `authorization` metadata ready (none
/// over mutual TLS, where the connection's client certificate says who calls).
#[derive(Clone)]
pub struct Clients {
    consent: ConsentServiceClient<Channel>,
    health: HealthClient<Channel>,
    preference_center: Option<MetadataValue<Ascii>>,
    enforcer: Option<MetadataValue<Ascii>>,
}

fn bearer(token: &str) -> anyhow::Result<MetadataValue<Ascii>> {
    Ok(format!("Bearer {token}").parse()?)
}

fn authed<T>(message: T, token: Option<&MetadataValue<Ascii>>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", token.clone());
    }
    request
}

impl Clients {
    /// Opens one HTTP/2 connection (TCP_NODELAY) to `addr`.
    pub async fn connect(addr: std::net::SocketAddr, tokens: &Tokens) -> anyhow::Result<Clients> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        Clients::over(channel, Some(tokens))
    }

    /// Clients over `channel` (connected or lazy), sending `tokens` as bearer tokens, or no
    /// token at all (`None`: the channel presents a client certificate instead).
    pub fn over(channel: Channel, tokens: Option<&Tokens>) -> anyhow::Result<Clients> {
        Ok(Clients {
            consent: ConsentServiceClient::new(channel.clone())
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
            health: HealthClient::new(channel),
            preference_center: tokens.map(|t| bearer(&t.preference_center)).transpose()?,
            enforcer: tokens.map(|t| bearer(&t.enforcer)).transpose()?,
        })
    }

    /// Opens `n` independent connections.
    pub async fn connect_many(
        addr: SocketAddr,
        tokens: &Tokens,
        n: usize,
    ) -> anyhow::Result<Vec<Clients>> {
        let mut all = Vec::with_capacity(n);
        for _ in 0..n {
            all.push(Clients::connect(addr, tokens).await?);
        }
        Ok(all)
    }

    /// `grpc.health.v1.Health/Check` of the whole server; an error unless SERVING. Sends the
    /// enforcer's token too, so both RPCs carry the same metadata (health ignores it).
    pub async fn health(&mut self) -> Result<(), Status> {
        let request = authed(
            HealthCheckRequest {
                service: String::new(),
            },
            self.enforcer.as_ref(),
        );
        let status = self.health.check(request).await?.into_inner().status;
        if status == ServingStatus::Serving as i32 {
            Ok(())
        } else {
            Err(Status::unavailable(format!("health status {status}")))
        }
    }

    /// `ConsentService/Check` as `recommendation-service`.
    pub async fn check(&mut self, request: pb::CheckRequest) -> Result<pb::CheckResponse, Status> {
        Ok(self
            .consent
            .check(authed(request, self.enforcer.as_ref()))
            .await?
            .into_inner())
    }

    /// `ConsentService/BatchCheck` as `recommendation-service`.
    pub async fn batch_check(
        &mut self,
        request: pb::BatchCheckRequest,
    ) -> Result<pb::BatchCheckResponse, Status> {
        Ok(self
            .consent
            .batch_check(authed(request, self.enforcer.as_ref()))
            .await?
            .into_inner())
    }

    /// `ConsentService/Grant` as `preference-center`.
    pub async fn grant(&mut self, request: pb::GrantRequest) -> Result<pb::GrantResponse, Status> {
        Ok(self
            .consent
            .grant(authed(request, self.preference_center.as_ref()))
            .await?
            .into_inner())
    }
}

/// Whether every requested category of a Check was allowed (every seeded subject consented).
pub fn all_allowed(response: &pb::CheckResponse, categories: usize) -> bool {
    response.verdict == pb::Verdict::Allow as i32
        && response.categories.len() == categories
        && response.categories.iter().all(|c| c.allowed)
}
