//! The withdrawals and refusals in force, said plainly for the subject's access report and export
//! (docs/architecture.md §3 "Decision rules", §4 data-subject rights).
//!
//! A withdrawal or refusal of a purpose covers every purpose beneath it in the policy's tree, on
//! every channel and for every data category, over any `given` record older than it; a `given`
//! record beneath it that is newer applies again (the person opted back in to that one thing).
//! A person who pressed "withdraw from all marketing" should read exactly that back: "You withdrew
//! all marketing … on 2026-11-29: marketing e-mails, marketing text messages, …", and not only
//! a record on a key called `marketing`. Records are ordered as the consent service orders them:
//! by their time, revision breaking ties (a record imported from another platform keeps its
//! original time and so sorts before what the person chose since; docs/architecture.md, "Which
//! record decides").

use consentgate_policy::{Policy, is_ancestor_or_self};
use consentgate_proto::consent::v1::{ConsentRecord, ConsentState};
use consentgate_proto::profile::v1 as pb;
use std::collections::BTreeMap;

/// Where a record stands among the subject's: its time, then its revision. History carries
/// `collected_at`, not the consent service's place for it, which differs only for a record
/// recorded live on a replica whose clock was behind (by that skew), never across an import.
fn order(r: &ConsentRecord) -> (i64, i32, u64) {
    let at = r.collected_at.unwrap_or_default();
    (at.seconds, at.nanos, r.revision)
}

/// A description for a sentence: "Marketing e-mails." → "marketing e-mails".
pub(crate) fn phrase(description: &str) -> String {
    let text = description.trim().trim_end_matches('.');
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().collect::<String>() + chars.as_str(),
        None => String::new(),
    }
}

/// A channel as people call it.
fn channel_words(channel: &str) -> String {
    match channel {
        "email" => "e-mail".to_owned(),
        "sms" => "SMS".to_owned(),
        "push" => "push notification".to_owned(),
        "in_app" => "in-app message".to_owned(),
        other => other.replace('_', " "),
    }
}

/// A purpose's plain-language description, or its key when the policy no longer has it.
fn purpose_words(policy: &Policy, purpose: &str) -> String {
    policy
        .purposes
        .get(purpose)
        .map_or_else(|| purpose.to_owned(), |p| phrase(&p.description))
}

/// A record's date, `2026-11-29` (UTC).
fn date_of(record: &ConsentRecord) -> String {
    record
        .collected_at
        .as_ref()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .and_then(|t| {
            t.format(time::macros::format_description!("[year]-[month]-[day]"))
                .ok()
        })
        .unwrap_or_else(|| "an unrecorded date".to_owned())
}

/// Whether `key` is strictly beneath `ancestor` in the purpose tree.
fn beneath(ancestor: &str, key: &str) -> bool {
    key != ancestor && is_ancestor_or_self(ancestor, key)
}

/// The most specific purposes of the policy beneath `purpose` (those with nothing beneath them),
/// in key order: what a person knows as "e-mail, SMS, push" under "marketing".
fn leaves_beneath<'p>(policy: &'p Policy, purpose: &str) -> Vec<&'p str> {
    let keys: Vec<&str> = policy.purposes.keys().map(String::as_str).collect();
    keys.iter()
        .copied()
        .filter(|k| beneath(purpose, k))
        .filter(|k| !keys.iter().any(|other| beneath(k, other)))
        .collect()
}

/// " by SMS for your e-mail address": a record's channel and category scope, if any.
fn qualifiers(policy: &Policy, record: &ConsentRecord) -> String {
    let mut out = String::new();
    if !record.channel.is_empty() {
        out.push_str(&format!(" by {}", channel_words(&record.channel)));
    }
    if !record.data_category.is_empty() {
        let category = policy
            .categories
            .get(&record.data_category)
            .map_or_else(|| record.data_category.clone(), |c| phrase(&c.description));
        out.push_str(&format!(" for {category}"));
    }
    out
}

/// `a, b and c`.
fn list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The withdrawals and refusals in force in `history` (every consent record of the subject, in
/// any order), oldest first, each with the purposes beneath it that it covers and those the
/// person agreed to again since. In force: the newest record of its (purpose, channel, data
/// category).
pub fn statements(policy: &Policy, history: &[ConsentRecord]) -> Vec<pb::ConsentStatement> {
    // The newest record per (purpose, channel, data category): what is in force.
    let mut current: BTreeMap<(&str, &str, &str), &ConsentRecord> = BTreeMap::new();
    for r in history {
        let key = (
            r.purpose.as_str(),
            r.channel.as_str(),
            r.data_category.as_str(),
        );
        match current.get(&key) {
            Some(seen) if order(seen) > order(r) => {}
            _ => {
                current.insert(key, r);
            }
        }
    }
    let mut opted_out: Vec<&ConsentRecord> = current
        .values()
        .copied()
        .filter(|r| matches!(r.state(), ConsentState::Withdrawn | ConsentState::Refused))
        .collect();
    opted_out.sort_by_key(|r| order(r));
    opted_out
        .into_iter()
        .map(|r| statement(policy, r, &current))
        .collect()
}

/// One withdrawal or refusal in force, said plainly.
fn statement(
    policy: &Policy,
    record: &ConsentRecord,
    current: &BTreeMap<(&str, &str, &str), &ConsentRecord>,
) -> pb::ConsentStatement {
    let verb = if record.state() == ConsentState::Refused {
        "refused"
    } else {
        "withdrew"
    };
    // Grants in force, newer than this record, on its purpose with a narrower channel or
    // category, or on a purpose beneath it: the person opted back in to those.
    let newer_grants: Vec<&ConsentRecord> = current
        .values()
        .copied()
        .filter(|g| g.state() == ConsentState::Given && order(g) > order(record))
        .filter(|g| {
            beneath(&record.purpose, &g.purpose)
                || (g.purpose == record.purpose
                    && (g.channel != record.channel || g.data_category != record.data_category))
        })
        .collect();
    let leaves = leaves_beneath(policy, &record.purpose);
    let (given_again, covers): (Vec<&str>, Vec<&str>) = leaves.iter().partition(|leaf| {
        newer_grants
            .iter()
            .any(|g| is_ancestor_or_self(&g.purpose, leaf))
    });
    let date = date_of(record);
    let mut text = if leaves.is_empty() {
        format!(
            "You {verb} your consent to {}{} on {date}.",
            purpose_words(policy, &record.purpose),
            qualifiers(policy, record)
        )
    } else {
        let name = record
            .purpose
            .rsplit('.')
            .next()
            .unwrap_or(&record.purpose)
            .replace('_', " ");
        let covered: Vec<String> = covers.iter().map(|k| purpose_words(policy, k)).collect();
        let what = format!(
            "You {verb} all {name} ({}){} on {date}",
            purpose_words(policy, &record.purpose),
            qualifiers(policy, record)
        );
        if covered.is_empty() {
            format!("{what}.")
        } else {
            format!("{what}: {}.", list(&covered))
        }
    };
    if !newer_grants.is_empty() {
        let mut again: Vec<&ConsentRecord> = newer_grants;
        again.sort_by_key(|g| order(g));
        let named: Vec<String> = again
            .iter()
            .map(|g| {
                format!(
                    "{}{} (on {})",
                    purpose_words(policy, &g.purpose),
                    qualifiers(policy, g),
                    date_of(g)
                )
            })
            .collect();
        text.push_str(&format!(
            " Since then you agreed again to {}.",
            list(&named)
        ));
    }
    pb::ConsentStatement {
        record_id: record.record_id.clone(),
        purpose: record.purpose.clone(),
        channel: record.channel.clone(),
        data_category: record.data_category.clone(),
        state: record.state().as_str_name().to_owned(),
        recorded_at: record.collected_at,
        revision: record.revision,
        covers: covers.into_iter().map(str::to_owned).collect(),
        given_again: given_again.into_iter().map(str::to_owned).collect(),
        statement: text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(purpose: &str, channel: &str, state: ConsentState, revision: u64) -> ConsentRecord {
        ConsentRecord {
            record_id: format!("r{revision}"),
            purpose: purpose.to_owned(),
            channel: channel.to_owned(),
            state: state as i32,
            // 2026-11-29T00:00:00Z plus a day per revision.
            collected_at: Some(prost_types::Timestamp {
                seconds: 1_795_910_400 + i64::try_from(revision).unwrap_or(0) * 86_400,
                nanos: 0,
            }),
            revision,
            ..Default::default()
        }
    }

    fn policy() -> Policy {
        Policy::default_policy().expect("default policy")
    }

    #[test]
    fn a_parent_withdrawal_covers_every_child_given_before_it() {
        let history = [
            record(
                "marketing.communications.email",
                "email",
                ConsentState::Given,
                1,
            ),
            record("marketing", "", ConsentState::Withdrawn, 2),
        ];
        let said = statements(&policy(), &history);
        assert_eq!(said.len(), 1, "{said:?}");
        let s = &said[0];
        assert_eq!(s.purpose, "marketing");
        assert_eq!(s.state, "CONSENT_STATE_WITHDRAWN");
        for child in [
            "marketing.communications.email",
            "marketing.communications.sms",
            "marketing.communications.push",
        ] {
            assert!(s.covers.iter().any(|c| c == child), "{s:?}");
        }
        assert!(s.given_again.is_empty(), "{s:?}");
        assert!(
            s.statement.starts_with("You withdrew all marketing (")
                && s.statement.contains("on 2026-12-01: ")
                && s.statement.contains("marketing e-mails")
                && s.statement.contains("marketing text messages")
                && s.statement.contains("marketing push notifications"),
            "{}",
            s.statement
        );
    }

    #[test]
    fn an_imported_record_stands_at_its_own_time_not_its_revision() {
        // A grant today (revision 5), then a withdrawal imported from another platform that
        // the person made a year before (revision 6): the grant is in force, and nothing is
        // said to be withdrawn.
        let mut imported = record("marketing", "", ConsentState::Withdrawn, 6);
        imported.collected_at = Some(prost_types::Timestamp {
            seconds: 1_795_910_400 - 365 * 86_400,
            nanos: 0,
        });
        let history = [
            record("marketing", "", ConsentState::Given, 5),
            imported.clone(),
        ];
        assert!(statements(&policy(), &history).is_empty());
        // The same withdrawal at a time after the grant is in force.
        imported.collected_at = Some(prost_types::Timestamp {
            seconds: 1_795_910_400 + 30 * 86_400,
            nanos: 0,
        });
        let history = [record("marketing", "", ConsentState::Given, 5), imported];
        assert_eq!(statements(&policy(), &history).len(), 1);
    }

    #[test]
    fn a_child_given_after_the_withdrawal_is_not_claimed() {
        let history = [
            record("marketing.communications", "", ConsentState::Refused, 1),
            record(
                "marketing.communications.sms",
                "sms",
                ConsentState::Given,
                2,
            ),
        ];
        let said = statements(&policy(), &history);
        assert_eq!(said.len(), 1, "{said:?}");
        let s = &said[0];
        assert_eq!(s.state, "CONSENT_STATE_REFUSED");
        assert_eq!(s.given_again, ["marketing.communications.sms"]);
        assert!(!s.covers.iter().any(|c| c.ends_with(".sms")), "{s:?}");
        assert!(s.covers.iter().any(|c| c.ends_with(".email")), "{s:?}");
        assert!(
            s.statement.starts_with("You refused all communications (")
                && s.statement
                    .contains("Since then you agreed again to marketing text messages by SMS (on "),
            "{}",
            s.statement
        );
    }

    #[test]
    fn a_superseded_withdrawal_and_a_leaf_withdrawal_read_as_such() {
        let history = [
            record("marketing", "", ConsentState::Withdrawn, 1),
            record("marketing", "", ConsentState::Given, 2),
            record(
                "marketing.communications.email",
                "email",
                ConsentState::Withdrawn,
                3,
            ),
        ];
        let said = statements(&policy(), &history);
        assert_eq!(
            said.len(),
            1,
            "only the leaf withdrawal is in force: {said:?}"
        );
        assert!(said[0].covers.is_empty());
        assert_eq!(
            said[0].statement,
            "You withdrew your consent to marketing e-mails by e-mail on 2026-12-02."
        );
    }
}
