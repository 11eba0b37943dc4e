//! Every request validator of the three services, behind one target: the first byte of the input
//! picks an RPC, the rest is decoded as that RPC's request message with prost (what the server's
//! codec does), and the decoded message goes to the validator the RPC's handler calls first.
//!
//! What must hold, whatever the bytes:
//! - no panic, in decoding or validation;
//! - a rejection is `INVALID_ARGUMENT` (a validator that accepts nothing and names nothing says
//!   `INTERNAL`: a bug), with a message and details of bounded size, so that a hostile value
//!   never swells the trailers (docs/architecture.md; `runtime::errors`);
//! - a Check, BatchCheck or Explain the validator accepts is one the decision function can
//!   decide: validation is rule 1, so deciding it (on an empty subject) never fails.
//!
//! Bytes prost cannot decode are the codec's business (`MALFORMED_REQUEST`), not a validator's:
//! they end the input.

use crate::{Budget, Target};
use consentgate_consent::convert as consent;
use consentgate_policy::{Policy, SubjectState, decide};
use consentgate_profile::convert as profile;
use consentgate_proto::consent::v1 as consent_pb;
use consentgate_proto::profile::v1 as profile_pb;
use consentgate_proto::recommendation::v1 as recommendation_pb;
use consentgate_recommendation::convert as recommendation;
use consentgate_runtime::CallerIdentity;
use prost::Message;
use std::sync::OnceLock;
use time::OffsetDateTime;
use tonic::{Code, Status};

/// The request validators target.
pub const TARGET: Target = Target {
    name: "request_validators",
    run,
    // Requests over the services' bounds are rejected by count and length checks first; 64 KB
    // reaches past every per-field bound (a 4 KB value, 1000 events of a few bytes).
    max_len: 64 * 1024,
    // A decoded message holds its strings and vectors (a few times the bytes); a BatchCheck of
    // many small checks validates each, with a query per check.
    budget: Budget {
        fixed: 8 << 20,
        per_input_byte: 256,
    },
};

/// Longest status message a rejection may carry (`runtime::errors` bounds it to 1024 bytes).
const MAX_MESSAGE_BYTES: usize = 1024;
/// Longest encoded details a rejection may carry: 20 violations of at most 128 + 256 bytes, an
/// `ErrorInfo` and framing fit well under it.
const MAX_DETAILS_BYTES: usize = 16 * 1024;

/// What the validators are given besides the request: the shipped policy and an enforcer (the
/// caller whose Check may name `on_behalf_of`).
struct Fixture {
    policy: Policy,
    caller: CallerIdentity,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| Fixture {
        policy: Policy::default_policy().expect("the shipped policy loads"),
        caller: CallerIdentity {
            name: "profile-service".into(),
            roles: vec!["enforcer".into()],
        },
    })
}

/// One RPC: decodes its request from the bytes (None: prost could not) and validates it.
type Validate = fn(&Fixture, &[u8]) -> Option<Result<(), Status>>;

/// Decodes `bytes` as `M` and hands it to `validate`, keeping only whether it passed.
fn with<M: Message + Default, T>(
    bytes: &[u8],
    validate: impl FnOnce(M) -> Result<T, Status>,
) -> Option<Result<(), Status>> {
    let request = M::decode(bytes).ok()?;
    Some(validate(request).map(drop))
}

/// Every RPC whose handler validates its request, by service. (ListSigningKeys, GetStats,
/// VerifyAccessLog and the profile's ReapplyErasures take no input to validate.)
const RPCS: &[(&str, Validate)] = &[
    // consent.v1.ConsentService
    ("consent.Grant", |f, b| {
        with(b, |r: consent_pb::GrantRequest| {
            consent::grant(&f.policy, &r)
        })
    }),
    ("consent.Refuse", |f, b| {
        with(b, |r: consent_pb::RefuseRequest| {
            consent::refuse(&f.policy, &r)
        })
    }),
    ("consent.Withdraw", |f, b| {
        with(b, |r: consent_pb::WithdrawRequest| {
            consent::withdraw(&f.policy, &r)
        })
    }),
    ("consent.RecordSignal", |_, b| {
        with(b, |r: consent_pb::RecordSignalRequest| {
            consent::record_signal(&r)
        })
    }),
    ("consent.LinkIdentity", |_, b| {
        with(b, |r: consent_pb::LinkIdentityRequest| consent::link(&r))
    }),
    ("consent.GetConsents", |_, b| {
        with(b, |r: consent_pb::GetConsentsRequest| {
            consent::subject_of(r.subject.as_ref())
        })
    }),
    ("consent.ListConsentHistory", |_, b| {
        with(b, |r: consent_pb::ListConsentHistoryRequest| {
            consent::history(&r)
        })
    }),
    ("consent.Check", |f, b| {
        with(b, |r: consent_pb::CheckRequest| {
            let ask = consent::check(&f.policy, &f.caller, &r)?;
            decidable(f, &ask.decider, &ask.query);
            Ok(())
        })
    }),
    ("consent.BatchCheck", |f, b| {
        with(b, |r: consent_pb::BatchCheckRequest| {
            let asks = consent::batch_check(&f.policy, &f.caller, &r)?;
            assert_eq!(asks.len(), r.checks.len(), "one ask per check");
            for ask in &asks {
                decidable(f, &ask.decider, &ask.query);
            }
            Ok(())
        })
    }),
    ("consent.Explain", |f, b| {
        with(b, |r: consent_pb::ExplainRequest| {
            let query = consent::explain(&f.policy, &f.caller, &r)?;
            decidable(f, &r.as_caller, &query);
            Ok(())
        })
    }),
    ("consent.GetReceipt", |_, b| {
        with(b, |r: consent_pb::GetReceiptRequest| {
            consent::receipt(&r).map(drop)
        })
    }),
    ("consent.WatchChanges", |_, b| {
        with(b, |r: consent_pb::WatchChangesRequest| consent::watch(&r))
    }),
    ("consent.EraseSubject", |_, b| {
        with(b, |r: consent_pb::EraseSubjectRequest| consent::erase(&r))
    }),
    ("consent.FindErased", |_, b| {
        with(b, |r: consent_pb::FindErasedRequest| {
            consent::find_erased(&r)
        })
    }),
    ("consent.ListErasures", |_, b| {
        with(b, |r: consent_pb::ListErasuresRequest| {
            consent::list_erasures(&r)
        })
    }),
    ("consent.ReapplyErasures", |_, b| {
        with(b, |r: consent_pb::ReapplyErasuresRequest| {
            consent::reapply_erasures(&r)
        })
    }),
    ("consent.RestrictProcessing", |_, b| {
        with(b, |r: consent_pb::RestrictProcessingRequest| {
            consent::restrict(&r)
        })
    }),
    // profile.v1.ProfileService
    ("profile.SetAttributes", |f, b| {
        with(b, |r: profile_pb::SetAttributesRequest| {
            profile::set_attributes(&f.policy, r)
        })
    }),
    ("profile.SubmitAnswers", |f, b| {
        with(b, |r: profile_pb::SubmitAnswersRequest| {
            profile::submit_answers(&f.policy, r)
        })
    }),
    ("profile.RecordEvents", |f, b| {
        with(b, |r: profile_pb::RecordEventsRequest| {
            profile::record_events(&f.policy, r)
        })
    }),
    ("profile.GetProfile", |f, b| {
        with(b, |r: profile_pb::GetProfileRequest| {
            profile::get_profile(&f.policy, r)
        })
    }),
    ("profile.ListEvents", |f, b| {
        with(b, |r: profile_pb::ListEventsRequest| {
            profile::list_events(&f.policy, r)
        })
    }),
    ("profile.GetAnswers", |f, b| {
        with(b, |r: profile_pb::GetAnswersRequest| {
            profile::get_answers(&f.policy, r)
        })
    }),
    ("profile.ReadSubject", |f, b| {
        with(b, |r: profile_pb::ReadSubjectRequest| {
            profile::read_subject(&f.policy, r)
        })
    }),
    ("profile.GetAccessReport", |_, b| {
        with(b, |r: profile_pb::GetAccessReportRequest| {
            profile::subject(r.subject)
        })
    }),
    ("profile.ExportSubjectData", |_, b| {
        with(b, |r: profile_pb::ExportSubjectDataRequest| {
            profile::subject(r.subject)
        })
    }),
    ("profile.RectifyAttribute", |_, b| {
        with(b, |r: profile_pb::RectifyAttributeRequest| {
            profile::rectify(r)
        })
    }),
    ("profile.EraseSubject", |_, b| {
        with(b, |r: profile_pb::EraseSubjectRequest| profile::erase(r))
    }),
    ("profile.GetErasureStatus", |_, b| {
        with(b, |r: profile_pb::GetErasureStatusRequest| {
            profile::erasure_status_request(r)
        })
    }),
    ("profile.GetRequestStatus", |_, b| {
        with(b, |r: profile_pb::GetRequestStatusRequest| {
            profile::request_status_request(r)
        })
    }),
    // recommendation.v1.RecommendationService
    ("recommendation.Recommend", |_, b| {
        with(b, |r: recommendation_pb::RecommendRequest| {
            recommendation::recommend(r)
        })
    }),
    ("recommendation.RecordOutcome", |_, b| {
        with(b, |r: recommendation_pb::RecordOutcomeRequest| {
            recommendation::record_outcome(r)
        })
    }),
    ("recommendation.LoadCatalog", |_, b| {
        with(b, |r: recommendation_pb::LoadCatalogRequest| {
            recommendation::load_catalog(&r)
        })
    }),
    ("recommendation.Unlearn", |_, b| {
        with(b, |r: recommendation_pb::UnlearnRequest| {
            recommendation::unlearn(&r)
        })
    }),
    // Added last, so that the corpus's first bytes keep picking the RPCs they picked.
    ("consent.VerifyLedger", |_, b| {
        with(b, |r: consent_pb::VerifyLedgerRequest| {
            consent::verify_start(&r)
        })
    }),
];

/// The first byte that picks RPC `name` (`consent.Check`…): for writing seeds.
pub fn rpc_index(name: &str) -> Option<u8> {
    RPCS.iter()
        .position(|(n, _)| *n == name)
        .and_then(|i| u8::try_from(i).ok())
}

/// The RPC first byte `index` picks, below the number of RPCs: for writing seeds.
pub fn rpc_name(index: u8) -> Option<&'static str> {
    RPCS.get(usize::from(index)).map(|(name, _)| *name)
}

fn run(data: &[u8]) {
    let Some((&pick, request)) = data.split_first() else {
        return;
    };
    let (name, validate) = RPCS[usize::from(pick) % RPCS.len()];
    let Some(Err(status)) = validate(fixture(), request) else {
        return;
    };
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "{name}: a rejection must be INVALID_ARGUMENT: {status:?}"
    );
    assert!(
        status.message().len() <= MAX_MESSAGE_BYTES,
        "{name}: a {}-byte status message",
        status.message().len()
    );
    assert!(
        status.details().len() <= MAX_DETAILS_BYTES,
        "{name}: {} bytes of status details",
        status.details().len()
    );
}

/// A validated check must be decidable: rule 1 (unknown purpose, category, jurisdiction or
/// channel) is exactly what validation checked.
fn decidable(f: &Fixture, decider: &str, query: &consentgate_consent::engine::CheckQuery) {
    let input = consentgate_policy::CheckInput {
        now: OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("a fixed time"),
        ..query.input(decider)
    };
    match decide(&f.policy, &input, &SubjectState::default()) {
        Ok(decision) => assert_eq!(
            decision.categories.len(),
            query.categories.len().max(1),
            "one verdict per category asked"
        ),
        Err(e) => panic!("a validated check does not decide: {e}"),
    }
}
