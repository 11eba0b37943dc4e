//! Protobuf ⇄ domain for the recommendation service, and request validation that names each bad
//! field (through [`Violations`]). What a valid request *means* lives in [`crate::service`].

use crate::catalog::Catalog;
use crate::ranking::Moment;
use crate::service::{Outcome, OutcomeKind, RecommendAsk, Recommendation};
use crate::store::TierTotals;
use crate::tier::Tier;
use consentgate_gate::subject_key;
use consentgate_proto::common::v1::subject_ref::Id;
use consentgate_proto::limits;
use consentgate_proto::recommendation::v1 as pb;
use consentgate_runtime::errors::Violations;
use tonic::Status;

/// Most items one Recommend may ask for.
const MAX_ITEMS: u32 = limits::MAX_RECOMMENDED_ITEMS;
/// Items returned when a Recommend names no count.
const DEFAULT_ITEMS: usize = 10;
/// Longest context text (device, region, current item, weather) accepted.
const MAX_CONTEXT_TEXT: usize = limits::MAX_CONTEXT_TEXT_BYTES;
/// Most session items one Recommend may carry.
const MAX_SESSION_ITEMS: usize = limits::MAX_SESSION_ITEMS;

/// Validates a Recommend and builds the moment it ranks for (now, when the request names no
/// time). A bad `n` is answered alone, before anything else is looked at.
pub fn recommend(r: pb::RecommendRequest) -> Result<RecommendAsk, Status> {
    if r.n > MAX_ITEMS {
        let mut v = Violations::default();
        v.add("n", "at most 100 items");
        v.finish()?;
    }
    let mut v = Violations::default();
    let n = match r.n {
        0 => DEFAULT_ITEMS,
        n => n as usize,
    };
    let context = r.context.unwrap_or_default();
    let subject = match r.subject {
        Some(s) if s.id.is_some() => {
            if subject_key(&s).is_none() {
                v.add("subject", "subject_id or device_id must not be empty");
            } else if let Some(Id::SubjectId(id) | Id::DeviceId(id)) = &s.id {
                v.check_len("subject", id, limits::MAX_ID_BYTES);
            }
            Some(s)
        }
        _ => None,
    };
    for (field, text) in [
        ("context.device", &context.device),
        ("context.region", &context.region),
        ("context.current_item_id", &context.current_item_id),
        ("context.weather", &context.weather),
    ] {
        v.check(
            text.len() > MAX_CONTEXT_TEXT,
            field,
            "must be at most 256 bytes",
        );
    }
    v.check(
        !r.at_least_as_fresh.is_empty() && r.at_least_as_fresh.parse::<u64>().is_err(),
        "at_least_as_fresh",
        "must be a revision returned by a consent write (a decimal number)",
    );
    if v.check_count(
        "context.session_item_ids",
        context.session_item_ids.len(),
        MAX_SESSION_ITEMS,
    ) {
        for (i, item) in context.session_item_ids.iter().enumerate() {
            v.check_len(
                &format!("context.session_item_ids[{i}]"),
                item,
                MAX_CONTEXT_TEXT,
            );
        }
    }
    let jurisdiction = context
        .consent
        .as_ref()
        .map_or("", |c| c.jurisdiction.as_str());
    v.check_len(
        "context.consent.jurisdiction",
        jurisdiction,
        limits::MAX_POLICY_KEY_BYTES,
    );
    v.check_len(
        "at_least_as_fresh",
        &r.at_least_as_fresh,
        limits::MAX_TOKEN_BYTES,
    );
    v.finish()?;
    let seconds = context.time.as_ref().map_or_else(
        || time::OffsetDateTime::now_utc().unix_timestamp(),
        |t| t.seconds,
    );
    let mut moment = Moment::at(
        seconds,
        &context.device,
        &context.region,
        &context.current_item_id,
        &context.session_item_ids,
    );
    moment.weather = context.weather.trim().to_lowercase();
    Ok(RecommendAsk {
        n,
        subject,
        moment,
        consent: context.consent,
        at_least_as_fresh: r.at_least_as_fresh,
    })
}

/// A recommendation in its wire form: each pick with its catalog entry (a pick the catalog no
/// longer names is left out).
pub fn recommend_response(r: Recommendation) -> pb::RecommendResponse {
    let catalog = &r.catalog;
    let items = r
        .picks
        .into_iter()
        .filter_map(|p| {
            let item = catalog.get(&p.item_id)?;
            Some(pb::RecommendedItem {
                item_id: p.item_id,
                title: item.title.clone(),
                category: item.category.clone(),
                price_minor: item.price_minor,
                score: p.score,
                reason: p.reason,
            })
        })
        .collect();
    pb::RecommendResponse {
        recommendation_id: r.id,
        tier: tier_pb(r.tier) as i32,
        revision: r.revision,
        items,
        tier_reason: r.tier_reason,
    }
}

/// Validates a RecordOutcome: every bad field at once.
pub fn record_outcome(r: pb::RecordOutcomeRequest) -> Result<Outcome, Status> {
    let mut v = Violations::default();
    v.check(
        uuid::Uuid::parse_str(&r.recommendation_id).is_err(),
        "recommendation_id",
        "not a recommendation id from Recommend",
    );
    let kind = match r.kind() {
        pb::OutcomeKind::Impression => Some(OutcomeKind::Impression),
        pb::OutcomeKind::Click => Some(OutcomeKind::Click),
        pb::OutcomeKind::Conversion => Some(OutcomeKind::Conversion),
        pb::OutcomeKind::Unspecified => None,
    };
    v.check(kind.is_none(), "kind", "an outcome kind is required");
    v.check(r.value_minor < 0, "value_minor", "must not be negative");
    let kind = finish(v, kind)?;
    Ok(Outcome {
        recommendation_id: r.recommendation_id,
        kind,
        value_minor: r.value_minor,
    })
}

/// Per-tier totals in their wire form, with click-through (clicks per impression) and
/// conversion (conversions per click) rates; a rate over nothing is 0.
pub fn stats_response(totals: Vec<(Tier, TierTotals)>) -> pb::GetStatsResponse {
    let rate = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let tiers = totals
        .into_iter()
        .map(|(t, c)| pb::TierStats {
            tier: tier_pb(t) as i32,
            recommendations: c.recommendations,
            impressions: c.impressions,
            clicks: c.clicks,
            conversions: c.conversions,
            value_minor: c.value_minor,
            click_through_rate: rate(c.clicks, c.impressions),
            conversion_rate: rate(c.conversions, c.clicks),
        })
        .collect();
    pb::GetStatsResponse { tiers }
}

/// Parses a LoadCatalog's JSONL; a bad line is a violation of `jsonl`.
pub fn load_catalog(r: &pb::LoadCatalogRequest) -> Result<Catalog, Status> {
    let mut v = Violations::default();
    let catalog = Catalog::from_jsonl(&r.jsonl)
        .map_err(|e| v.add("jsonl", e.to_string()))
        .ok();
    finish(v, catalog)
}

/// The loaded catalog's size in its wire form.
pub fn load_catalog_response((items, categories): (usize, usize)) -> pb::LoadCatalogResponse {
    pb::LoadCatalogResponse {
        items: u32::try_from(items).unwrap_or(u32::MAX),
        categories: u32::try_from(categories).unwrap_or(u32::MAX),
    }
}

/// Validates an Unlearn: the storage key of the subject whose derived data goes.
pub fn unlearn(r: &pb::UnlearnRequest) -> Result<String, Status> {
    let key = r.subject.as_ref().and_then(subject_key);
    let mut v = Violations::default();
    v.check(
        key.is_none(),
        "subject",
        "a subject_id or device_id is required",
    );
    if let Some(Id::SubjectId(id) | Id::DeviceId(id)) =
        r.subject.as_ref().and_then(|s| s.id.as_ref())
    {
        v.check_len("subject", id, limits::MAX_ID_BYTES);
    }
    finish(v, key)
}

/// Fails with every violation recorded; otherwise the value validation produced.
fn finish<T>(v: Violations, value: Option<T>) -> Result<T, Status> {
    v.finish_with(value)
}

fn tier_pb(t: Tier) -> pb::Tier {
    match t {
        Tier::Profiled => pb::Tier::Profiled,
        Tier::Limited => pb::Tier::Limited,
        Tier::Segment => pb::Tier::Segment,
        Tier::Contextual => pb::Tier::Contextual,
        Tier::Popular => pb::Tier::Popular,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consentgate_proto::common::v1::{SubjectRef, subject_ref};
    use tonic::Code;

    fn subject(id: &str) -> Option<SubjectRef> {
        Some(SubjectRef {
            id: Some(subject_ref::Id::SubjectId(id.to_owned())),
        })
    }

    #[test]
    fn a_bad_count_is_answered_alone() {
        let e = recommend(pb::RecommendRequest {
            n: 101,
            subject: subject(""),
            at_least_as_fresh: "x".into(),
            ..Default::default()
        })
        .expect_err("n is over the limit");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.message(), "n: at most 100 items");
    }

    #[test]
    fn every_other_bad_field_is_named_at_once() {
        let e = recommend(pb::RecommendRequest {
            n: 100,
            subject: subject(""),
            context: Some(pb::RecommendContext {
                device: "d".repeat(257),
                session_item_ids: vec![String::new(); 101],
                ..Default::default()
            }),
            at_least_as_fresh: "x".into(),
        })
        .expect_err("several fields are bad");
        assert_eq!(
            e.message(),
            "subject: subject_id or device_id must not be empty; \
             context.device: must be at most 256 bytes; \
             at_least_as_fresh: must be a revision returned by a consent write (a decimal number); \
             context.session_item_ids: at most 100 items (got 101)"
        );
    }

    #[test]
    fn an_anonymous_request_with_no_count_asks_for_ten() {
        let ask = recommend(pb::RecommendRequest {
            context: Some(pb::RecommendContext {
                weather: " Rainy ".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(ask.n, 10);
        assert!(ask.subject.is_none());
        assert_eq!(ask.moment.weather, "rainy");
    }

    #[test]
    fn an_outcome_names_every_bad_field() {
        let e = record_outcome(pb::RecordOutcomeRequest {
            recommendation_id: "nope".into(),
            kind: pb::OutcomeKind::Unspecified as i32,
            value_minor: -1,
        })
        .expect_err("all three are bad");
        assert_eq!(
            e.message(),
            "recommendation_id: not a recommendation id from Recommend; \
             kind: an outcome kind is required; value_minor: must not be negative"
        );
    }

    #[test]
    fn unlearn_needs_a_subject() {
        let e = unlearn(&pb::UnlearnRequest {
            subject: None,
            on_behalf_of: String::new(),
        })
        .expect_err("no subject");
        assert_eq!(
            e.message(),
            "subject: a subject_id or device_id is required"
        );
        let key = unlearn(&pb::UnlearnRequest {
            on_behalf_of: String::new(),
            subject: subject("ann"),
        })
        .expect("a subject");
        assert_eq!(key, "s:ann");
    }
}
