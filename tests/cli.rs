//! The `consentgate` binary's offline tools: `policy validate` accepts the shipped policy and
//! rejects a bad one with file, line and reason; `serve consent` refuses a missing or malformed
//! key file with the file and the reason, and creates none unless asked.

use std::process::Command;

fn consentgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_consentgate"))
}

#[test]
fn policy_validate_accepts_the_default_policy() {
    let out = consentgate()
        .args([
            "policy",
            "validate",
            concat!(env!("CARGO_MANIFEST_DIR"), "/policy/default.toml"),
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok (27 purposes"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn policy_validate_rejects_a_bad_file_with_file_line_and_reason() {
    let dir = std::env::temp_dir().join(format!("cg-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("bad.toml");
    let default =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policy/default.toml"))
            .expect("default policy");
    let bad = default.replacen(
        "legal_basis = \"essential\"",
        "legal_basis = \"whenever\"",
        1,
    );
    let line = bad
        .lines()
        .position(|l| l.contains("whenever"))
        .expect("edited line")
        + 1;
    std::fs::write(&file, bad).expect("write");
    let out = consentgate()
        .args(["policy", "validate"])
        .arg(&file)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = format!("{}:{line}:", file.display());
    assert!(
        stderr.contains(&expected),
        "expected {expected} in {stderr}"
    );
    assert!(
        stderr.contains("unknown legal basis \"whenever\""),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `serve consent` with `key_file` (and valid everything else): its exit code and stderr.
fn serve_consent_with(dir: &std::path::Path, key_file: &std::path::Path) -> (Option<i32>, String) {
    let tokens = dir.join("tokens.toml");
    std::fs::write(&tokens, "\"auditor\" = \"a-token-of-sixteen-chars\"\n").expect("tokens");
    let out = consentgate()
        .args([
            "serve",
            "consent",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
        ])
        .arg("--database-url")
        .arg(format!("sqlite://{}", dir.join("consent.db").display()))
        .arg("--tokens-file")
        .arg(&tokens)
        .arg("--key-file")
        .arg(key_file)
        .env_remove("CONSENTGATE_KEY_FILE_CREATE")
        .output()
        .expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn serve_consent_refuses_a_missing_or_malformed_key_file() {
    let dir = std::env::temp_dir().join(format!("cg-cli-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");

    let missing = dir.join("absent.key");
    let (code, stderr) = serve_consent_with(&dir, &missing);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("refusing to start")
            && stderr.contains(&missing.display().to_string())
            && stderr.contains("no such key file"),
        "{stderr}"
    );
    assert!(!missing.exists(), "no key file is created unless asked");

    let secret = "ab".repeat(31);
    let malformed = dir.join("short.key");
    std::fs::write(&malformed, format!("{secret}\n")).expect("write");
    let (code, stderr) = serve_consent_with(&dir, &malformed);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&malformed.display().to_string()) && stderr.contains("64 hex digits"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&secret),
        "the key is never quoted: {stderr}"
    );

    let bad_ring = dir.join("ring.key");
    std::fs::write(
        &bad_ring,
        "format = \"consentgate-keyring/v1\"\ntombstone_key = 1\n",
    )
    .expect("write");
    let (code, stderr) = serve_consent_with(&dir, &bad_ring);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&bad_ring.display().to_string()) && stderr.contains("line 2"),
        "{stderr}"
    );

    // `ledger verify` reads keys, never creates them.
    let out = consentgate()
        .args(["ledger", "verify", "--database-url"])
        .arg(format!("sqlite://{}", dir.join("consent.db").display()))
        .arg("--key-file")
        .arg(&missing)
        .output()
        .expect("run");
    assert_ne!(out.status.code(), Some(0));
    assert!(!missing.exists(), "ledger verify creates no key file");
    // A point to start from needs both halves, and a hash that is one.
    for args in [
        vec!["--from-seq", "3"],
        vec!["--from-hash", "00"],
        vec!["--from-seq", "3", "--from-hash", "not-hex"],
    ] {
        let out = consentgate()
            .args(["ledger", "verify", "--database-url"])
            .arg(format!("sqlite://{}", dir.join("consent.db").display()))
            .arg("--key-file")
            .arg(&missing)
            .args(&args)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        assert!(stderr.contains("--from-"), "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Boolean variables take the usual spellings (true/false, 1/0, yes/no, on/off); anything else
/// is refused with the variable's flag named.
#[test]
fn boolean_variables_accept_the_usual_spellings() {
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/policy/default.toml");
    for value in [
        "1", "0", "true", "false", "yes", "no", "on", "off", "TRUE", "Off",
    ] {
        let out = consentgate()
            .args(["policy", "validate", policy])
            .env("CONSENTGATE_LOG_JSON", value)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "CONSENTGATE_LOG_JSON={value}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = consentgate()
        .args(["policy", "validate", policy])
        .env("CONSENTGATE_LOG_JSON", "maybe")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--log-json"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A false spelling of CONSENTGATE_KEY_FILE_CREATE is read as false: the missing key file
    // is refused (not created), rather than the variable itself.
    let dir = std::env::temp_dir().join(format!("cg-cli-bool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let tokens = dir.join("tokens.toml");
    std::fs::write(&tokens, "\"auditor\" = \"a-token-of-sixteen-chars\"\n").expect("tokens");
    let missing = dir.join("absent.key");
    for value in ["0", "no", "off"] {
        let out = consentgate()
            .args(["serve", "consent", "--listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "off"])
            .arg("--database-url")
            .arg(format!("sqlite://{}", dir.join("consent.db").display()))
            .arg("--tokens-file")
            .arg(&tokens)
            .arg("--key-file")
            .arg(&missing)
            .env("CONSENTGATE_KEY_FILE_CREATE", value)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("no such key file"),
            "CONSENTGATE_KEY_FILE_CREATE={value}: {stderr}"
        );
        assert!(!missing.exists(), "no key file is created");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
