//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and generates tonic code.
use prost::Message;
use std::collections::BTreeMap;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "consentgate/common/v1/common.proto",
        "consentgate/consent/v1/consent.proto",
        "consentgate/profile/v1/profile.proto",
        "consentgate/recommendation/v1/recommendation.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("consentgate_descriptor.bin"), fds.encode_to_vec())?;
    fs::write(out.join("codec_roles.rs"), codec_roles(&fds))?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::ApiCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

/// `impl Role` for every RPC's input (a request) and output (a response): the codec answers an
/// undecodable request as bad input, an undecodable response as the server's fault.
fn codec_roles(fds: &prost_types::FileDescriptorSet) -> String {
    let mut roles = BTreeMap::new();
    for file in &fds.file {
        for method in file.service.iter().flat_map(|s| &s.method) {
            for (ty, request) in [(method.input_type(), true), (method.output_type(), false)] {
                // `.consentgate.consent.v1.CheckRequest` -> `crate::consent::v1::CheckRequest`
                let path = ty.trim_start_matches(".consentgate.").replace('.', "::");
                let previous = roles.insert(format!("crate::{path}"), request);
                assert!(
                    previous.is_none_or(|p| p == request),
                    "{ty} is both a request and a response: the codec cannot tell who decodes it"
                );
            }
        }
    }
    roles
        .into_iter()
        .map(|(path, request)| {
            format!("impl Role for {path} {{ const REQUEST: bool = {request}; }}\n")
        })
        .collect()
}
