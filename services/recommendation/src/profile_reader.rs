//! The only way personal data reaches the recommendation service: gated reads of the profile
//! service, as the caller `recommendation-service`, naming the purpose of the tier. Nothing read
//! here is stored; every call is counted, so tests can prove that the contextual and popular tiers
//! read nothing.

use consentgate_proto::common::v1::{RequestContext, SubjectRef};
use consentgate_proto::profile::v1 as ppb;
use consentgate_proto::profile::v1::profile_service_client::ProfileServiceClient;
use std::sync::atomic::{AtomicU64, Ordering};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

/// One event of a subject's history, as much as ranking needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryItem {
    /// The item.
    pub item_id: String,
    /// Whether it was bought (else viewed or carted).
    pub purchased: bool,
    /// When (µs since the epoch).
    pub at: i64,
}

/// What a profile read returned.
#[derive(Debug, Clone, Default)]
pub struct ProfileRead {
    /// Events, newest first.
    pub history: Vec<HistoryItem>,
    /// Stated preferences (attribute values and preference answers).
    pub preferences: Vec<String>,
    /// The decision revision the profile service read under.
    pub revision: u64,
}

/// Reads the profile service.
pub struct ProfileReader {
    client: ProfileServiceClient<Channel>,
    auth: MetadataValue<Ascii>,
    reads: AtomicU64,
}

impl ProfileReader {
    /// A reader of the profile service at `endpoint`, authenticated with `token`.
    pub fn new(endpoint: &str, token: &str) -> Result<ProfileReader, String> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| format!("profile endpoint {endpoint:?}: {e}"))?
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(ProfileReader {
            client: ProfileServiceClient::new(channel),
            auth: format!("Bearer {token}")
                .parse()
                .map_err(|_| "the token is not valid header text".to_owned())?,
            reads: AtomicU64::new(0),
        })
    }

    /// How many profile RPCs this reader has made.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.auth.clone());
        request.set_timeout(std::time::Duration::from_secs(2));
        request
    }

    /// Up to `limit` events of the given kinds, newest first, under `purpose`.
    pub async fn history(
        &self,
        subject: &SubjectRef,
        purpose: &str,
        kinds: &[ppb::EventKind],
        limit: u32,
        context: Option<RequestContext>,
        at_least_as_fresh: &str,
    ) -> Result<(Vec<HistoryItem>, u64), tonic::Status> {
        let r = self
            .client
            .clone()
            .list_events(self.request(ppb::ListEventsRequest {
                subject: Some(subject.clone()),
                purpose: purpose.to_owned(),
                kinds: kinds.iter().map(|k| *k as i32).collect(),
                page_size: limit,
                context,
                at_least_as_fresh: at_least_as_fresh.to_owned(),
                ..Default::default()
            }))
            .await?
            .into_inner();
        let history = r
            .events
            .into_iter()
            .filter(|e| !e.item_id.is_empty())
            .map(|e| HistoryItem {
                purchased: e.kind() == ppb::EventKind::Purchase,
                at: e
                    .occurred_at
                    .map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000),
                item_id: e.item_id,
            })
            .collect();
        Ok((history, r.decision.map_or(0, |d| d.revision)))
    }

    /// Stated preferences under `purpose`: the `user.preferences.stated` attributes and the
    /// preference-center answers.
    pub async fn preferences(
        &self,
        subject: &SubjectRef,
        purpose: &str,
        context: Option<RequestContext>,
        at_least_as_fresh: &str,
    ) -> Result<(Vec<String>, u64), tonic::Status> {
        let mut profile_client = self.client.clone();
        let mut answers_client = self.client.clone();
        let (profile, answers) = tokio::join!(
            profile_client.get_profile(self.request(ppb::GetProfileRequest {
                subject: Some(subject.clone()),
                purpose: purpose.to_owned(),
                data_categories: vec!["user.preferences.stated".into()],
                context: context.clone(),
                at_least_as_fresh: at_least_as_fresh.to_owned(),
            })),
            answers_client.get_answers(self.request(ppb::GetAnswersRequest {
                subject: Some(subject.clone()),
                purpose: purpose.to_owned(),
                context,
                at_least_as_fresh: at_least_as_fresh.to_owned(),
            })),
        );
        let (profile, answers) = (profile?.into_inner(), answers?.into_inner());
        let mut preferences: Vec<String> =
            profile.attributes.into_iter().map(|a| a.value).collect();
        preferences.extend(
            answers
                .answers
                .into_iter()
                .filter(|a| a.kind() == ppb::AnswerKind::Preference)
                .map(|a| a.answer),
        );
        Ok((preferences, profile.decision.map_or(0, |d| d.revision)))
    }
}

/// A convenience for ranking: a profile read with both parts.
impl ProfileRead {
    /// Items the subject bought.
    pub fn purchased(&self) -> impl Iterator<Item = &str> {
        self.history
            .iter()
            .filter(|h| h.purchased)
            .map(|h| h.item_id.as_str())
    }
}
