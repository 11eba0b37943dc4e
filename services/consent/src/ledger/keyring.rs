//! The key file (`CONSENTGATE_KEY_FILE`): either the version-1 bare seed (64 hex digits, from
//! which the signing key and the tombstone key are derived) or a keyring (TOML) that keeps the
//! tombstone key apart from the signing keys, so that the signing key can rotate while erased
//! subjects stay erased.
//!
//! A keyring holds, in this order:
//! - `format = "consentgate-keyring/v1"`;
//! - `tombstone_key`: the HMAC key of erasure tombstones (64 hex digits). It is never rotated:
//!   Check finds an erased subject only by its tombstone under this key, so a new one would
//!   bring every erased subject back. Converting a bare seed keeps the key derived from it;
//! - `unlabelled_kid` (optional): the key id that verifies checkpoints stored without one (those
//!   written with a bare seed before key ids existed);
//! - `[signing]`: the current signing key (`kid`, `secret_key` hex, `created_at`);
//! - `[next]` (optional): a staged key (`kid`, `secret_key`, `created_at`) that verifies now and
//!   signs after the next rotation, so that every replica knows it before any signs with it;
//! - `[[retired]]`: earlier keys, public key only (`kid`, `public_key` base64url,
//!   `retired_at`): they verify what they signed and can never sign again.
//!
//! Files are written to a temporary file beside the target, with mode 0600, synced, and renamed
//! over it: a reader sees the old file or the new one, never half of one.

use super::keys::{
    KeyStatus, LedgerKeys, PublicKey, SIGNING_LABEL, TOMBSTONE_LABEL, derive, key_id,
    parse_public_key, public_key_b64, random_key,
};
use ed25519_dalek::SigningKey;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The `format` line of a keyring.
pub const FORMAT: &str = "consentgate-keyring/v1";

/// Why a key file could not be used. Messages name the file and the reason, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// There is no key file (and none may be created here).
    #[error(
        "{}: no such key file (mount the signing key, or create one with `consentgate keys init`)",
        .0.display()
    )]
    Missing(PathBuf),
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is neither a bare seed nor a valid keyring.
    #[error("{}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong (with a line number where one is known).
        reason: String,
    },
}

/// A secret signing key with its record.
#[derive(Clone)]
pub struct SecretKey {
    /// The Ed25519 secret key.
    pub key: SigningKey,
    /// When it was created (`None` for a bare seed's key).
    pub created_at: Option<OffsetDateTime>,
}

impl SecretKey {
    fn fresh(now: OffsetDateTime) -> SecretKey {
        SecretKey {
            key: SigningKey::from_bytes(&random_key()),
            created_at: Some(now),
        }
    }

    fn kid(&self) -> String {
        key_id(&self.key.verifying_key())
    }
}

/// What a key file holds, in either format.
#[derive(Clone)]
pub struct Keyring {
    /// The HMAC key of erasure tombstones: never rotated.
    pub tombstone_key: [u8; 32],
    /// The key id that verifies checkpoints stored without one.
    pub unlabelled_kid: Option<String>,
    /// The key that signs now.
    pub signing: SecretKey,
    /// A staged key: verifies now, signs after the next rotation.
    pub next: Option<SecretKey>,
    /// Earlier signing keys, public only, oldest first.
    pub retired: Vec<PublicKey>,
    /// Whether the file was a bare seed (it becomes a keyring when next written).
    pub bare_seed: bool,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("signing", &self.signing.kid())
            .field("next", &self.next.as_ref().map(SecretKey::kid))
            .field("retired", &self.retired.len())
            .finish_non_exhaustive()
    }
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The key that signed until now (now retired).
    pub retired: String,
    /// The key that signs from now on.
    pub current: String,
}

impl Keyring {
    /// The keyring a bare seed stands for: the same signing and tombstone keys, and its signing
    /// key as the key of checkpoints without a key id (it made them).
    pub fn from_seed(seed: &[u8; 32]) -> Keyring {
        let signing = SigningKey::from_bytes(&derive(SIGNING_LABEL, seed));
        Keyring {
            tombstone_key: derive(TOMBSTONE_LABEL, seed),
            unlabelled_kid: Some(key_id(&signing.verifying_key())),
            signing: SecretKey {
                key: signing,
                created_at: None,
            },
            next: None,
            retired: Vec::new(),
            bare_seed: true,
        }
    }

    /// A new keyring: a random signing key and a random tombstone key.
    pub fn generate(now: OffsetDateTime) -> Keyring {
        Keyring {
            tombstone_key: random_key(),
            unlabelled_kid: None,
            signing: SecretKey::fresh(now),
            next: None,
            retired: Vec::new(),
            bare_seed: false,
        }
    }

    /// The keys the service runs with.
    pub fn keys(&self) -> LedgerKeys {
        let current = PublicKey::new(
            self.signing.key.verifying_key(),
            KeyStatus::Current,
            self.signing.created_at,
        );
        let mut others: Vec<PublicKey> = self
            .next
            .iter()
            .map(|n| PublicKey::new(n.key.verifying_key(), KeyStatus::Next, n.created_at))
            .collect();
        // Newest first: the key most likely to be asked for.
        others.extend(self.retired.iter().rev().cloned());
        LedgerKeys::with_current(
            self.signing.key.clone(),
            current,
            self.tombstone_key,
            others,
            self.unlabelled_kid.clone(),
        )
    }

    /// Reads a key file of either format.
    pub fn read(path: &Path) -> Result<Keyring, KeyFileError> {
        let text = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeyFileError::Missing(path.to_owned()));
            }
            Err(source) => {
                return Err(KeyFileError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let text = String::from_utf8(text).map_err(|_| KeyFileError::Malformed {
            path: path.to_owned(),
            reason: "not UTF-8 text".into(),
        })?;
        Keyring::parse(&text).map_err(|reason| KeyFileError::Malformed {
            path: path.to_owned(),
            reason,
        })
    }

    /// Reads a key file, or creates a new keyring there (and its folder) when there is none.
    pub fn read_or_create(path: &Path) -> Result<Keyring, KeyFileError> {
        match Keyring::read(path) {
            Err(KeyFileError::Missing(_)) => {
                let ring = Keyring::generate(OffsetDateTime::now_utc());
                ring.create(path)?;
                Ok(ring)
            }
            other => other,
        }
    }

    /// Parses a key file's text: a bare seed (64 hex digits) or a keyring.
    pub fn parse(text: &str) -> Result<Keyring, String> {
        let trimmed = text.trim();
        if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
            let seed: [u8; 32] = hex::decode(trimmed)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| {
                    format!(
                        "a bare seed must be 64 hex digits, this has {}",
                        trimmed.len()
                    )
                })?;
            return Ok(Keyring::from_seed(&seed));
        }
        parse_toml(text)
    }

    /// The keyring as TOML, with comments saying what each part is for.
    pub fn render(&self) -> String {
        let time = |t: Option<OffsetDateTime>| {
            t.and_then(|t| t.format(&Rfc3339).ok())
                .map(|t| format!("created_at = \"{t}\"\n"))
                .unwrap_or_default()
        };
        let mut out = String::new();
        out.push_str(
            "# consentgate signing keyring. SECRET: keep it mode 0600, in a Kubernetes Secret or a\n\
             # secret manager. Change it only with `consentgate keys` (docs/operations.md,\n\
             # \"Rotating the signing key\").\n",
        );
        out.push_str(&format!("format = \"{FORMAT}\"\n\n"));
        out.push_str(
            "# The HMAC key of erasure tombstones. NEVER change or drop it: Check finds an erased\n\
             # subject only by its tombstone under this key; a new key brings them all back.\n",
        );
        out.push_str(&format!(
            "tombstone_key = \"{}\"\n",
            hex::encode(self.tombstone_key)
        ));
        if let Some(kid) = &self.unlabelled_kid {
            out.push_str(
                "\n# The key that verifies checkpoints stored without a key id (written with a bare\n\
                 # seed file, before key ids).\n",
            );
            out.push_str(&format!("unlabelled_kid = \"{kid}\"\n"));
        }
        out.push_str("\n# Signs new checkpoints and receipts.\n[signing]\n");
        out.push_str(&format!("kid = \"{}\"\n", self.signing.kid()));
        out.push_str(&format!(
            "secret_key = \"{}\"\n",
            hex::encode(self.signing.key.to_bytes())
        ));
        out.push_str(&time(self.signing.created_at));
        if let Some(next) = &self.next {
            out.push_str(
                "\n# Staged: verifies now, signs after `consentgate keys rotate`. Roll this file out to\n\
                 # every replica before rotating.\n[next]\n",
            );
            out.push_str(&format!("kid = \"{}\"\n", next.kid()));
            out.push_str(&format!(
                "secret_key = \"{}\"\n",
                hex::encode(next.key.to_bytes())
            ));
            out.push_str(&time(next.created_at));
        }
        for r in &self.retired {
            out.push_str(
                "\n# Retired: verifies what it signed; its secret is gone. Never remove it.\n[[retired]]\n",
            );
            out.push_str(&format!("kid = \"{}\"\n", r.kid));
            out.push_str(&format!("public_key = \"{}\"\n", r.public_key_b64()));
            if let Some(t) = r.since.and_then(|t| t.format(&Rfc3339).ok()) {
                out.push_str(&format!("retired_at = \"{t}\"\n"));
            }
        }
        out
    }

    /// Stages a new key: it verifies from now on and signs after [`Keyring::rotate`]. Returns
    /// its key id. Refused when a key is already staged (rotate first).
    pub fn stage(&mut self, now: OffsetDateTime) -> Result<String, String> {
        if let Some(next) = &self.next {
            return Err(format!(
                "a key is already staged ({}): roll it out and run `consentgate keys rotate`",
                next.kid()
            ));
        }
        let next = SecretKey::fresh(now);
        let kid = next.kid();
        self.next = Some(next);
        Ok(kid)
    }

    /// Promotes the staged key to signing and retires the current one (its public key kept,
    /// its secret dropped). Without a staged key, refused unless `immediate` (then a fresh key
    /// signs at once: right for a key file only one process uses).
    pub fn rotate(&mut self, now: OffsetDateTime, immediate: bool) -> Result<Rotation, String> {
        let next = match self.next.take() {
            Some(next) => next,
            None if immediate => SecretKey::fresh(now),
            None => {
                return Err(
                    "no key is staged: run `consentgate keys stage`, roll the file out to \
                     every replica, then rotate (or pass --immediate when only one process uses \
                     this file)"
                        .into(),
                );
            }
        };
        let old = std::mem::replace(&mut self.signing, next);
        let retired = PublicKey::new(old.key.verifying_key(), KeyStatus::Retired, Some(now));
        let rotation = Rotation {
            retired: retired.kid.clone(),
            current: self.signing.kid(),
        };
        self.retired.push(retired);
        Ok(rotation)
    }

    /// Writes a new file (mode 0600; never over an existing one), creating its folder.
    pub fn create(&self, path: &Path) -> Result<(), KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        write_private(path, self.render().as_bytes(), true).map_err(io)
    }

    /// Replaces the file atomically: a temporary file beside it (mode 0600), synced, renamed
    /// over it, and the folder synced, so that a crash leaves the old file or the new one.
    pub fn replace(&self, path: &Path) -> Result<(), KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path.file_name().ok_or_else(|| KeyFileError::Malformed {
            path: path.to_owned(),
            reason: "not a file name".into(),
        })?;
        let temp = dir.join(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            hex::encode(&random_key()[..6])
        ));
        let written = write_private(&temp, self.render().as_bytes(), true)
            .and_then(|()| std::fs::rename(&temp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(io(e));
        }
        // The rename is durable once the folder is.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Writes `bytes` to a new file readable by its owner only, and syncs it.
fn write_private(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    Ok(())
}

/// The TOML form, as read.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringToml {
    format: String,
    tombstone_key: String,
    unlabelled_kid: Option<String>,
    signing: SecretToml,
    next: Option<SecretToml>,
    #[serde(default)]
    retired: Vec<RetiredToml>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretToml {
    kid: String,
    secret_key: String,
    created_at: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RetiredToml {
    kid: String,
    public_key: String,
    retired_at: Option<String>,
}

fn parse_toml(text: &str) -> Result<Keyring, String> {
    let raw: KeyringToml = toml::from_str(text).map_err(|e| {
        // The message only: toml's display quotes the offending line, which may hold a secret.
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        match line {
            Some(line) => format!(
                "line {line}: {} (neither a bare seed of 64 hex digits nor a keyring)",
                e.message()
            ),
            None => format!(
                "{} (neither a bare seed of 64 hex digits nor a keyring)",
                e.message()
            ),
        }
    })?;
    if raw.format != FORMAT {
        return Err(format!(
            "format {:?} is not {FORMAT:?} (a keyring this version cannot read)",
            raw.format
        ));
    }
    let hex32 = |what: &str, v: &str| -> Result<[u8; 32], String> {
        hex::decode(v)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| format!("{what} must be 64 hex digits"))
    };
    let time = |what: &str, v: Option<&str>| -> Result<Option<OffsetDateTime>, String> {
        v.map(|v| {
            OffsetDateTime::parse(v, &Rfc3339)
                .map_err(|_| format!("{what} must be an RFC 3339 time"))
        })
        .transpose()
    };
    let secret = |what: &str, s: &SecretToml| -> Result<SecretKey, String> {
        let key = SigningKey::from_bytes(&hex32(&format!("{what}.secret_key"), &s.secret_key)?);
        let kid = key_id(&key.verifying_key());
        if s.kid != kid {
            return Err(format!(
                "{what}.kid {:?} is not the id of its key ({kid})",
                s.kid
            ));
        }
        Ok(SecretKey {
            key,
            created_at: time(&format!("{what}.created_at"), s.created_at.as_deref())?,
        })
    };
    let signing = secret("signing", &raw.signing)?;
    let next = raw.next.as_ref().map(|n| secret("next", n)).transpose()?;
    let mut retired = Vec::new();
    for (i, r) in raw.retired.iter().enumerate() {
        let what = format!("retired[{i}]");
        let key = parse_public_key(&r.public_key)
            .ok_or_else(|| format!("{what}.public_key is not a base64url Ed25519 public key"))?;
        let key = PublicKey::new(
            key,
            KeyStatus::Retired,
            time(&format!("{what}.retired_at"), r.retired_at.as_deref())?,
        );
        if r.kid != key.kid {
            return Err(format!(
                "{what}.kid {:?} is not the id of its key ({})",
                r.kid, key.kid
            ));
        }
        retired.push(key);
    }
    let mut kids: Vec<String> = retired.iter().map(|r| r.kid.clone()).collect();
    kids.push(signing.kid());
    kids.extend(next.iter().map(SecretKey::kid));
    let mut unique = kids.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != kids.len() {
        return Err("a key appears twice (as signing, next or retired)".into());
    }
    if let Some(kid) = &raw.unlabelled_kid
        && !kids.contains(kid)
    {
        return Err(format!(
            "unlabelled_kid {kid:?} names no key of the keyring: checkpoints without a key id could not be verified"
        ));
    }
    Ok(Keyring {
        tombstone_key: hex32("tombstone_key", &raw.tombstone_key)?,
        unlabelled_kid: raw.unlabelled_kid,
        signing,
        next,
        retired,
        bare_seed: false,
    })
}

/// The public part of a keyring, for `consentgate keys show`: one line per key.
pub fn describe(keys: &LedgerKeys) -> Vec<String> {
    keys.verifiers()
        .keys()
        .iter()
        .map(|k| {
            let since = k
                .since
                .and_then(|t| t.format(&Rfc3339).ok())
                .map(|t| {
                    let word = if k.status == KeyStatus::Retired {
                        "retired"
                    } else {
                        "created"
                    };
                    format!(" ({word} {t})")
                })
                .unwrap_or_default();
            let unlabelled = if keys.verifiers().unlabelled_kid() == Some(k.kid.as_str()) {
                " [verifies checkpoints without a key id]"
            } else {
                ""
            };
            format!(
                "{:<8} kid {}  public key {}{since}{unlabelled}",
                k.status.as_str(),
                k.kid,
                public_key_b64(&k.key)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SubjectKey;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("a time")
    }

    #[test]
    fn a_bare_seed_still_reads_and_derives_the_v1_keys() {
        let ring = Keyring::parse(&format!("{}\n", "07".repeat(32))).expect("a bare seed");
        assert!(ring.bare_seed);
        let keys = ring.keys();
        let v1 = LedgerKeys::from_seed(&[7u8; 32]);
        assert_eq!(keys.public_key_b64(), v1.public_key_b64());
        assert_eq!(keys.verifiers(), v1.verifiers());
        let alice = SubjectKey::Subject("alice".into());
        assert_eq!(keys.tombstone(&alice), v1.tombstone(&alice));
    }

    #[test]
    fn staging_and_rotating_keep_the_tombstone_key_and_every_public_key() {
        let mut ring = Keyring::from_seed(&[7u8; 32]);
        let v1 = ring.keys();
        let staged = ring.stage(now()).expect("stage");
        assert!(ring.stage(now()).is_err(), "one staged key at a time");
        // Staged: verifies, does not sign yet.
        let mid = Keyring::parse(&ring.render()).expect("round trip").keys();
        assert_eq!(mid.kid(), v1.kid());
        assert_eq!(
            mid.verifiers().lookup(Some(&staged)).map(|k| k.status),
            Ok(KeyStatus::Next)
        );
        let rotation = ring.rotate(now(), false).expect("rotate");
        assert_eq!(
            rotation,
            Rotation {
                retired: v1.kid().to_owned(),
                current: staged.clone()
            }
        );
        let text = ring.render();
        assert!(
            !text.contains(&hex::encode(derive(SIGNING_LABEL, &[7u8; 32]))),
            "a retired key's secret is gone"
        );
        let after = Keyring::parse(&text).expect("round trip").keys();
        assert_eq!(after.kid(), staged);
        let alice = SubjectKey::Subject("alice".into());
        assert_eq!(after.tombstone(&alice), v1.tombstone(&alice));
        let old = after.verifiers().lookup(Some(v1.kid())).expect("old key");
        assert_eq!(
            (old.key, old.status),
            (v1.verifying_key(), KeyStatus::Retired)
        );
        // Kid-less checkpoints were made by the seed's key, and still are verified by it.
        assert_eq!(
            after.verifiers().lookup(None).map(|k| k.key),
            Ok(v1.verifying_key())
        );
        // Without a staged key, only --immediate rotates.
        assert!(ring.rotate(now(), false).is_err());
        let again = ring.rotate(now(), true).expect("immediate");
        assert_eq!(again.retired, staged);
        assert_eq!(
            Keyring::parse(&ring.render()).expect("parse").retired.len(),
            2
        );
    }

    #[test]
    fn a_malformed_keyring_is_refused_with_the_reason_and_no_secret() {
        let ring = Keyring::generate(now());
        let text = ring.render();
        let secret = hex::encode(ring.signing.key.to_bytes());
        let cases = [
            ("abc123", "64 hex digits"),
            (&text.replace(FORMAT, "consentgate-keyring/v9"), "format"),
            (
                &text.replace(&ring.signing.kid(), "not-the-kid"),
                "is not the id of its key",
            ),
            (
                &text.replace(&secret, &secret[..60]),
                "signing.secret_key must be 64 hex digits",
            ),
            (&text.replace("[signing]", "[signing]\nextra = 1"), "line "),
            (&format!("{text}unlabelled_kid_typo = 1\n"), "unknown field"),
        ];
        for (bad, reason) in cases {
            let err = Keyring::parse(bad).expect_err(reason);
            assert!(err.contains(reason), "{err:?} should say {reason:?}");
            assert!(
                !err.contains(&secret[..16]),
                "{err:?} must not quote the secret"
            );
        }
        let mut unlabelled = Keyring::generate(now());
        unlabelled.unlabelled_kid = Some("someone-else".into());
        assert!(
            Keyring::parse(&unlabelled.render())
                .expect_err("dangling")
                .contains("names no key")
        );
    }

    #[test]
    fn files_are_created_private_and_replaced_atomically() {
        let dir = std::env::temp_dir().join(format!("cg-keyring-{}", hex::encode(random_key())));
        let path = dir.join("sub/signing.key");
        assert!(matches!(
            Keyring::read(&path),
            Err(KeyFileError::Missing(_))
        ));
        let created = Keyring::read_or_create(&path).expect("created");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mut ring = Keyring::read(&path).expect("read back");
        assert_eq!(ring.keys().kid(), created.keys().kid());
        ring.rotate(now(), true).expect("rotate");
        ring.replace(&path).expect("replace");
        let read = Keyring::read(&path).expect("read rotated");
        assert_eq!(read.keys().kid(), ring.keys().kid());
        assert_eq!(read.tombstone_key, created.tombstone_key);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
