//! The process environment, captured once and passed in.
//!
//! Endpoint overrides (`AWS_ENDPOINT_URL_*`) and the activation code variable change what the
//! agent talks to, so library code never reads `std::env` itself: `main` captures the
//! environment once and tests build exactly the environment they mean.

use std::collections::BTreeMap;

/// Environment variable that may carry the SSM activation code (kept out of `ps` and history).
pub const ACTIVATION_CODE_ENV: &str = "HYBRID_AGENT_ACTIVATION_CODE";

/// A snapshot of environment variables. `Debug` shows the names only: values include the
/// activation code and whatever AWS keys the environment holds.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Env(BTreeMap<String, String>);

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, super::secret::REDACTED)))
            .finish()
    }
}

impl Env {
    /// The current process environment (variables that are not UTF-8 are skipped: none of the
    /// ones the agent reads can legitimately be).
    pub fn from_process() -> Self {
        Self(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        )
    }

    /// The value of `name`; an empty value counts as unset, as in the AWS SDKs.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Env {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_values_are_unset() {
        let env: Env = [("A", ""), ("B", "x")].into_iter().collect();
        assert_eq!(env.get("A"), None);
        assert_eq!(env.get("B"), Some("x"));
        assert_eq!(env.get("C"), None);
    }

    #[test]
    fn debug_shows_names_not_values() {
        let env: Env = [
            (ACTIVATION_CODE_ENV, "Fj2KxR7pQ9mW4nVb8TzL3sYe"),
            ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI"),
        ]
        .into_iter()
        .collect();
        let shown = format!("{env:?}");
        assert!(shown.contains(ACTIVATION_CODE_ENV), "{shown}");
        assert!(
            !shown.contains("Fj2KxR7pQ9mW4nVb8TzL3sYe") && !shown.contains("wJalrXUtnFEMI"),
            "{shown}"
        );
    }
}
