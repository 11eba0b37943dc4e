//! Which role may call which RPC of the recommendation service. An RPC missing here is refused.

use consentgate_runtime::RpcRules;

/// The fully qualified service name.
pub const SERVICE: &str = "consentgate.recommendation.v1.RecommendationService";

/// The recommendation service's rules.
pub fn rules() -> RpcRules {
    RpcRules::new()
        .allow(SERVICE, "Recommend", &["reader", "enforcer"])
        .allow(
            SERVICE,
            "RecordOutcome",
            &["collector", "reader", "enforcer"],
        )
        .allow(SERVICE, "GetStats", &["auditor", "privacy_ops", "reader"])
        .allow(SERVICE, "LoadCatalog", &["collector"])
        .allow(SERVICE, "Unlearn", &["privacy_ops"])
}
