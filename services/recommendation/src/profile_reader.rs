//! The only way personal data reaches the recommendation service: gated reads of the profile
//! service, as the caller `recommendation-service`, naming the purpose of the tier. Nothing read
//! here is stored; every call is counted, so tests can prove that the contextual and popular tiers
//! read nothing.

use consentgate_proto::common::v1::{RequestContext, SubjectRef};
use consentgate_proto::profile::v1 as ppb;
use consentgate_proto::profile::v1::profile_service_client::ProfileServiceClient;
use consentgate_runtime::tls::Dialer;
use std::sync::atomic::{AtomicU64, Ordering};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

/// The event fields a history read asks for: what [`HistoryItem`] holds.
const HISTORY_FIELDS: [&str; 3] = ["item_id", "kind", "occurred_at"];

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
    /// `None` when this service is known by its client certificate.
    auth: Option<MetadataValue<Ascii>>,
    reads: AtomicU64,
}

impl ProfileReader {
    /// A reader of the profile service at `endpoint`, connecting through `dialer` and
    /// authenticated with `token` (empty: by the dialer's client certificate alone).
    pub fn new(endpoint: &str, token: &str, dialer: &Dialer) -> Result<ProfileReader, String> {
        let channel = dialer
            .target(endpoint)
            .map_err(|e| format!("profile endpoint: {e}"))?
            .configure(|endpoint| endpoint.tcp_nodelay(true))
            .connect_lazy();
        let auth = match token {
            "" => None,
            token => Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| "the token is not valid header text".to_owned())?,
            ),
        };
        Ok(ProfileReader {
            client: ProfileServiceClient::new(channel),
            auth,
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
        if let Some(auth) = &self.auth {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        consentgate_runtime::traces::inject(request.metadata_mut());
        request.set_timeout(consentgate_deadline::budget(
            std::time::Duration::from_secs(2),
        ));
        request
    }

    /// One gated read under `purpose` (one consent decision, one access-log entry): up to
    /// `history.1` events of the kinds `history.0`, newest first, when `history` is given; the
    /// stated preferences (the `user.preferences.stated` attributes and the preference-center
    /// answers) when `preferences` is set.
    pub async fn read(
        &self,
        subject: &SubjectRef,
        purpose: &str,
        history: Option<(&[ppb::EventKind], u32)>,
        preferences: bool,
        context: Option<RequestContext>,
        at_least_as_fresh: &str,
    ) -> Result<ProfileRead, tonic::Status> {
        let r = self
            .client
            .clone()
            .read_subject(self.request(ppb::ReadSubjectRequest {
                subject: Some(subject.clone()),
                purpose: purpose.to_owned(),
                context,
                at_least_as_fresh: at_least_as_fresh.to_owned(),
                attributes: preferences.then(|| ppb::AttributeSelector {
                    data_categories: vec!["user.preferences.stated".into()],
                }),
                events: history.map(|(kinds, limit)| ppb::EventSelector {
                    kinds: kinds.iter().map(|k| *k as i32).collect(),
                    limit,
                    // Only what ranking uses: less personal data on the wire, and a fraction
                    // of the read's cost.
                    read_mask: Some(prost_types::FieldMask {
                        paths: HISTORY_FIELDS.iter().map(|f| (*f).to_owned()).collect(),
                    }),
                }),
                answers: preferences.then(|| ppb::AnswerSelector {
                    kinds: vec![ppb::AnswerKind::Preference as i32],
                }),
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
        let mut preferences: Vec<String> = r.attributes.into_iter().map(|a| a.value).collect();
        preferences.extend(r.answers.into_iter().map(|a| a.answer));
        Ok(ProfileRead {
            history,
            preferences,
            revision: r.decision.map_or(0, |d| d.revision),
        })
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
