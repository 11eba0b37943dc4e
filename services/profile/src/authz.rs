//! Which role may call which RPC of the profile service. An RPC missing here is refused.

use consentgate_runtime::RpcRules;

/// The fully qualified service name.
pub const SERVICE: &str = "consentgate.profile.v1.ProfileService";

/// The profile service's rules (docs/architecture.md §3 "Callers, roles and delegation").
pub fn rules() -> RpcRules {
    const PC: &str = "preference_center";
    const OPS: &str = "privacy_ops";
    RpcRules::new()
        .allow(SERVICE, "SetAttributes", &["collector", PC])
        .allow(SERVICE, "SubmitAnswers", &[PC, "collector"])
        .allow(SERVICE, "RecordEvents", &["collector"])
        .allow(SERVICE, "GetProfile", &["reader", "enforcer"])
        .allow(SERVICE, "ListEvents", &["reader", "enforcer"])
        .allow(SERVICE, "GetAnswers", &["reader", "enforcer", PC])
        .allow(SERVICE, "ReadSubject", &["reader", "enforcer"])
        .allow(SERVICE, "GetAccessReport", &[OPS])
        .allow(SERVICE, "ExportSubjectData", &[OPS])
        .allow(SERVICE, "RectifyAttribute", &[OPS])
        .allow(SERVICE, "EraseSubject", &[OPS])
        .allow(SERVICE, "GetErasureStatus", &[OPS, "auditor"])
        .allow(SERVICE, "GetRequestStatus", &[OPS, "auditor"])
        .allow(SERVICE, "VerifyAccessLog", &["auditor"])
        .allow(SERVICE, "ReapplyErasures", &[OPS])
}
