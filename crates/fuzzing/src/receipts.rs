//! Receipt verification: the consent service's JWS receipts (`receipt::verify_with`, by the key
//! the header names, and `receipt::verify`, with one public key) and the JWK Set an auditor
//! verifies them with (`VerifyingKeys::from_jwks`).
//!
//! The first byte of the input picks one of three questions (the rest is text for 0 and 2, so
//! that the seeds are real receipts and key sets):
//! 0. **any text as a receipt**: nothing verifies that the service's key did not sign (the
//!    fuzzer cannot sign; the seeds are real receipts, which must verify to their payload);
//! 1. **signed by the service, then perhaps altered**: the fuzzer chooses the header (a typed
//!    one, whose outcome a small model predicts, or raw text) and the payload, the key signs
//!    them; the receipt verifies exactly when the model says so (`alg` is `EdDSA`, `kid` is the
//!    key's id, its public key, or absent for a key that verifies unlabelled signatures), to its
//!    payload; then any one-byte change to the receipt makes it fail;
//! 2. **any text as a JWK Set**: a set that loads round-trips through `jwks()`, and verifies the
//!    service's receipt exactly when it holds the service's key.

use crate::{Budget, Target};
use arbitrary::{Arbitrary, Unstructured};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use consentgate_consent::ledger::LedgerKeys;
use consentgate_consent::ledger::keys::VerifyingKeys;
use consentgate_consent::receipt::{verify, verify_with};
use std::sync::OnceLock;

/// The receipts target.
pub const TARGET: Target = Target {
    name: "receipts",
    run,
    // A real receipt is about 1.5 KB.
    max_len: 8 * 1024,
    budget: Budget {
        fixed: 1 << 20,
        per_input_byte: 64,
    },
};

/// The service's keys: a fixed seed, so that the committed seeds (receipts it signed) verify.
pub fn keys() -> &'static LedgerKeys {
    static KEYS: OnceLock<LedgerKeys> = OnceLock::new();
    KEYS.get_or_init(|| LedgerKeys::from_seed(&[0x5e; 32]))
}

/// A receipt as the service signs one: `b64(header).b64(payload).b64(signature)`.
pub fn sign(header: &str, payload: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = URL_SAFE_NO_PAD.encode(keys().sign(input.as_bytes()));
    format!("{input}.{signature}")
}

/// The header of a receipt, as the fuzzer chooses it.
#[derive(Debug, Arbitrary)]
enum Header {
    /// A JSON object with these members.
    Typed { alg: Alg, kid: Kid, typ: bool },
    /// Any text.
    Raw(String),
}

#[derive(Debug, Arbitrary)]
enum Alg {
    EdDsa,
    None,
    Other(String),
}

#[derive(Debug, Arbitrary)]
enum Kid {
    Absent,
    /// The key's RFC 7638 thumbprint.
    Thumbprint,
    /// The public key itself (receipts issued before key ids).
    PublicKey,
    Other(String),
}

impl Header {
    /// The header's text, and whether a receipt under it must verify (None: no prediction).
    fn render(&self) -> (String, Option<bool>) {
        let keys = keys();
        let Header::Typed { alg, kid, typ } = self else {
            let Header::Raw(text) = self else {
                unreachable!()
            };
            return (text.clone(), None);
        };
        let mut header = serde_json::Map::new();
        let alg = match alg {
            Alg::EdDsa => "EdDSA".to_owned(),
            Alg::None => "none".to_owned(),
            Alg::Other(other) => other.clone(),
        };
        header.insert("alg".into(), alg.clone().into());
        if *typ {
            header.insert("typ".into(), "JWT".into());
        }
        let kid = match kid {
            Kid::Absent => None,
            Kid::Thumbprint => Some(keys.kid().to_owned()),
            Kid::PublicKey => Some(keys.public_key_b64()),
            Kid::Other(other) => Some(other.clone()),
        };
        let known = match &kid {
            // A key without an id verifies only through the keys' unlabelled key (a bare seed's).
            None => keys.verifiers().unlabelled_kid() == Some(keys.kid()),
            Some(kid) => *kid == keys.kid() || *kid == keys.public_key_b64(),
        };
        if let Some(kid) = kid {
            header.insert("kid".into(), kid.into());
        }
        let text = serde_json::Value::Object(header).to_string();
        (text, Some(alg == "EdDSA" && known))
    }
}

fn run(data: &[u8]) {
    let Some((&question, rest)) = data.split_first() else {
        return;
    };
    match question % 3 {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                any_receipt(text);
            }
        }
        1 => {
            // Running out of bytes midway is the end of an input, not a finding.
            let _ = signed(&mut Unstructured::new(rest));
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                any_jwks(text);
            }
        }
    }
}

/// Question 0: any text as a receipt.
fn any_receipt(text: &str) {
    let keys = keys();
    let loose = verify(text, &keys.public_key_b64());
    match verify_with(text, keys.verifiers()) {
        Ok(verified) => {
            assert_eq!(verified.kid, keys.kid());
            assert_eq!(
                loose.as_deref(),
                Some(verified.json.as_str()),
                "the two verifiers disagree on a receipt"
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Question 1: signed by the service from the fuzzer's header and payload, then one byte
/// changed.
fn signed(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let keys = keys();
    let header = Header::arbitrary(u)?;
    let payload = Vec::<u8>::arbitrary(u)?;
    let at = usize::arbitrary(u)?;
    let flip = u8::arbitrary(u)?.max(1);
    let (text, expected) = header.render();
    let receipt = sign(&text, &payload);
    let utf8 = String::from_utf8(payload).ok();
    // `verify` checks the signature only; the header is not its business.
    assert_eq!(verify(&receipt, &keys.public_key_b64()), utf8);
    let verified = verify_with(&receipt, keys.verifiers());
    if let Ok(v) = &verified {
        assert_eq!(Some(&v.json), utf8.as_ref(), "verified to another payload");
    }
    if let Some(expected) = expected {
        assert_eq!(
            verified.is_ok(),
            expected && utf8.is_some(),
            "header {text}: {verified:?}"
        );
    }
    // One byte changed anywhere (kept ASCII, as a receipt is): nothing verifies.
    let mut altered = receipt.clone().into_bytes();
    let i = at % altered.len();
    altered[i] = (altered[i] ^ flip) & 0x7f;
    if let Ok(altered) = String::from_utf8(altered)
        && altered != receipt
    {
        assert!(
            verify_with(&altered, keys.verifiers()).is_err(),
            "an altered receipt verifies: {altered}"
        );
        assert_eq!(verify(&altered, &keys.public_key_b64()), None);
    }
    Ok(())
}

/// Question 2: any text as a JWK Set.
fn any_jwks(text: &str) {
    let keys = keys();
    let Ok(set) = VerifyingKeys::from_jwks(text) else {
        return;
    };
    let again = VerifyingKeys::from_jwks(&set.jwks()).expect("a rendered set loads");
    assert_eq!(again.keys().len(), set.keys().len());
    let receipt = sign(
        &serde_json::json!({ "alg": "EdDSA", "kid": keys.kid() }).to_string(),
        br#"{"version":"KI-CR-v1.1.0"}"#,
    );
    let holds = set.keys().iter().any(|k| k.kid == keys.kid());
    assert_eq!(verify_with(&receipt, &set).is_ok(), holds);
}
