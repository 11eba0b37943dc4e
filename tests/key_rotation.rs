//! Signing-key rotation end to end (docs/operations.md, "Rotating the signing key"), on SQLite
//! and PostgreSQL: a consent server starts on a version-1 bare seed file; the real
//! `consentgate keys stage` and `keys rotate` change the file; the server restarts on it after
//! each step. Receipts issued before the rotation still verify (GetReceipt names their key and
//! kid; the published JWK Set verifies them; so does `consentgate keys verify-receipt`), the
//! ledger verifies across the rotation with each checkpoint under its own key, and a subject
//! erased before the rotation is still erased after it.

mod common;

use common::*;
use consentgate_consent::ledger::{LedgerKeys, VerifyingKeys, random_key};
use consentgate_consent::receipt;
use consentgate_consent::testing::backends;
use consentgate_proto::consent::v1 as pb;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// Grants enough for the ledger to pass the next checkpoint.
const GRANTS: usize = 70;

/// A temporary folder, removed on drop.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `consentgate ARGS`; panics with its output unless it succeeds.
fn consentgate(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_consentgate"))
        .args(args)
        .output()
        .expect("run consentgate");
    assert!(
        out.status.success(),
        "consentgate {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn load(path: &Path) -> Arc<LedgerKeys> {
    Arc::new(LedgerKeys::load(path).expect("the key file loads"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_keeps_receipts_checkpoints_and_erasures() {
    for backend in backends() {
        let dir =
            Dir(std::env::temp_dir().join(format!("cg-rotation-{}", hex(&random_key()[..8]))));
        std::fs::create_dir_all(&dir.0).expect("dir");
        let key_file = dir.0.join("signing.key");
        let key_arg = key_file.to_str().expect("utf-8 path");
        let seed = hex(&random_key());
        std::fs::write(&key_file, format!("{seed}\n")).expect("a bare seed file");
        let v1 = load(&key_file);
        let old_kid = v1.kid().to_owned();

        let server = TestServer::start_with_keys(backend, v1.clone()).await;
        let mut pc = server.as_caller("preference-center").await;
        let mut ops = server.as_caller("privacy-ops").await;
        let before = pc
            .grant(grant("rosa", "personalize.content.profiled", "rosa-1"))
            .await
            .expect("grant")
            .into_inner();
        let rosa_record = before.record.expect("record").record_id;
        pc.grant(grant("ivan", "personalize.content.profiled", "ivan-1"))
            .await
            .expect("grant");
        ops.erase_subject(pb::EraseSubjectRequest {
            on_behalf_of: String::new(),
            subject: subject("ivan"),
            idempotency_key: "ivan-erase".into(),
        })
        .await
        .expect("erase");
        for i in 0..GRANTS {
            pc.grant(grant(
                &format!("a-{i}"),
                "personalize.content.limited",
                &format!("a-{i}"),
            ))
            .await
            .expect("grant");
        }

        // Stage a key: the file becomes a keyring; the server still signs with the old key.
        consentgate(&["keys", "stage", "--key-file", key_arg]);
        let staged = load(&key_file);
        assert_eq!(
            staged.kid(),
            old_kid,
            "{backend:?}: staging does not switch keys"
        );
        let server = server.restart_with_keys(staged.clone()).await;
        let mut auditor = server.as_caller("auditor").await;
        let listed = auditor
            .list_signing_keys(pb::ListSigningKeysRequest {})
            .await
            .expect("list keys")
            .into_inner();
        let statuses: Vec<(String, pb::SigningKeyStatus)> = listed
            .keys
            .iter()
            .map(|k| (k.kid.clone(), k.status()))
            .collect();
        let new_kid = statuses
            .iter()
            .find(|(_, s)| *s == pb::SigningKeyStatus::Next)
            .expect("a staged key")
            .0
            .clone();
        assert_eq!(
            statuses,
            vec![
                (old_kid.clone(), pb::SigningKeyStatus::Current),
                (new_kid.clone(), pb::SigningKeyStatus::Next)
            ],
            "{backend:?}"
        );

        // Rotate: the staged key signs, the old one is retired.
        let out = consentgate(&["keys", "rotate", "--key-file", key_arg]);
        assert!(out.contains(&new_kid), "{out}");
        let rotated = load(&key_file);
        assert_eq!(rotated.kid(), new_kid);
        let server = server.restart_with_keys(rotated.clone()).await;
        let mut pc = server.as_caller("preference-center").await;
        let mut auditor = server.as_caller("auditor").await;
        let mut enforcer = server.as_caller("profile-service").await;
        for i in 0..GRANTS {
            pc.grant(grant(
                &format!("b-{i}"),
                "personalize.content.limited",
                &format!("b-{i}"),
            ))
            .await
            .expect("grant");
        }
        let after = pc
            .grant(grant("sol", "personalize.content.profiled", "sol-1"))
            .await
            .expect("grant")
            .into_inner();

        // The ledger verifies across the rotation, each checkpoint under its own key.
        let report = auditor
            .verify_ledger(pb::VerifyLedgerRequest::default())
            .await
            .expect("verify")
            .into_inner();
        assert!(report.ok, "{backend:?}: {}", report.problem);
        assert_eq!(report.checkpoints_checked, 2, "{backend:?}");
        assert_eq!(
            report.checkpoint_kids,
            vec![old_kid.clone(), new_kid.clone()]
        );

        // The receipt from before the rotation: GetReceipt names its (retired) key.
        let old = auditor
            .get_receipt(pb::GetReceiptRequest {
                record_id: rosa_record,
            })
            .await
            .expect("receipt")
            .into_inner();
        assert_eq!(old.kid, old_kid, "{backend:?}");
        assert_eq!(old.public_key, v1.public_key_b64(), "{backend:?}");
        assert_eq!(
            receipt::verify(&old.receipt_jws, &old.public_key).as_deref(),
            Some(old.receipt_json.as_str())
        );
        assert_eq!(after.receipt_jws.split('.').count(), 3);
        let listed = auditor
            .list_signing_keys(pb::ListSigningKeysRequest {})
            .await
            .expect("list keys")
            .into_inner();
        assert_eq!(listed.unlabelled_kid, old_kid, "{backend:?}");
        let published = VerifyingKeys::from_jwks(&listed.jwks).expect("a JWK Set");
        for (jws, kid) in [(&old.receipt_jws, &old_kid), (&after.receipt_jws, &new_kid)] {
            let verified = receipt::verify_with(jws, &published).expect("verifies");
            assert_eq!(&verified.kid, kid, "{backend:?}");
        }
        // The same with the CLI, as an auditor would, from the JWK Set alone.
        let jwks = dir.0.join("jwks.json");
        std::fs::write(&jwks, &listed.jwks).expect("write the JWK Set");
        let jwks_arg = jwks.to_str().expect("utf-8 path");
        let json = consentgate(&[
            "keys",
            "verify-receipt",
            "--jwks",
            jwks_arg,
            &old.receipt_jws,
        ]);
        assert_eq!(json.trim(), old.receipt_json);
        // A receipt from a key nobody published fails with the reason.
        let stranger = LedgerKeys::generate();
        let stranger_jwks = dir.0.join("stranger.json");
        std::fs::write(&stranger_jwks, stranger.verifiers().jwks()).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_consentgate"))
            .args(["keys", "verify-receipt", "--jwks"])
            .arg(&stranger_jwks)
            .arg(&old.receipt_jws)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("unknown key id") && stderr.contains(&old_kid),
            "{stderr}"
        );

        // `keys show` lists both keys and no secret.
        let shown = consentgate(&["keys", "show", "--key-file", key_arg]);
        assert!(
            shown.contains(&old_kid) && shown.contains(&new_kid),
            "{shown}"
        );
        let ring = std::fs::read_to_string(&key_file).expect("the keyring");
        let secret = ring
            .lines()
            .find_map(|l| l.strip_prefix("secret_key = \""))
            .expect("a secret")
            .trim_end_matches('"')
            .to_owned();
        assert!(
            !shown.contains(&secret) && !shown.contains(&seed),
            "{shown}"
        );
        assert!(!ring.contains(&seed), "the seed is gone from the keyring");

        // Ivan, erased under the old file, is still erased: the tombstone key did not rotate.
        let d = enforcer
            .check(check("ivan", "personalize.content.profiled", &[]))
            .await
            .expect("check")
            .into_inner();
        assert_eq!(
            (d.verdict(), d.reason.as_str()),
            (pb::Verdict::Deny, "SUBJECT_ERASED"),
            "{backend:?}"
        );
        let err = pc
            .grant(grant("ivan", "personalize.content.profiled", "ivan-2"))
            .await
            .expect_err("an erased subject records nothing");
        assert_eq!(reason(&err), "SUBJECT_ERASED", "{backend:?}");
        server.stop().await;
    }
}
