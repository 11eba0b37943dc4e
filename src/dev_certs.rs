//! A development certificate authority: a CA and one certificate per caller, each carrying the
//! caller's SPIFFE ID, laid out as cert-manager lays out its secrets, for trying mTLS on one
//! machine (`consentgate dev-certs`, `consentgate up --mtls`) and for the tests. Production
//! certificates come from cert-manager or SPIRE (docs/operations.md), never from here.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    /// rcgen refused the parameters.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// The SPIFFE ID of `caller`, as the Kubernetes workload registrar (and cert-manager's
/// `uris`) spell it: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, caller: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{caller}")
}

/// The trust domain of development certificates.
pub const DEV_TRUST_DOMAIN: &str = "consentgate.local";
/// The namespace development SPIFFE IDs name (the one `deploy/` uses).
pub const DEV_NAMESPACE: &str = "consentgate";

/// A certificate authority that issues certificates to callers.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// One issued certificate and its key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// What a certificate says about its holder.
#[derive(Clone, Debug)]
pub struct CertSpec {
    /// Its SPIFFE ID (the URI SAN callers are known by).
    pub spiffe_id: String,
    /// Host names it may serve (DNS SANs), for a service's server certificate.
    pub dns_names: Vec<String>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl CertSpec {
    /// Valid from an hour ago for `days` days, for `spiffe_id`, serving `dns_names`.
    pub fn valid_for_days(spiffe_id: String, dns_names: Vec<String>, days: i64) -> CertSpec {
        let now = OffsetDateTime::now_utc();
        CertSpec {
            spiffe_id,
            dns_names,
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }
}

impl DevCa {
    /// A new CA named `name`, valid for ten years.
    pub fn new(name: &str) -> Result<DevCa, DevCertError> {
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, name);
        params.distinguished_name = subject;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate: the trust bundle (`ca.crt`).
    pub fn ca_pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `spec`, good for both ends of a connection (a service serves with it
    /// and calls other services with it).
    pub fn issue(&self, spec: &CertSpec) -> Result<IssuedCert, DevCertError> {
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, spec.spiffe_id.as_str());
        params.distinguished_name = subject;
        params.subject_alt_names = vec![SanType::URI(spec.spiffe_id.as_str().try_into()?)];
        for name in &spec.dns_names {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.as_str().try_into()?),
            };
            params.subject_alt_names.push(san);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `cert` as cert-manager writes a secret: `dir/tls.crt`, `dir/tls.key` (mode 0600)
    /// and this CA as `dir/ca.crt`.
    pub fn write(&self, cert: &IssuedCert, dir: &Path) -> Result<(), DevCertError> {
        std::fs::create_dir_all(dir).map_err(|source| DevCertError::Write {
            path: dir.to_owned(),
            source,
        })?;
        write_file(&dir.join("tls.crt"), &cert.cert_pem, false)?;
        write_file(&dir.join("tls.key"), &cert.key_pem, true)?;
        write_file(&dir.join("ca.crt"), &self.pem, false)
    }
}

/// Writes a file atomically (a temporary file renamed over it), so a service reloading its
/// certificate never reads a half-written one; `secret` files are readable by the owner only.
pub fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), DevCertError> {
    let error = |source| DevCertError::Write {
        path: path.to_owned(),
        source,
    };
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, contents).map_err(error)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
            .map_err(error)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    std::fs::rename(&temporary, path).map_err(error)
}

/// What `consentgate dev-certs` writes: a CA and, under `dir/<name>/`, a certificate for every
/// caller and every server that is no caller (`tls.crt`, `tls.key`, `ca.crt`), plus
/// `dir/identities.toml` mapping each caller to its SPIFFE ID, ready for `--identities-file`.
/// Every certificate also names `hosts`, so any of them can serve on those addresses.
pub fn write_dev_certs(
    dir: &Path,
    trust_domain: &str,
    namespace: &str,
    callers: &[String],
    servers: &[String],
    hosts: &[String],
) -> Result<DevCa, DevCertError> {
    let ca = DevCa::new("consentgate development CA")?;
    std::fs::create_dir_all(dir).map_err(|source| DevCertError::Write {
        path: dir.to_owned(),
        source,
    })?;
    write_file(&dir.join("ca.crt"), ca.ca_pem(), false)?;
    let mut identities = String::from(
        "# Callers known by their client certificate: caller = \"SPIFFE ID\" (consentgate dev-certs).\n",
    );
    for (name, is_caller) in callers
        .iter()
        .map(|c| (c, true))
        .chain(servers.iter().map(|s| (s, false)))
    {
        let id = spiffe_id(trust_domain, namespace, name);
        let issued = ca.issue(&CertSpec::valid_for_days(id.clone(), hosts.to_vec(), 90))?;
        ca.write(&issued, &dir.join(name))?;
        if is_caller {
            identities.push_str(&format!("{name:?} = {id:?}\n"));
        }
    }
    write_file(&dir.join("identities.toml"), &identities, false)?;
    Ok(ca)
}
