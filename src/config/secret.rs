//! A string that must never reach a log line, an error message or `config show`.
//!
//! Activation codes grant the right to register a machine into an AWS account. Wrapping them in
//! [`Secret`] makes every accidental path (`{:?}` in a log, `Display` in an error, serde in
//! `config show`) print `***`; the one way to read the value is the explicit [`Secret::expose`].
//! Deserialization errors are also scrubbed: serde's default "invalid type: integer `…`" message
//! would otherwise echo a mistyped code.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Unexpected, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What every redacted value prints as.
pub const REDACTED: &str = "***";

/// A secret string; prints as `***` everywhere.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value, for the one place that must send it (the registration request).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in characters, which may be reported (it says nothing useful about the value).
    pub fn char_len(&self) -> usize {
        self.0.chars().count()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// For clap: any string is a valid secret, so parsing never fails (and never echoes the value).
impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

struct SecretVisitor;

/// What a wrongly typed secret is reported as: its type, never its value.
fn hidden(kind: &'static str) -> Unexpected<'static> {
    Unexpected::Other(kind)
}

impl<'de> Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string (the value is secret and not shown)")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Secret, E> {
        Ok(Secret(v))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
        Err(E::invalid_type(hidden("a boolean"), &self))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
        Err(E::invalid_type(hidden("a number"), &self))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
        Err(E::invalid_type(hidden("a number"), &self))
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Secret, E> {
        Err(E::invalid_type(hidden("a number"), &self))
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Secret, E> {
        Err(E::invalid_type(hidden("a number"), &self))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
        Err(E::invalid_type(hidden("a number"), &self))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Secret, E> {
        Err(E::invalid_type(hidden("bytes"), &self))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(de::Error::invalid_type(Unexpected::Seq, &self))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(de::Error::invalid_type(Unexpected::Map, &self))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // deserialize_any so numbers reach the scrubbing visitor instead of a format-specific
        // "expected a string" error that may quote the value.
        deserializer.deserialize_any(SecretVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODE: &str = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY";

    #[test]
    fn every_rendering_is_redacted() {
        let secret = Secret::new(CODE);
        assert_eq!(format!("{secret}"), REDACTED);
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(format!("{:?}", Some(&secret)), "Some(***)");
        assert_eq!(
            serde_json::to_string(&secret).ok().as_deref(),
            Some("\"***\"")
        );
        assert_eq!(secret.expose(), CODE);
    }

    #[test]
    fn mistyped_secret_error_does_not_echo_value() {
        let err = match serde_yaml_ng::from_str::<Secret>("123456789012345678901234567") {
            Ok(_) => panic!("a number must not be accepted as a secret"),
            Err(e) => e.to_string(),
        };
        assert!(!err.contains("1234567890"), "{err}");
        assert!(err.contains("not shown"), "{err}");
    }
}
