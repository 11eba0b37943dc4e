//! The `consentgate` binary's offline tools: `policy validate` accepts the shipped policy and
//! rejects a bad one with file, line and reason.

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
