//! Configuration: the agent's TOML file, nodeadm's NodeConfig and the command-line flags,
//! validated once into one typed [`Config`].
//!
//! Everything the agent will act on passes through [`load`] (or [`load_agent`] for commands that
//! need no node settings). Loading never stops at the first mistake: syntax errors, unknown or
//! mistyped fields and invalid values are all collected into [`Problems`], each naming the file
//! (and line), flag or environment variable, the field, and the fix. Nothing downstream
//! re-validates: once a [`Config`] exists, its values are usable as typed.
//!
//! Secrets are held in [`Secret`] and URLs with passwords in [`SafeUrl`], so the `Serialize`
//! output used by `config show` — and every `Debug` — is safe to print.

mod agent;
mod compat;
mod endpoints;
mod env;
mod node;
mod problem;
mod schema;
mod secret;
mod tolerant;
mod types;
mod validate;
pub mod window;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use agent::{
    AgentConfig, AgentConfigSource, ArtifactsConfig, CredentialsConfig,
    DEFAULT_SSM_PRESENCE_INTERVAL, DEFAULT_STARTUP_SPREAD, DEFAULT_SUBSYSTEM_DOWN_LIMIT,
    DEFAULT_SUBSYSTEM_RESTART_CAP, DaemonConfig, NetworkConfig, OnAgentStop, Priority, SpoolConfig,
    StatusConfig, SupervisorBackend, SupervisorConfig, TelemetryConfig,
};
pub use endpoints::{
    Endpoint, EndpointError, EndpointOrigin, Endpoints, GLOBAL_ENDPOINT_ENV, Service,
};
pub use env::{ACTIVATION_CODE_ENV, Env};
pub use node::{ActivationCodeInput, NodeInput, NodeOverrides};
pub use problem::{Location, Problem, Problems};
pub use secret::{REDACTED, Secret};
pub use types::{Region, SafeUrl, format_duration, parse_cidr};
pub use validate::{Cluster, Containerd, Kubelet, NodeSettings, Provider};

use crate::paths::HostPaths;
use tolerant::{FieldPath, Issue, Seg, TomlTree, decode_all, line_of_offset, yaml_line};

/// Finds the 1-based line of a field path in one file (or of its closest existing ancestor).
type Locator<'a> = Box<dyn Fn(&[Seg]) -> Option<usize> + 'a>;

/// A configuration file being checked: its path and how to find a field's line in it.
pub(crate) struct SourceFile<'a> {
    path: &'a Path,
    locate: Locator<'a>,
    /// Keys the file spells differently from the schema (a NodeConfig's `activationID`).
    spelling: Option<&'a compat::Folded>,
}

impl SourceFile<'_> {
    /// `segs` (schema spelling) as the file writes them.
    fn written(&self, segs: &[Seg]) -> FieldPath {
        FieldPath(match self.spelling {
            Some(folded) => folded.written(segs),
            None => segs.to_vec(),
        })
    }

    /// `field` (a dotted path in schema spelling) as the file writes it.
    fn spelled(&self, field: &str) -> String {
        self.written(&FieldPath::parse(field).0).to_string()
    }

    /// The location of `field` (a dotted path such as `spec.kubelet.flags[1]`).
    fn location(&self, field: &str) -> Location {
        Location::File {
            path: self.path.to_path_buf(),
            line: (self.locate)(&self.written(&FieldPath::parse(field).0).0),
        }
    }

    fn issue(&self, issue: &Issue, source_text: &str) -> Problem {
        let written = self.written(&issue.path.0);
        let line = issue
            .offset
            .map(|o| line_of_offset(source_text, o))
            .or_else(|| (self.locate)(&written.0));
        let location = Location::File {
            path: self.path.to_path_buf(),
            line,
        };
        let message = humanize(&issue.message);
        if issue.path.0.is_empty() {
            return Problem::whole(location, message)
                .hint("the file must be a mapping of fields, as in the documented example");
        }
        let problem = Problem::new(location, written.to_string(), message);
        if issue.message.starts_with("unknown field") {
            match did_you_mean(&issue.message) {
                Some(known) => problem.hint(format!(
                    "did you mean `{known}`? rename the key, or remove it"
                )),
                None => problem.hint("remove the field or correct its spelling"),
            }
        } else if issue.message.starts_with("unknown variant") {
            problem.hint("use one of the listed values")
        } else if issue.message.starts_with("invalid type") {
            problem.hint("write a value of the expected type; quote values meant as text")
        } else {
            problem.hint("see the documented example for this field's format")
        }
    }
}

/// Most edits between an unknown key and a known field for the field to be suggested.
const MAX_SUGGESTION_EDITS: usize = 2;

/// The known field closest to the unknown one in serde's "unknown field `x`, expected one of
/// `a`, `b`" message, when it is a near miss (letter case is already accepted, so it is not
/// counted as an edit).
fn did_you_mean(message: &str) -> Option<String> {
    let mut quoted = message.split('`').skip(1).step_by(2);
    let unknown = quoted.next()?.to_ascii_lowercase();
    quoted
        .map(|known| (edit_distance(&unknown, &known.to_ascii_lowercase()), known))
        .filter(|(d, _)| *d <= MAX_SUGGESTION_EDITS.min((unknown.len() / 3).max(1)))
        .min_by_key(|(d, _)| *d)
        .map(|(_, known)| known.to_owned())
}

/// Edit distance counting an adjacent swap (`nmae`) as one edit (optimal string alignment).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// serde names Rust types in its messages ("expected struct Spec"); say what the user wrote.
fn humanize(message: &str) -> String {
    match message.find("expected struct ") {
        Some(at) => format!("{}expected a mapping of fields", &message[..at]),
        None => message.to_owned(),
    }
}

/// Replaces every `quoted` snippet of a parser message with `***`. A YAML document that fails to
/// parse has not been typed yet, so the parser cannot know a value is secret; it quotes values it
/// cannot represent (a 24-digit activation code overflows every integer type), and that value may
/// be the activation code.
fn scrub_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('`');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    let mut inside = true;
    for part in parts {
        if inside {
            out.push('`');
            out.push_str(REDACTED);
            out.push('`');
        } else {
            out.push_str(part);
        }
        inside = !inside;
    }
    out
}

/// Which files the configuration was read from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sources {
    /// Agent config file read, or none (built-in defaults).
    pub agent_config: Option<PathBuf>,
    /// NodeConfig file read, or none (flags only).
    pub node_config: Option<PathBuf>,
}

/// The one validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// Where it came from.
    pub sources: Sources,
    /// Agent settings.
    pub agent: AgentConfig,
    /// Node settings.
    pub node: NodeSettings,
}

/// The agent half only, for commands that need no node settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentOnly {
    /// Where it came from.
    pub sources: Sources,
    /// Agent settings.
    pub agent: AgentConfig,
}

/// What every load needs: where host paths live, the environment, and the agent config source.
#[derive(Debug, Clone, Copy)]
pub struct LoadContext<'a> {
    /// Host paths under `--root`.
    pub paths: &'a HostPaths,
    /// The captured environment.
    pub env: &'a Env,
    /// `--config` or the default location.
    pub agent_config: &'a AgentConfigSource,
}

/// Loads and validates the agent config and the node settings together, reporting the problems
/// of both at once.
pub fn load(ctx: LoadContext<'_>, node: &NodeInput) -> Result<Config, Problems> {
    let mut problems = Problems::new();
    let (agent_path, agent) = load_agent_into(ctx, &mut problems);
    let (node_path, node) = load_node_into(ctx.paths, node, &mut problems);
    match node {
        Some(node) if problems.is_empty() => Ok(Config {
            sources: Sources {
                agent_config: agent_path,
                node_config: node_path,
            },
            agent,
            node,
        }),
        _ => Err(problems),
    }
}

/// Loads and validates the agent config alone.
pub fn load_agent(ctx: LoadContext<'_>) -> Result<AgentOnly, Problems> {
    let mut problems = Problems::new();
    let (agent_path, agent) = load_agent_into(ctx, &mut problems);
    problems.into_result(AgentOnly {
        sources: Sources {
            agent_config: agent_path,
            node_config: None,
        },
        agent,
    })
}

fn read(path: &Path, what: &str, hint: &str, problems: &mut Problems) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) => {
            problems.push(
                Problem::whole(
                    Location::File {
                        path: path.to_path_buf(),
                        line: None,
                    },
                    format!("cannot read the {what}: {e}"),
                )
                .hint(hint),
            );
            None
        }
    }
}

fn load_agent_into(
    ctx: LoadContext<'_>,
    problems: &mut Problems,
) -> (Option<PathBuf>, AgentConfig) {
    let path = match ctx.agent_config {
        AgentConfigSource::Explicit(path) => path.clone(),
        AgentConfigSource::Default => {
            let path = ctx.paths.agent_config();
            if !path.exists() {
                // The file is optional: without it, defaults (and the environment) apply.
                return (None, agent::resolve(None, ctx.paths, ctx.env, problems));
            }
            path
        }
    };
    let defaults = |problems: &mut Problems| agent::resolve(None, ctx.paths, ctx.env, problems);
    let Some(text) = read(
        &path,
        "agent config",
        "check the path given to --config (or /etc/hybrid-agent/config.toml under --root) and its permissions",
        problems,
    ) else {
        return (Some(path), defaults(problems));
    };
    let tree = match TomlTree::parse(&text) {
        Ok(tree) => tree,
        Err(mut errors) => {
            errors.sort_by_key(|(_, offset)| *offset);
            for (message, offset) in errors {
                problems.push(
                    Problem::whole(
                        Location::File {
                            path: path.clone(),
                            line: offset.map(|o| line_of_offset(&text, o)),
                        },
                        format!("TOML syntax error: {message}"),
                    )
                    .hint("correct the TOML syntax (see examples/config.toml for the format)"),
                );
            }
            return (Some(path), defaults(problems));
        }
    };
    let source = SourceFile {
        path: &path,
        locate: Box::new(|segs: &[Seg]| tree.offset(segs).map(|o| line_of_offset(&text, o))),
        spelling: None,
    };
    let decoded = decode_all::<agent::AgentConfigFile, _>(tree.clone());
    for issue in &decoded.issues {
        problems.push(source.issue(issue, &text));
    }
    let config = match &decoded.value {
        Some(raw) => agent::resolve(Some((raw, &source)), ctx.paths, ctx.env, problems),
        None => defaults(problems),
    };
    drop(source);
    (Some(path), config)
}

fn load_node_into(
    paths: &HostPaths,
    input: &NodeInput,
    problems: &mut Problems,
) -> (Option<PathBuf>, Option<NodeSettings>) {
    let mut raw = node::NodeConfigFile::default();
    let mut file_text: Option<(PathBuf, String)> = None;
    let mut file_ok = true;

    if let Some(source) = &input.config_source {
        match node::parse_config_source(source) {
            Err(message) => {
                problems.push(
                    Problem::whole(Location::Flag("--config-source".to_owned()), message)
                        .hint("pass the NodeConfig as file://PATH, e.g. --config-source file:///etc/hybrid-agent/nodeconfig.yaml"),
                );
                file_ok = false;
            }
            Ok(path) => match read(
                &path,
                "NodeConfig",
                "check the path given to --config-source and its permissions",
                problems,
            ) {
                None => file_ok = false,
                Some(text) => file_text = Some((path, text)),
            },
        }
    }

    let mut folded = compat::Folded::default();
    if let Some((path, text)) = &file_text {
        match parse_node_yaml(path, text, problems) {
            Some((parsed, spelling)) => {
                raw = parsed;
                folded = spelling;
            }
            None => file_ok = false,
        }
    }

    let origins = validate::apply_overrides(&mut raw, &input.overrides, problems);
    // When the file could not be read or parsed, validating the flags alone would only add
    // "missing" noise for fields the file probably sets; report the file problem by itself.
    if !file_ok {
        return (file_text.map(|(p, _)| p), None);
    }
    let source = file_text.as_ref().map(|(path, text)| SourceFile {
        path,
        locate: Box::new(move |segs: &[Seg]| yaml_line(text, segs)),
        spelling: Some(&folded),
    });
    let settings = validate::validate_node(&raw, source.as_ref(), &origins, paths, problems);
    drop(source);
    (file_text.map(|(p, _)| p), settings)
}

/// Parses a NodeConfig as nodeadm reads it (see `compat`), returning it with the keys whose
/// spelling was folded.
fn parse_node_yaml(
    path: &Path,
    text: &str,
    problems: &mut Problems,
) -> Option<(node::NodeConfigFile, compat::Folded)> {
    let location = |line: Option<usize>| Location::File {
        path: path.to_path_buf(),
        line,
    };
    let mut value: serde_yaml_ng::Value = match serde_yaml_ng::from_str(text) {
        Ok(value) => value,
        Err(e) => {
            problems.push(
                Problem::whole(
                    location(e.location().map(|l| l.line())),
                    format!("YAML syntax error: {}", scrub_quoted(&e.to_string())),
                )
                .hint("correct the YAML syntax (indent with spaces, write `key: value`)"),
            );
            return None;
        }
    };
    if value.is_null() {
        problems.push(
            Problem::whole(location(None), "the file is empty").hint(format!(
                "write a NodeConfig starting with `apiVersion: {}` and `kind: {}`",
                node::API_VERSION,
                node::KIND
            )),
        );
        return None;
    }
    if let Err(e) = value.apply_merge() {
        problems.push(Problem::whole(
            location(None),
            format!("YAML merge key (<<) error: {e}"),
        ));
        return None;
    }
    let folded = compat::fold(&mut value, &schema::Schema::of::<node::NodeConfigFile>());
    let source = SourceFile {
        path,
        locate: Box::new(|segs: &[Seg]| yaml_line(text, segs)),
        spelling: Some(&folded),
    };
    for conflict in &folded.conflicts {
        let mut dropped = source.written(&conflict.path).0;
        if let Some(last) = dropped.last_mut() {
            *last = Seg::Key(conflict.dropped.clone());
        }
        let kept_line = (source.locate)(&source.written(&conflict.path).0)
            .map(|l| format!(" (line {l})"))
            .unwrap_or_default();
        problems.push(
            Problem::new(
                Location::File {
                    path: path.to_path_buf(),
                    line: (source.locate)(&dropped),
                },
                FieldPath(dropped).to_string(),
                format!(
                    "sets the same field as `{}`{kept_line}, with a different value (keys match regardless of case)",
                    conflict.kept
                ),
            )
            .hint("keep one of the two keys"),
        );
    }
    let decoded = decode_all::<node::NodeConfigFile, _>(value);
    for issue in &decoded.issues {
        problems.push(source.issue(issue, text));
    }
    drop(source);
    decoded.value.map(|value| (value, folded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_are_scrubbed_from_parser_messages() {
        assert_eq!(
            scrub_quoted(
                "invalid type: integer `123456` as u128, expected any YAML value at line 9"
            ),
            "invalid type: integer `***` as u128, expected any YAML value at line 9"
        );
        assert_eq!(scrub_quoted("no quotes"), "no quotes");
        assert_eq!(scrub_quoted("`a` and `b`"), "`***` and `***`");
    }

    #[test]
    fn near_misses_are_suggested() {
        let msg = "unknown field `activationIdd`, expected `activationCode` or `activationId`";
        assert_eq!(did_you_mean(msg).as_deref(), Some("activationId"));
        let msg = "unknown field `nmae`, expected one of `name`, `region`, `cidr`";
        assert_eq!(did_you_mean(msg).as_deref(), Some("name"));
        let msg = "unknown field `bogus`, expected one of `name`, `region`";
        assert_eq!(did_you_mean(msg), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("nmae", "name"), 1);
    }

    #[test]
    fn serde_type_names_are_replaced() {
        assert_eq!(
            humanize("invalid type: integer `5`, expected struct Spec"),
            "invalid type: integer `5`, expected a mapping of fields"
        );
    }
}
