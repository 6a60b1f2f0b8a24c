//! Problems found in configuration input, collected rather than returned one at a time.
//!
//! A user fixing a NodeConfig on a box in a remote rack should see every mistake in one run, not
//! one per run. Each [`Problem`] names where it came from (file and line, flag, or environment
//! variable), the field as a dotted path in the file's own spelling
//! (`spec.hybrid.ssm.activationId`), what is wrong and what to do about it.

use std::fmt;
use std::path::PathBuf;

/// Where a problem's input came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A configuration file, with the 1-based line when known.
    File {
        /// The file as the user named it (or the resolved default path).
        path: PathBuf,
        /// 1-based line of the field (or of its closest enclosing field that exists).
        line: Option<usize>,
    },
    /// A command-line flag such as `--activation-id`.
    Flag(String),
    /// An environment variable such as `AWS_ENDPOINT_URL_SSM`.
    Env(String),
    /// The command line as a whole (a value that is missing everywhere).
    CommandLine,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File {
                path,
                line: Some(line),
            } => write!(f, "{}:{line}", path.display()),
            Location::File { path, line: None } => write!(f, "{}", path.display()),
            Location::Flag(flag) => write!(f, "flag {flag}"),
            Location::Env(var) => write!(f, "environment variable {var}"),
            Location::CommandLine => f.write_str("command line"),
        }
    }
}

/// One thing wrong with the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where the offending input is.
    pub location: Location,
    /// Dotted field path in the input's spelling, when the problem concerns one field.
    pub field: Option<String>,
    /// What is wrong. Never contains a secret value.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl Problem {
    /// A problem about `field` at `location`.
    pub fn new(location: Location, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            location,
            field: Some(field.into()),
            message: message.into(),
            hint: None,
        }
    }

    /// A problem about the input as a whole (unreadable file, syntax error).
    pub fn whole(location: Location, message: impl Into<String>) -> Self {
        Self {
            location,
            field: None,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds what the user should do.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.location)?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (fix: {hint})")?;
        }
        Ok(())
    }
}

/// Every problem found in one load; an error when non-empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// No problems yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Records a problem.
    pub fn push(&mut self, problem: Problem) {
        self.0.push(problem);
    }
    /// Records several problems.
    pub fn extend(&mut self, problems: impl IntoIterator<Item = Problem>) {
        self.0.extend(problems);
    }
    /// True when nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Number of problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// The problems in the order found.
    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter()
    }
    /// True when a problem about exactly `field` is already recorded.
    pub fn mentions(&self, field: &str) -> bool {
        self.0.iter().any(|p| p.field.as_deref() == Some(field))
    }
    /// `Ok(value)` when nothing is wrong, else the problems.
    pub fn into_result<T>(self, value: T) -> Result<T, Problems> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl IntoIterator for Problems {
    type Item = Problem;
    type IntoIter = std::vec::IntoIter<Problem>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl From<Problem> for Problems {
    fn from(problem: Problem) -> Self {
        Self(vec![problem])
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "invalid configuration: {n} problem{}",
            if n == 1 { "" } else { "s" }
        )?;
        for problem in &self.0 {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_line_field_and_fix() {
        let p = Problem::new(
            Location::File {
                path: "node.yaml".into(),
                line: Some(7),
            },
            "spec.cluster.name",
            "is missing",
        )
        .hint("set the cluster name");
        assert_eq!(
            p.to_string(),
            "node.yaml:7: spec.cluster.name: is missing (fix: set the cluster name)"
        );
    }

    #[test]
    fn problems_list_every_entry() {
        let mut all = Problems::new();
        all.push(Problem::whole(Location::CommandLine, "one"));
        all.push(Problem::new(
            Location::Flag("--region".into()),
            "spec.cluster.region",
            "two",
        ));
        let text = all.to_string();
        assert!(text.starts_with("invalid configuration: 2 problems"));
        assert!(text.contains("command line: one"));
        assert!(text.contains("flag --region: spec.cluster.region: two"));
    }
}
