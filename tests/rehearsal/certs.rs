//! cert-manager without a cluster: for an overlay that renders cert-manager `Certificate`s
//! (`deploy/overlays/prod-mtls`), a CA of the rehearsal's own stands for the `consentgate-ca`
//! Issuer and issues each Certificate as cert-manager would (its SPIFFE ID from `uris`, its
//! `dnsNames`, its `duration`, a new ECDSA P-256 key every time, server and client usages) into
//! the Secret it names (`tls.crt`, `tls.key`, `ca.crt`). One addition, listed in the report: the
//! IP SAN `127.0.0.1`, because the Service names the services dial are rewritten to loopback
//! addresses here. [`CertManager::renew`] renews them all, as cert-manager does before expiry;
//! [`presented`] says which certificate a server shows a new connection.

use crate::manifests::Rendered;
use consentgate::dev_certs::{CertSpec, DevCa, IssuedCert};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The SAN added to every certificate (see the module doc).
pub const LOOPBACK_SAN: &str = "127.0.0.1";

/// One rendered `Certificate`.
struct Requested {
    name: String,
    secret: String,
    spiffe_id: String,
    dns_names: Vec<String>,
    duration: Duration,
}

/// The CA and what it has issued.
pub struct CertManager {
    ca: DevCa,
    requested: Vec<Requested>,
    /// The certificate each Secret holds now.
    issued: BTreeMap<String, IssuedCert>,
    /// How many times every certificate was issued (1 = never renewed).
    pub generation: u32,
}

/// A Go duration as cert-manager takes it, in whole hours, minutes or seconds ("24h", "90m").
fn go_duration(text: &str) -> Duration {
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("a Certificate's duration {text:?} is not <n>h|m|s"));
    match unit {
        "h" => Duration::from_secs(n * 3600),
        "m" => Duration::from_secs(n * 60),
        "s" => Duration::from_secs(n),
        _ => panic!("a Certificate's duration {text:?} is not <n>h|m|s"),
    }
}

impl CertManager {
    /// The CA for `rendered`'s Certificates, or `None` when it renders none.
    pub fn for_overlay(rendered: &Rendered) -> Option<CertManager> {
        let text = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
        let requested: Vec<Requested> = rendered
            .of_kind("Certificate")
            .map(|c| {
                let name = text(c, "/metadata/name").expect("a Certificate has a name");
                let uris: Vec<String> = c
                    .pointer("/spec/uris")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|u| u.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(uris.len(), 1, "Certificate {name}: one SPIFFE ID in uris");
                Requested {
                    secret: text(c, "/spec/secretName")
                        .unwrap_or_else(|| panic!("Certificate {name} names no secretName")),
                    spiffe_id: uris[0].clone(),
                    dns_names: c
                        .pointer("/spec/dnsNames")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|d| d.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                    // cert-manager's default is 90 days.
                    duration: text(c, "/spec/duration")
                        .map(|d| go_duration(&d))
                        .unwrap_or(Duration::from_secs(90 * 24 * 3600)),
                    name,
                }
            })
            .collect();
        if requested.is_empty() {
            return None;
        }
        let mut manager = CertManager {
            ca: DevCa::new("consentgate rehearsal CA").expect("a CA"),
            requested,
            issued: BTreeMap::new(),
            generation: 0,
        };
        manager.renew();
        Some(manager)
    }

    /// Issues every Certificate anew (new keys), as cert-manager does at its `renewBefore`.
    pub fn renew(&mut self) {
        let now = time::OffsetDateTime::now_utc();
        for r in &self.requested {
            let mut dns_names = r.dns_names.clone();
            dns_names.push(LOOPBACK_SAN.to_owned());
            let spec = CertSpec {
                spiffe_id: r.spiffe_id.clone(),
                dns_names,
                not_before: now - time::Duration::minutes(1),
                not_after: now + r.duration,
            };
            let cert = self
                .ca
                .issue(&spec)
                .unwrap_or_else(|e| panic!("issue {}: {e}", r.name));
            self.issued.insert(r.secret.clone(), cert);
        }
        self.generation += 1;
    }

    /// The Secrets' contents now: (Secret, key) → value, as cert-manager writes a
    /// `kubernetes.io/tls` Secret with the issuer's CA.
    pub fn secrets(&self) -> BTreeMap<(String, String), String> {
        let mut out = BTreeMap::new();
        for (secret, cert) in &self.issued {
            out.insert((secret.clone(), "tls.crt".into()), cert.cert_pem.clone());
            out.insert((secret.clone(), "tls.key".into()), cert.key_pem.clone());
            out.insert(
                (secret.clone(), "ca.crt".into()),
                self.ca.ca_pem().to_owned(),
            );
        }
        out
    }

    /// The trust bundle (`ca.crt`).
    pub fn ca_pem(&self) -> &str {
        self.ca.ca_pem()
    }

    /// The certificate (DER) the Secret `secret` holds now.
    pub fn current(&self, secret: &str) -> Vec<u8> {
        let pem = &self.issued[secret].cert_pem;
        CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("an issued certificate parses")
            .to_vec()
    }

    /// What the report says was added to each Certificate.
    pub fn additions(&self) -> Vec<(String, String)> {
        self.requested
            .iter()
            .map(|r| {
                (
                    format!("Certificate {}", r.name),
                    format!(
                        "{} + IP SAN {LOOPBACK_SAN} (Service names are loopback here)",
                        r.dns_names.join(",")
                    ),
                )
            })
            .collect()
    }

    /// A certificate for `spiffe_id` from a CA nobody trusts, with its key.
    pub fn from_another_ca(spiffe_id: &str) -> IssuedCert {
        let stranger = DevCa::new("not the consentgate CA").expect("a CA");
        stranger
            .issue(&CertSpec::valid_for_days(
                spiffe_id.to_owned(),
                vec![LOOPBACK_SAN.into()],
                1,
            ))
            .expect("issue")
    }

    /// Whether a Certificate issues the Secret `secret`.
    pub fn issues(&self, secret: &str) -> bool {
        self.requested.iter().any(|r| r.secret == secret)
    }

    /// The SPIFFE ID the Secret `secret`'s certificate carries.
    pub fn spiffe_id_of(&self, secret: &str) -> String {
        self.requested
            .iter()
            .find(|r| r.secret == secret)
            .map(|r| r.spiffe_id.clone())
            .unwrap_or_else(|| panic!("no Certificate issues Secret {secret}"))
    }
}

/// The certificate (DER) the TLS server at `addr` presents to a new connection for
/// `server_name`, verified against `ca_pem`; `None` if the handshake fails.
pub async fn presented(addr: SocketAddr, server_name: &str, ca_pem: &str) -> Option<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.ok()?).ok()?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let name = ServerName::try_from(server_name.to_owned()).ok()?;
    let tls = tokio::time::timeout(Duration::from_secs(2), connector.connect(name, tcp))
        .await
        .ok()?
        .ok()?;
    let (_, session) = tls.get_ref();
    session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| leaf.to_vec())
}
