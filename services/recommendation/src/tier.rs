//! The personalization tiers and how a consent decision picks one (docs/architecture.md §5): profiled →
//! limited → segment → contextual → popular. The tier only ever goes *down* from what the consent
//! decision allows; no tier reads data the decision does not cover.

/// The personalization ladder as the consent service reports it (highest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ladder {
    /// No personalization at all, not even from the request's context.
    Anonymous,
    /// From the request's context only.
    Contextual,
    /// Coarse segments.
    Segment,
    /// Zero-party data only.
    Limited,
    /// The full profile.
    Profiled,
}

/// What a recommendation was based on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Gated purchase and browsing history (co-occurrence) plus stated preferences.
    Profiled,
    /// Stated preferences only (zero-party).
    Limited,
    /// A coarse segment: new, loyal or lapsed.
    Segment,
    /// The request's context: time, device, region, current item, this session's items.
    Contextual,
    /// What is popular, nothing else.
    Popular,
}

impl Tier {
    /// The name used in responses and statistics.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Profiled => "profiled",
            Tier::Limited => "limited",
            Tier::Segment => "segment",
            Tier::Contextual => "contextual",
            Tier::Popular => "popular",
        }
    }

    /// Whether this tier reads the subject's data from the profile service.
    pub fn reads_profile(self) -> bool {
        matches!(self, Tier::Profiled | Tier::Limited | Tier::Segment)
    }
}

/// The tier for a request. `allowed` is the ladder rung the consent decision allows for a known
/// subject (`None`: an anonymous session, nobody to ask about); `has_context` says whether the
/// request carries any context to work from.
pub fn tier_for(allowed: Option<Ladder>, has_context: bool) -> Tier {
    match allowed {
        Some(Ladder::Profiled) => Tier::Profiled,
        Some(Ladder::Limited) => Tier::Limited,
        Some(Ladder::Segment) => Tier::Segment,
        Some(Ladder::Contextual) | None if has_context => Tier::Contextual,
        _ => Tier::Popular,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tier_never_exceeds_the_decision() {
        assert_eq!(tier_for(Some(Ladder::Profiled), true), Tier::Profiled);
        assert_eq!(tier_for(Some(Ladder::Limited), true), Tier::Limited);
        assert_eq!(tier_for(Some(Ladder::Segment), false), Tier::Segment);
        assert_eq!(tier_for(Some(Ladder::Contextual), true), Tier::Contextual);
        assert_eq!(tier_for(Some(Ladder::Contextual), false), Tier::Popular);
        // "Anonymous" means not even the request's context may be used.
        assert_eq!(tier_for(Some(Ladder::Anonymous), true), Tier::Popular);
        assert_eq!(tier_for(None, true), Tier::Contextual);
        assert_eq!(tier_for(None, false), Tier::Popular);
        assert!(!Tier::Contextual.reads_profile() && !Tier::Popular.reads_profile());
    }
}
