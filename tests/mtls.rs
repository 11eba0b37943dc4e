//! The auth matrix over mutual TLS: the suite wired as `consentgate up --mtls` wires it (every
//! caller, the services included, known only by its certificate's SPIFFE ID), called on every
//! RPC of the three services with no certificate, a certificate from another CA, an expired
//! certificate and each caller's valid certificate. Certificate identity must decide exactly as
//! token identity does (the token matrices check that against the roles), and a rotated trust
//! bundle and certificate must be picked up by a running server.

mod common;

use common::*;
use consentgate::dev_certs::{CertSpec, DevCa, spiffe_id, write_dev_certs};
use consentgate::suite::{self, CONSENT_SERVER, SuiteConfig, SuiteTls};
use consentgate_consent::ledger::LedgerKeys;
use consentgate_consent::testing::{Backend, TestDb};
use prost::Message;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const TRUST_DOMAIN: &str = "test.consentgate.local";
const NAMESPACE: &str = "consentgate";

/// A scratch directory, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "cg-mtls-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hosts() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}

fn callers() -> Vec<String> {
    policy().callers.keys().cloned().collect()
}

/// Every RPC of the three services, as `/package.Service/Method`, read from the descriptors
/// (so a new RPC joins the matrix by itself).
fn every_rpc() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(consentgate_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let mut rpcs = Vec::new();
    for file in set.file {
        let package = file.package().to_owned();
        for service in file.service {
            let name = service.name().to_owned();
            for method in service.method {
                rpcs.push(format!("/{package}.{name}/{}", method.name()));
            }
        }
    }
    assert!(rpcs.len() >= 35, "all three services' RPCs: {rpcs:?}");
    rpcs
}

/// Calls `path` with an empty request (the auth layer decides before anything is decoded) and
/// returns the first outcome: `Ok` or the status code.
async fn call(channel: Channel, path: &str, token: Option<&str>) -> Result<(), Code> {
    let mut grpc = tonic::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return Err(Code::Unavailable);
    }
    let mut request = tonic::Request::new(());
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    request.set_timeout(Duration::from_secs(5));
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = path.parse().expect("path");
    match grpc.server_streaming(request, path, codec).await {
        Ok(_) => Ok(()),
        Err(status) => Err(status.code()),
    }
}

/// The authorization class of an outcome: refused for who the caller is, or let through (the
/// handler may then refuse the empty request, which is not the auth layer's business).
fn admitted(outcome: Result<(), Code>) -> bool {
    !matches!(
        outcome,
        Err(Code::Unauthenticated) | Err(Code::PermissionDenied)
    )
}

/// A TLS channel to `address` trusting `ca`, presenting `identity` when given.
async fn tls_channel(
    address: std::net::SocketAddr,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{address}"))
        .expect("endpoint")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A caller's certificate and key from a dev-certs directory.
fn identity_of(certs: &Path, caller: &str) -> (String, String) {
    (
        read(&certs.join(caller).join("tls.crt")),
        read(&certs.join(caller).join("tls.key")),
    )
}

struct Suites {
    mtls: suite::Suite,
    plain: suite::Suite,
    _dbs: Vec<TestDb>,
}

async fn start_suite(tls: Option<SuiteTls>, dbs: &mut Vec<TestDb>) -> suite::Suite {
    let mut urls = Vec::new();
    for _ in 0..3 {
        let db = TestDb::new(Backend::Sqlite).await;
        urls.push(db.url.clone());
        dbs.push(db);
    }
    let [consent_url, profile_url, recommendation_url] =
        <[String; 3]>::try_from(urls).expect("three databases");
    let listeners = || async {
        suite::Listeners {
            grpc: ephemeral().await,
            metrics: None,
        }
    };
    suite::start(SuiteConfig {
        policy: policy(),
        tokens: if tls.is_some() { Vec::new() } else { tokens() },
        consent: consentgate::suite::ConsentSettings {
            database_url: consent_url,
            keys: Arc::new(LedgerKeys::generate()),
            cache_capacity: 10_000,
            feed_poll: consentgate_consent::server::FEED_POLL,
        },
        consent_listeners: listeners().await,
        profile_database_url: profile_url,
        profile_listeners: listeners().await,
        profile_decision_cache: 1_000,
        retention_every: Duration::from_secs(3600),
        recommendation_database_url: recommendation_url,
        recommendation_listeners: listeners().await,
        catalog: consentgate_recommendation::catalog::Catalog::demo(200),
        traces: Default::default(),
        tls,
        profile_request_key: consentgate_profile::request_key::RequestKey::generate(),
    })
    .await
    .expect("suite")
}

async fn start_both(certs: &Path) -> Suites {
    let identities = callers()
        .into_iter()
        .map(|c| {
            let id = spiffe_id(TRUST_DOMAIN, NAMESPACE, &c);
            (c, id)
        })
        .collect();
    let mut dbs = Vec::new();
    let mtls = start_suite(
        Some(SuiteTls {
            certs: certs.to_owned(),
            identities,
        }),
        &mut dbs,
    )
    .await;
    let plain = start_suite(None, &mut dbs).await;
    Suites {
        mtls,
        plain,
        _dbs: dbs,
    }
}

fn addresses(suite: &suite::Suite) -> [(&'static str, std::net::SocketAddr); 3] {
    [
        ("consentgate.consent.", suite.consent.address()),
        ("consentgate.profile.", suite.profile.address()),
        (
            "consentgate.recommendation.",
            suite.recommendation.address(),
        ),
    ]
}

/// The address of the service that serves `rpc`.
fn address_for(suite: &suite::Suite, rpc: &str) -> std::net::SocketAddr {
    addresses(suite)
        .into_iter()
        .find(|(package, _)| rpc.starts_with(&format!("/{package}")))
        .map(|(_, address)| address)
        .unwrap_or_else(|| panic!("no service for {rpc}"))
}

#[tokio::test]
async fn over_mtls_every_rpc_admits_exactly_the_callers_tokens_admit_and_refuses_bad_certificates()
{
    let scratch = Scratch::new("matrix");
    let certs = scratch.0.join("certs");
    let ca = write_dev_certs(
        &certs,
        TRUST_DOMAIN,
        NAMESPACE,
        &callers(),
        &[CONSENT_SERVER.to_owned()],
        &hosts(),
    )
    .expect("dev certs");
    let suites = start_both(&certs).await;
    let ca_pem = ca.ca_pem().to_owned();

    // A certificate naming privacy-ops from another CA, and one from ours that has expired.
    let stranger = DevCa::new("another CA").expect("CA");
    let foreign = stranger
        .issue(&CertSpec::valid_for_days(
            spiffe_id(TRUST_DOMAIN, NAMESPACE, "privacy-ops"),
            hosts(),
            30,
        ))
        .expect("foreign cert");
    let now = time::OffsetDateTime::now_utc();
    let expired = ca
        .issue(&CertSpec {
            spiffe_id: spiffe_id(TRUST_DOMAIN, NAMESPACE, "privacy-ops"),
            dns_names: hosts(),
            not_before: now - time::Duration::days(30),
            not_after: now - time::Duration::days(1),
        })
        .expect("expired cert");
    // Our CA, a SPIFFE ID no caller is mapped to.
    let unmapped = ca
        .issue(&CertSpec::valid_for_days(
            spiffe_id(TRUST_DOMAIN, NAMESPACE, "intruder"),
            hosts(),
            30,
        ))
        .expect("unmapped cert");

    let rpcs = every_rpc();
    let mut admitted_somewhere = 0;
    let mut mismatches = Vec::new();
    for rpc in &rpcs {
        let address = address_for(&suites.mtls, rpc);
        // No certificate, another CA's, an expired one: the handshake fails, nothing is served.
        let bad: [(&str, Option<(&str, &str)>); 3] = [
            ("no certificate", None),
            ("another CA", Some((&foreign.cert_pem, &foreign.key_pem))),
            ("expired", Some((&expired.cert_pem, &expired.key_pem))),
        ];
        for (what, identity) in bad {
            let outcome = match tls_channel(address, &ca_pem, identity).await {
                Ok(channel) => call(channel, rpc, Some(&token("privacy-ops"))).await,
                Err(_) => Err(Code::Unavailable),
            };
            // Under TLS 1.3 the server checks the client's certificate after the client's side
            // of the handshake ends: the refusal may close the connection under a request
            // already sent (`Cancelled`) instead of before it (`Unavailable`).
            assert!(
                matches!(
                    outcome,
                    Err(Code::Unavailable) | Err(Code::Unknown) | Err(Code::Cancelled)
                ),
                "{rpc} with {what}: {outcome:?}, want the connection refused (UNAVAILABLE)"
            );
        }
        // A certificate of our CA that maps to no caller: UNAUTHENTICATED.
        let channel = tls_channel(
            address,
            &ca_pem,
            Some((&unmapped.cert_pem, &unmapped.key_pem)),
        )
        .await
        .expect("connect");
        assert_eq!(
            call(channel, rpc, None).await,
            Err(Code::Unauthenticated),
            "{rpc} with an unmapped certificate"
        );
        // Plaintext against the TLS port is not served either.
        let plaintext = Endpoint::from_shared(format!("http://{address}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        let outcome = call(plaintext, rpc, Some(&token("privacy-ops"))).await;
        assert!(
            matches!(
                outcome,
                Err(Code::Unavailable) | Err(Code::Unknown) | Err(Code::Internal)
            ),
            "{rpc} over plaintext: {outcome:?}"
        );
        // Every caller's own certificate: admitted exactly where its token is.
        for caller in callers() {
            let (cert, key) = identity_of(&certs, &caller);
            let channel = tls_channel(address, &ca_pem, Some((&cert, &key)))
                .await
                .expect("connect with a valid certificate");
            let by_certificate = call(channel, rpc, None).await;
            let plain = tonic::transport::Endpoint::from_shared(format!(
                "http://{}",
                address_for(&suites.plain, rpc)
            ))
            .expect("endpoint")
            .connect()
            .await
            .expect("plaintext suite");
            let by_token = call(plain, rpc, Some(&token(&caller))).await;
            if matches!(by_certificate, Err(Code::Unauthenticated))
                || admitted(by_certificate) != admitted(by_token)
            {
                mismatches.push(format!(
                    "{rpc} as {caller}: by certificate {by_certificate:?}, by token {by_token:?}"
                ));
            }
            // Over mTLS the certificate decides: the same caller's token alone adds nothing,
            // and another caller's token beside it is a conflict.
            if caller != "auditor" {
                let channel = tls_channel(address, &ca_pem, Some((&cert, &key)))
                    .await
                    .expect("connect");
                assert_eq!(
                    call(channel, rpc, Some(&token("auditor"))).await,
                    Err(Code::Unauthenticated),
                    "{rpc} as {caller} with auditor's token beside its certificate"
                );
            }
            admitted_somewhere += usize::from(admitted(by_certificate));
        }
    }
    assert!(
        mismatches.is_empty(),
        "certificate identity must decide as token identity does:\n{}",
        mismatches.join("\n")
    );
    assert!(
        admitted_somewhere >= rpcs.len(),
        "every RPC admits at least one caller ({admitted_somewhere} admissions over {} RPCs)",
        rpcs.len()
    );
    suites.mtls.stop().await.expect("stop");
    suites.plain.stop().await.expect("stop");
}

#[tokio::test]
async fn the_services_call_each_other_with_their_own_certificates() {
    let scratch = Scratch::new("wiring");
    let certs = scratch.0.join("certs");
    let ca = write_dev_certs(
        &certs,
        TRUST_DOMAIN,
        NAMESPACE,
        &callers(),
        &[CONSENT_SERVER.to_owned()],
        &hosts(),
    )
    .expect("dev certs");
    let suites = start_both(&certs).await;
    // The gates are live (suite::start waits for their change streams over mTLS); a grant, then
    // a recommendation that reads the profile through the profile service's gate.
    let ca_pem = ca.ca_pem().to_owned();
    let (cert, key) = identity_of(&certs, "preference-center");
    let channel = tls_channel(suites.mtls.consent.address(), &ca_pem, Some((&cert, &key)))
        .await
        .expect("connect");
    let mut consent =
        consentgate_proto::consent::v1::consent_service_client::ConsentServiceClient::new(channel);
    consent
        .grant(grant(
            "mtls-alice",
            "personalize.content.profiled",
            "mtls-1",
        ))
        .await
        .expect("grant over mTLS");
    let (cert, key) = identity_of(&certs, "recommendation-service");
    let channel = tls_channel(suites.mtls.profile.address(), &ca_pem, Some((&cert, &key)))
        .await
        .expect("connect");
    let mut profile =
        consentgate_proto::profile::v1::profile_service_client::ProfileServiceClient::new(channel);
    let read = profile
        .get_profile(get_profile("mtls-alice", "personalize.content.profiled"))
        .await
        .expect("a gated read over mTLS: the profile service asked the consent service with its certificate");
    let revision = read.get_ref().decision.as_ref().map_or(0, |d| d.revision);
    assert!(revision > 0, "read under a real decision");
    suites.mtls.stop().await.expect("stop");
    suites.plain.stop().await.expect("stop");
}

#[tokio::test]
async fn a_rotated_trust_bundle_and_certificate_are_picked_up_without_a_restart() {
    let scratch = Scratch::new("rotation");
    let certs = scratch.0.join("certs");
    let old_ca = write_dev_certs(
        &certs,
        TRUST_DOMAIN,
        NAMESPACE,
        &callers(),
        &[CONSENT_SERVER.to_owned()],
        &hosts(),
    )
    .expect("dev certs");
    let suites = start_both(&certs).await;
    let address = suites.mtls.consent.address();
    let rpc = "/consentgate.consent.v1.ConsentService/ListSigningKeys";
    let old = identity_of(&certs, "auditor");
    let channel = tls_channel(address, old_ca.ca_pem(), Some((&old.0, &old.1)))
        .await
        .expect("connect");
    assert_eq!(
        call(channel, rpc, None).await,
        Ok(()),
        "before the rotation"
    );

    // cert-manager issues from a new CA: the consent service's certificate and trust bundle
    // change on disk; the auditor gets a certificate from the new CA.
    let new_ca = DevCa::new("rotated CA").expect("CA");
    let issue = |name: &str| {
        new_ca
            .issue(&CertSpec::valid_for_days(
                spiffe_id(TRUST_DOMAIN, NAMESPACE, name),
                hosts(),
                30,
            ))
            .expect("issue")
    };
    let server = issue(CONSENT_SERVER);
    new_ca
        .write(&server, &certs.join(CONSENT_SERVER))
        .expect("rotate the server's files");
    let auditor = issue("auditor");

    // Within a few reload periods the running server verifies against the new bundle only.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let new_works = match tls_channel(
            address,
            new_ca.ca_pem(),
            Some((&auditor.cert_pem, &auditor.key_pem)),
        )
        .await
        {
            Ok(channel) => call(channel, rpc, None).await == Ok(()),
            Err(_) => false,
        };
        if new_works {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let old_refused = match tls_channel(address, old_ca.ca_pem(), Some((&old.0, &old.1))).await {
        Ok(channel) => call(channel, rpc, None).await,
        Err(_) => Err(Code::Unavailable),
    };
    assert!(
        matches!(old_refused, Err(Code::Unavailable) | Err(Code::Unknown)),
        "the old CA's client certificate after the rotation: {old_refused:?}"
    );
    suites.mtls.stop().await.expect("stop");
    suites.plain.stop().await.expect("stop");
}
