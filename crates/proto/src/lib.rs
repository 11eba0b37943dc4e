//! consentgate's gRPC API, generated from `proto/` at build time. No logic lives here.
#![allow(missing_docs, clippy::all)]

pub mod codec;
pub mod limits;

/// The `ErrorInfo.domain` of every consentgate error (here, below every crate that builds errors,
/// so that the [`codec`] uses the same one).
pub const ERROR_DOMAIN: &str = "consentgate.dev";

/// Shared types (`consentgate.common.v1`).
pub mod common {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("consentgate.common.v1");
    }
}

/// The consent service (`consentgate.consent.v1`).
pub mod consent {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("consentgate.consent.v1");
    }
}

/// The profile service (`consentgate.profile.v1`).
pub mod profile {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("consentgate.profile.v1");
    }
}

/// The recommendation service (`consentgate.recommendation.v1`).
pub mod recommendation {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("consentgate.recommendation.v1");
    }
}

/// The encoded `FileDescriptorSet` of every consentgate proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("consentgate_descriptor");
