//! References from the code to `docs/` cannot rot: every `docs/<file>.md` named in the sources,
//! tests, scripts and the devstack exists, and every `docs/<file>.md "<Heading>"` names a
//! heading (`#` … `######`) of that file with exactly that text. The heading may be wrapped
//! onto the next comment line. Links between the docs pages (`[..](file.md#anchor)`) must
//! resolve too. And no reference to the design notes that used to live outside the repository
//! is left (their facts are in `docs/`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Trees scanned for references (relative to the repository root).
const SCANNED: &[&str] = &[
    "src",
    "tests",
    "scripts",
    "devstack/src",
    "devstack/tests",
    "examples",
    "standin-kubelet/src",
    "packaging",
    "systemd",
    "fuzz/harness.rs",
    "Cargo.toml",
    "README.md",
];

/// File names of the old out-of-repo notes, built so that this file does not contain them.
fn retired_notes() -> [String; 2] {
    [["DESIGN", ".md"].concat(), ["PROTOCOLS", ".md"].concat()]
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every text file under `rel` (a file or a directory), skipping build output.
fn files(rel: &str) -> Vec<PathBuf> {
    let start = root().join(rel);
    let mut out = Vec::new();
    let mut stack = vec![start];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            if matches!(
                name.as_deref(),
                Some("target" | ".git" | "corpus" | "snapshots")
            ) {
                continue;
            }
            for entry in std::fs::read_dir(&p).unwrap() {
                stack.push(entry.unwrap().path());
            }
        } else if p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The headings of a Markdown file, without their `#` marks.
fn headings(text: &str) -> Vec<String> {
    let mut in_code = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
            out.push(
                line[hashes..]
                    .trim()
                    .trim_end_matches('#')
                    .trim()
                    .to_string(),
            );
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_` dropped,
/// spaces turned into `-`.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Skips whitespace and, after a line break, a comment marker (`///`, `//!`, `//`, `#`).
fn skip_gap(s: &str) -> &str {
    let mut rest = s.trim_start_matches([' ', '\t']);
    if let Some(after) = rest.strip_prefix('\n') {
        rest = after.trim_start_matches([' ', '\t']);
        for marker in ["///", "//!", "//", "#"] {
            if let Some(r) = rest.strip_prefix(marker) {
                rest = r;
                break;
            }
        }
        rest = rest.trim_start_matches([' ', '\t']);
    }
    rest
}

/// A quoted heading at the start of `s` (after [`skip_gap`]), with a line break inside it and
/// the next line's comment marker folded into one space.
fn quoted(s: &str) -> Option<String> {
    let body = s.strip_prefix('"')?;
    let end = body.find('"')?;
    let raw = &body[..end];
    if raw.len() > 120 {
        return None;
    }
    let mut text = String::new();
    for (i, line) in raw.split('\n').enumerate() {
        let mut part = line.trim();
        if i > 0 {
            for marker in ["///", "//!", "//", "#"] {
                if let Some(r) = part.strip_prefix(marker) {
                    part = r.trim_start();
                    break;
                }
            }
            text.push(' ');
        }
        text.push_str(part);
    }
    Some(text)
}

/// (file, heading) references in `text`: every `docs/<name>.md`, with the quoted heading that
/// follows it if any.
fn references(text: &str) -> Vec<(String, Option<String>)> {
    let text = text.replace("\\\"", "\"");
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("docs/") {
        let after = &rest[i + "docs/".len()..];
        rest = after;
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
            .collect();
        if name.is_empty() || !after[name.len()..].starts_with(".md") {
            continue;
        }
        let tail = &after[name.len() + ".md".len()..];
        out.push((format!("{name}.md"), quoted(skip_gap(tail))));
    }
    out
}

fn docs_headings() -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("docs")).expect("docs/ exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            out.insert(name, headings(&text));
        }
    }
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

#[test]
fn every_docs_reference_resolves() {
    let docs = docs_headings();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for tree in SCANNED {
        for path in files(tree) {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for (file, heading) in references(&text) {
                let Some(heads) = docs.get(&file) else {
                    wrong.push(format!("{}: docs/{file} does not exist", rel(&path)));
                    continue;
                };
                if let Some(h) = heading {
                    checked += 1;
                    if !heads.contains(&h) {
                        wrong.push(format!(
                            "{}: docs/{file} has no heading \"{h}\" (it has: {})",
                            rel(&path),
                            heads.join(" | ")
                        ));
                    }
                }
            }
        }
    }
    assert!(
        checked > 40,
        "only {checked} `docs/<file>.md \"<Heading>\"` references found: is the scan reading the sources?"
    );
    assert!(
        wrong.is_empty(),
        "broken docs references:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn links_between_docs_pages_resolve() {
    let docs = docs_headings();
    let mut wrong = Vec::new();
    for name in docs.keys() {
        let text = std::fs::read_to_string(root().join("docs").join(name)).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            if target.contains("://") || !target.contains(".md") {
                continue;
            }
            let (file, frag) = target.split_once('#').unwrap_or((target, ""));
            let Some(heads) = docs.get(file) else {
                wrong.push(format!("docs/{name}: link to missing {file}"));
                continue;
            };
            if !frag.is_empty() && !heads.iter().any(|h| anchor(h) == frag) {
                wrong.push(format!(
                    "docs/{name}: {file} has no heading with anchor #{frag}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "broken links in docs/:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_reference_to_the_retired_notes_remains() {
    let notes = retired_notes();
    let mut found = Vec::new();
    for tree in SCANNED {
        for path in files(tree) {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for (n, line) in text.lines().enumerate() {
                if notes.iter().any(|note| line.contains(note.as_str())) {
                    found.push(format!("{}:{}: {}", rel(&path), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "references to notes outside the repository; cite docs/<file>.md \"<Heading>\" instead:\n{}",
        found.join("\n")
    );
}

/// The scanner itself: wrapped headings, escaped quotes in string literals, bare file names.
#[test]
fn the_scanner_reads_wrapped_and_escaped_references() {
    // Written with `DOCS/` so that this file holds no reference of its own to these headings.
    let text = "/// see DOCS/protocols.md \"Lessons from\n/// amazon-ssm-agent\").\n\
                # DOCS/testing.md \"Hand-started\n# journald\": a recipe\n\
                \"rules out DOCS/architecture.md \\\"Dependencies\\\" here\"\n\
                //! DOCS/host-paths.md\n//! \"Credentials files\"\n\
                see DOCS/measurements.md for figures; DOCS/ alone; DOCS/x.txt"
        .replace("DOCS/", "docs/");
    assert_eq!(
        references(&text),
        vec![
            (
                "protocols.md".into(),
                Some("Lessons from amazon-ssm-agent".into())
            ),
            ("testing.md".into(), Some("Hand-started journald".into())),
            ("architecture.md".into(), Some("Dependencies".into())),
            ("host-paths.md".into(), Some("Credentials files".into())),
            ("measurements.md".into(), None),
        ]
    );
    assert_eq!(
        headings("# A\n## B c #\n```\n# not\n```\n####### no\n#no"),
        vec!["A".to_string(), "B c".to_string()]
    );
    assert_eq!(
        anchor("IAM Roles Anywhere CreateSession"),
        "iam-roles-anywhere-createsession"
    );
    assert_eq!(anchor("The --root rule"), "the---root-rule");
}
