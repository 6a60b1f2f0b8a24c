//! Small validated value types shared by the agent config and the NodeConfig.
//!
//! Each parser returns a message that says what was expected, ready to become a [`Problem`]
//! (crate::config::Problem); none of them quote secret material.

use std::fmt;
use std::time::Duration;

use reqwest::Url;
use serde::{Serialize, Serializer};

use super::secret::REDACTED;

/// A URL whose password (as in `http://user:pass@proxy:3128`) is masked whenever it is shown.
#[derive(Clone, PartialEq, Eq)]
pub struct SafeUrl(Url);

impl SafeUrl {
    /// Parses an absolute URL whose scheme is one of `schemes`.
    pub fn parse(value: &str, schemes: &[&str]) -> Result<Self, String> {
        let url = Url::parse(value).map_err(|e| {
            format!(
                "is not a valid URL ({e}); expected e.g. {}://host:port",
                schemes.first().copied().unwrap_or("https")
            )
        })?;
        if !schemes.contains(&url.scheme()) {
            return Err(format!(
                "uses scheme `{}`; expected {}",
                url.scheme(),
                schemes
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("has no host; expected e.g. https://host:port".to_owned());
        }
        Ok(Self(url))
    }

    /// The URL, password included, for the HTTP client.
    pub fn expose(&self) -> &Url {
        &self.0
    }

    fn redacted(&self) -> String {
        if self.0.password().is_some() {
            let mut shown = self.0.clone();
            // Only fails for URLs that cannot have credentials, and this one has them.
            let _ = shown.set_password(Some(REDACTED));
            shown.to_string()
        } else {
            self.0.to_string()
        }
    }
}

impl From<Url> for SafeUrl {
    fn from(url: Url) -> Self {
        Self(url)
    }
}

impl fmt::Display for SafeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for SafeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafeUrl({})", self.redacted())
    }
}

impl Serialize for SafeUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

/// An AWS region name such as `us-west-2`, `us-gov-east-1` or `cn-north-1`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Region(String);

impl Region {
    /// Checks the shape `<area>-<name…>-<digit>` in lowercase; it does not check that the
    /// region exists (new ones appear), only that it is not a typo like `us-west2` or `US-WEST-2`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let parts: Vec<&str> = value.split('-').collect();
        let letters = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase());
        let ok = parts.len() >= 3
            && parts.first().is_some_and(|p| p.len() >= 2 && letters(p))
            && parts
                .last()
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            && parts[1..parts.len() - 1].iter().all(|p| letters(p));
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(format!(
                "`{value}` is not an AWS region name; expected lowercase like us-west-2 or eu-central-1"
            ))
        }
    }

    /// The region name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// DNS suffix of the partition: `amazonaws.com.cn` in China regions, `amazonaws.com` elsewhere.
    pub fn dns_suffix(&self) -> &'static str {
        if self.0.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a duration written as a number and a unit: `500ms`, `60s`, `5m`, `12h`, `30d`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let expected = "expected a number and a unit (ms, s, m, h, d), e.g. 60s or 30d";
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{value}` is not a duration; {expected}"))?;
    let seconds_per_unit = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("`{value}` has no known unit; {expected}")),
    };
    n.checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{value}` is too long a duration"))
}

/// Formats a duration the way [`parse_duration`] reads it: whole days or hours when exact, else
/// seconds (so the one-minute defaults read "60s", as in the example config).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() != 0 || d.as_secs() == 0 {
        return format!("{}ms", d.as_millis());
    }
    let s = d.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3_600)] {
        if s.is_multiple_of(size) {
            return format!("{}{unit}", s / size);
        }
    }
    format!("{s}s")
}

/// Serializes a duration as `format_duration` text (for `config show`).
pub fn serialize_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// Serializes an optional duration as text or null.
pub fn serialize_opt_duration<S: Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format_duration(*d)),
        None => s.serialize_none(),
    }
}

/// True for an RFC 4122 UUID in its canonical 36-character hyphenated form, the form SSM
/// prints activation ids in (docs/protocols.md "RegisterManagedInstance").
pub fn is_hyphenated_uuid(value: &str) -> bool {
    value.len() == 36
        && value.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Parses `a.b.c.d/n` or an IPv6 CIDR.
pub fn parse_cidr(value: &str) -> Result<(std::net::IpAddr, u8), String> {
    let bad =
        || format!("`{value}` is not a CIDR block; expected e.g. 10.100.0.0/16 or fd00::/108");
    let (addr, prefix) = value.split_once('/').ok_or_else(bad)?;
    let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad());
    }
    Ok((addr, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_check_accepts_only_hyphenated_form() {
        assert!(is_hyphenated_uuid("7c4e5b8a-1f2d-4c3b-9a8e-0123456789ab"));
        assert!(is_hyphenated_uuid("7C4E5B8A-1F2D-4C3B-9A8E-0123456789AB"));
        assert!(!is_hyphenated_uuid("7c4e5b8a1f2d4c3b9a8e0123456789ab"));
        assert!(!is_hyphenated_uuid(
            "{7c4e5b8a-1f2d-4c3b-9a8e-0123456789ab}"
        ));
        assert!(!is_hyphenated_uuid("7c4e5b8a-1f2d-4c3b-9a8e-0123456789ag"));
        assert!(!is_hyphenated_uuid("not-a-uuid"));
    }

    #[test]
    fn regions() {
        for ok in [
            "us-west-2",
            "us-gov-east-1",
            "cn-north-1",
            "ap-southeast-5",
            "eu-isoe-west-1",
        ] {
            assert!(Region::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["us-west2", "US-WEST-2", "uswest", "", "us--1", "u-west-1"] {
            assert!(Region::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Region::parse("cn-northwest-1").map(|r| r.dns_suffix()),
            Ok("amazonaws.com.cn")
        );
        assert_eq!(
            Region::parse("us-east-1").map(|r| r.dns_suffix()),
            Ok("amazonaws.com")
        );
    }

    #[test]
    fn durations_round_trip() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("60").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(format_duration(Duration::from_secs(300)), "300s");
        for text in ["60s", "2h", "30d", "250ms", "90s"] {
            assert_eq!(
                parse_duration(text).map(format_duration).as_deref(),
                Ok(text)
            );
        }
    }

    #[test]
    fn url_password_is_masked() {
        let url = SafeUrl::parse("http://user:hunter2@proxy:3128", &["http"]).expect("valid");
        assert_eq!(url.to_string(), "http://user:***@proxy:3128/");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert_eq!(url.expose().password(), Some("hunter2"));
        assert!(SafeUrl::parse("ftp://x", &["http", "https"]).is_err());
        assert!(SafeUrl::parse("not a url", &["https"]).is_err());
    }

    #[test]
    fn cidrs() {
        assert!(parse_cidr("10.100.0.0/16").is_ok());
        assert!(parse_cidr("fd00::/108").is_ok());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("10.0.0.0").is_err());
    }
}
