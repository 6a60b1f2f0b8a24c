//! The shared AWS credentials file (`/root/.aws/credentials` by default, profile `default`):
//! what the kubelet's aws-iam-authenticator reads, as with nodeadm.
//!
//! Each rotation rewrites one profile section and keeps every other profile and line of the
//! file as it was (amazon-ssm-agent's `[default]` clobbered other credentials, #115). The new
//! file replaces the old one atomically ([`crate::identity::atomic`]), mode 0600, so a reader
//! polling the file sees the old complete credentials or the new complete credentials, never a
//! mix or a truncated file.

use std::path::{Path, PathBuf};

use crate::config::Secret;
use crate::identity::TemporaryCredentials;
use crate::identity::atomic::{self, AtomicWriteError, SECRET_FILE_MODE};

pub const KEY_ACCESS_KEY_ID: &str = "aws_access_key_id";
pub const KEY_SECRET_ACCESS_KEY: &str = "aws_secret_access_key";
pub const KEY_SESSION_TOKEN: &str = "aws_session_token";
const MANAGED_KEYS: [&str; 3] = [KEY_ACCESS_KEY_ID, KEY_SECRET_ACCESS_KEY, KEY_SESSION_TOKEN];

#[derive(Debug, thiserror::Error)]
pub enum CredFileError {
    #[error(
        "cannot read credentials file {path}: {source}; fix its permissions or remove it so the agent can recreate it"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write credentials file: {0}")]
    Write(#[from] AtomicWriteError),
    #[error(
        "refusing to write {field} into the credentials file {path}: the value received {problem} (not shown: it is a credential); the credentials service answered something that is not an AWS credential — nothing was written"
    )]
    Invalid {
        path: PathBuf,
        field: &'static str,
        problem: &'static str,
    },
}

/// Longest access key id (IAM `AccessKeyId`: 16 to 128 characters).
const MAX_ACCESS_KEY_ID_LEN: usize = 128;

/// Checks the three values before they become INI lines: a line break or other control
/// character in one would add keys or sections of its choosing to the file. Access key ids are
/// alphanumeric (IAM `AccessKeyId`, pattern `[\w]+`); secrets and session tokens are base64-like
/// and may hold any printable ASCII except spaces, never whitespace or control characters.
fn validate(creds: &TemporaryCredentials) -> Result<(), (&'static str, &'static str)> {
    let id = &creds.access_key_id;
    if id.is_empty() || id.len() > MAX_ACCESS_KEY_ID_LEN {
        return Err((KEY_ACCESS_KEY_ID, "is empty or longer than 128 characters"));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err((
            KEY_ACCESS_KEY_ID,
            "holds characters other than letters and digits",
        ));
    }
    for (field, value) in [
        (KEY_SECRET_ACCESS_KEY, creds.secret_access_key.expose()),
        (KEY_SESSION_TOKEN, creds.session_token.expose()),
    ] {
        if value.is_empty() {
            return Err((field, "is empty"));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err((field, "holds whitespace, control or non-ASCII characters"));
        }
    }
    Ok(())
}

/// One credentials file and the profile the agent owns in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsTarget {
    pub path: PathBuf,
    pub profile: String,
}

/// The three values of a profile as read back from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileValues {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

impl CredentialsTarget {
    /// Rewrites this target's profile with `creds`, keeping the rest of the file.
    pub fn write(&self, creds: &TemporaryCredentials) -> Result<(), CredFileError> {
        validate(creds).map_err(|(field, problem)| CredFileError::Invalid {
            path: self.path.clone(),
            field,
            problem,
        })?;
        let existing = match std::fs::read_to_string(&self.path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(CredFileError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let text = render(&existing, &self.profile, creds);
        atomic::write_atomic(&self.path, text.as_bytes(), SECRET_FILE_MODE)?;
        Ok(())
    }

    /// The profile's values, or `None` if the file or profile is absent or incomplete.
    pub fn read(&self) -> Result<Option<ProfileValues>, CredFileError> {
        read_profile_file(&self.path, &self.profile)
    }
}

/// Reads `profile` from the file at `path` (absent file → `None`).
pub fn read_profile_file(
    path: &Path,
    profile: &str,
) -> Result<Option<ProfileValues>, CredFileError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(parse_profile(&s, profile)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CredFileError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn section_name(line: &str) -> Option<&str> {
    let t = line.trim();
    let inner = t.strip_prefix('[')?;
    let end = inner.find(']')?;
    Some(inner[..end].trim())
}

fn key_of(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if t.starts_with('#') || t.starts_with(';') {
        return None;
    }
    t.split_once('=').map(|(k, _)| k.trim())
}

/// `existing` with section `[profile]` holding `creds`. Other sections, comments and other keys
/// of the profile (a `region =` line, say) are kept; a duplicate `[profile]` later in the file
/// is dropped so no reader can pick stale values from it.
pub fn render(existing: &str, profile: &str, creds: &TemporaryCredentials) -> String {
    let ours = format!(
        "[{profile}]\n{KEY_ACCESS_KEY_ID} = {}\n{KEY_SECRET_ACCESS_KEY} = {}\n{KEY_SESSION_TOKEN} = {}\n",
        creds.access_key_id,
        creds.secret_access_key.expose(),
        creds.session_token.expose()
    );
    let mut out = String::with_capacity(existing.len() + ours.len());
    let mut in_ours = false;
    let mut seen = false;
    let mut skipping_duplicate = false;
    for line in existing.lines() {
        if let Some(name) = section_name(line) {
            in_ours = false;
            skipping_duplicate = false;
            if name == profile {
                if seen {
                    skipping_duplicate = true;
                    continue;
                }
                seen = true;
                in_ours = true;
                out.push_str(&ours);
                continue;
            }
        }
        if skipping_duplicate {
            continue;
        }
        if in_ours && key_of(line).is_some_and(|k| MANAGED_KEYS.contains(&k)) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !seen {
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
        out.push_str(&ours);
    }
    out
}

/// The values of `[profile]` in `text`, `None` if the section or one of the keys is missing.
pub fn parse_profile(text: &str, profile: &str) -> Option<ProfileValues> {
    let mut in_ours = false;
    let (mut akid, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        if let Some(name) = section_name(line) {
            if in_ours {
                break;
            }
            in_ours = name == profile;
            continue;
        }
        if !in_ours {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().to_string();
        match k.trim() {
            KEY_ACCESS_KEY_ID => akid = Some(v),
            KEY_SECRET_ACCESS_KEY => secret = Some(Secret::new(v)),
            KEY_SESSION_TOKEN => token = Some(Secret::new(v)),
            _ => {}
        }
    }
    Some(ProfileValues {
        access_key_id: akid?,
        secret_access_key: secret?,
        session_token: token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::SystemTime;

    fn creds(n: u32) -> TemporaryCredentials {
        TemporaryCredentials {
            access_key_id: format!("ASIA{n:016}"),
            secret_access_key: Secret::new(format!("secret-{n}")),
            session_token: Secret::new(format!("token-{n}")),
            expiration: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn new_file_has_just_our_profile() {
        let text = render("", "default", &creds(1));
        assert_eq!(
            text,
            "[default]\naws_access_key_id = ASIA0000000000000001\naws_secret_access_key = secret-1\naws_session_token = token-1\n"
        );
    }

    #[test]
    fn other_profiles_and_keys_are_kept() {
        let existing = "# managed by hand\n[other]\naws_access_key_id = AKIAOTHER\naws_secret_access_key = keep\n\n\
                        [default]\nregion = us-west-2\naws_access_key_id = OLD\naws_session_token = OLDTOKEN\n\n\
                        [third]\nx = 1\n[default]\naws_access_key_id = DUPLICATE\n";
        let text = render(existing, "default", &creds(2));
        assert!(text.starts_with("# managed by hand\n[other]\naws_access_key_id = AKIAOTHER\naws_secret_access_key = keep\n"));
        assert!(text.contains("[third]\nx = 1\n"));
        assert!(
            !text.contains("OLD") && !text.contains("DUPLICATE"),
            "{text}"
        );
        assert!(text.contains("region = us-west-2"));
        let v = parse_profile(&text, "default").expect("profile");
        assert_eq!(v.access_key_id, "ASIA0000000000000002");
        assert_eq!(v.secret_access_key.expose(), "secret-2");
        assert_eq!(
            v.session_token.as_ref().map(|s| s.expose()),
            Some("token-2")
        );
        let other = parse_profile(&text, "other").expect("other profile");
        assert_eq!(other.access_key_id, "AKIAOTHER");
        assert!(other.session_token.is_none());
        // Idempotent: rendering again changes nothing but the values.
        assert_eq!(render(&text, "default", &creds(2)), text);
    }

    #[test]
    fn appended_profile_is_separated() {
        let text = render("[other]\na = b\n", "hybrid", &creds(3));
        assert_eq!(text.matches("[hybrid]").count(), 1);
        assert!(text.contains("a = b\n\n[hybrid]\n"), "{text}");
    }

    #[test]
    fn write_is_0600_and_keeps_other_profiles() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(".aws/credentials");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(
            &path,
            "[other]\naws_access_key_id = A\naws_secret_access_key = B\n",
        )
        .expect("seed");
        let target = CredentialsTarget {
            path: path.clone(),
            profile: "default".into(),
        };
        target.write(&creds(4)).expect("write");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            target.read().expect("read").expect("present").access_key_id,
            "ASIA0000000000000004"
        );
        assert!(read_profile_file(&path, "other").expect("read").is_some());
    }

    #[test]
    fn values_that_would_break_the_file_are_refused_unprinted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("credentials");
        let target = CredentialsTarget {
            path: path.clone(),
            profile: "default".into(),
        };
        let injected = "tok\n[default]\naws_access_key_id = AKIAINJECTED";
        let cases = [
            TemporaryCredentials {
                session_token: Secret::new(injected),
                ..creds(5)
            },
            TemporaryCredentials {
                secret_access_key: Secret::new("se cret\rhidden"),
                ..creds(5)
            },
            TemporaryCredentials {
                access_key_id: "ASIA\nregion = evil".to_owned(),
                ..creds(5)
            },
            TemporaryCredentials {
                session_token: Secret::new(""),
                ..creds(5)
            },
        ];
        for bad in cases {
            let e = target.write(&bad).expect_err("refused");
            let shown = format!("{e} {e:?}");
            for secret in ["AKIAINJECTED", "hidden", "evil"] {
                assert!(!shown.contains(secret), "{shown}");
            }
            assert!(shown.contains("credentials"), "{shown}");
            assert!(!path.exists(), "nothing may be written");
        }
        target.write(&creds(6)).expect("valid values are written");
    }
}
