//! Which role may call which RPC of the consent service. An RPC missing here is refused.

use consentgate_runtime::RpcRules;

/// The fully qualified service name.
pub const SERVICE: &str = "consentgate.consent.v1.ConsentService";

/// The consent service's rules (docs/architecture.md §3 "Callers, roles and delegation").
pub fn rules() -> RpcRules {
    const PC: &str = "preference_center";
    RpcRules::new()
        .allow(SERVICE, "Grant", &[PC])
        .allow(SERVICE, "Refuse", &[PC])
        .allow(SERVICE, "Withdraw", &[PC])
        .allow(SERVICE, "RecordSignal", &[PC])
        .allow(SERVICE, "LinkIdentity", &[PC])
        .allow(SERVICE, "GetConsents", &[PC, "privacy_ops", "auditor"])
        .allow(
            SERVICE,
            "ListConsentHistory",
            &[PC, "privacy_ops", "auditor"],
        )
        .allow(SERVICE, "GetReceipt", &[PC, "privacy_ops", "auditor"])
        .allow(SERVICE, "Check", &["enforcer"])
        .allow(SERVICE, "BatchCheck", &["enforcer"])
        .allow(SERVICE, "WatchChanges", &["enforcer"])
        .allow(SERVICE, "Explain", &["auditor", "privacy_ops"])
        .allow(SERVICE, "VerifyLedger", &["auditor"])
        .allow(SERVICE, "EraseSubject", &["privacy_ops"])
        .allow(SERVICE, "RestrictProcessing", &["privacy_ops"])
        .allow(SERVICE, "ListSigningKeys", &[PC, "privacy_ops", "auditor"])
        .allow(SERVICE, "FindErased", &["privacy_ops"])
        .allow(SERVICE, "ReapplyErasures", &["privacy_ops"])
        .allow(SERVICE, "ListErasures", &["privacy_ops"])
        .allow(SERVICE, "ImportConsents", &["privacy_ops"])
}
