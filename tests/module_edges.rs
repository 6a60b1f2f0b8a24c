//! The layering of the crate's top-level modules, held by a test: a module may use (`crate::x`
//! in code, comments aside) only modules of a lower layer. Adding a module means placing it
//! here; an edge that breaks the order fails with the file and line that made it.
//!
//! The order, bottom up: leaf utilities and contracts; configuration; AWS transport (signing,
//! clock, credentials provider, HTTP); the three independent subsystems (identity, supervision,
//! telemetry: none knows the others; the daemon wires them); what builds on them (the node's
//! host changes and its file transaction log, the published daemon state); artifact install;
//! the join/leave/upgrade flows; the daemon; doctor; the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

const LAYERS: &[(&str, u32)] = &[
    ("exit", 0),
    ("logging", 0),
    ("paths", 0),
    ("cri", 0),
    ("output", 0),
    ("retry", 0),
    ("runlock", 1),
    ("fsutil", 1),
    ("config", 1),
    ("aws", 2),
    ("identity", 3),
    ("kube", 3),
    ("supervise", 3),
    ("telemetry", 3),
    ("node", 4),
    ("state", 4),
    ("install", 5),
    ("join", 6),
    ("daemon", 7),
    ("doctor", 8),
    ("cli", 9),
];

/// Every `crate::<module>` a top-level module's code names: (from, to) → first place.
fn edges(src: &Path) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let from = first.trim_end_matches(".rs").to_string();
            if from == "lib" || from == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                // Trailing comments do not count either.
                let code = code.split(" //").next().unwrap_or("");
                let mut rest = code;
                while let Some(i) = rest.find("crate::") {
                    rest = &rest[i + "crate::".len()..];
                    let to: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                        .collect();
                    if !to.is_empty() && to != from {
                        out.entry((from.clone(), to))
                            .or_insert_with(|| format!("{}:{}", rel.display(), n + 1));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn modules_use_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layer: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let found = edges(&src);
    assert!(
        found.len() > 30,
        "the scan found only {} edges: it is not reading the sources",
        found.len()
    );
    let mut wrong = Vec::new();
    for ((from, to), at) in &found {
        match (layer.get(from.as_str()), layer.get(to.as_str())) {
            (Some(f), Some(t)) if t < f => {}
            (None, _) => wrong.push(format!(
                "{at}: module `{from}` has no layer in tests/module_edges.rs: place it"
            )),
            (_, None) => wrong.push(format!(
                "{at}: module `{to}` has no layer in tests/module_edges.rs: place it"
            )),
            (Some(f), Some(t)) => wrong.push(format!(
                "{at}: `{from}` (layer {f}) uses `{to}` (layer {t}); only lower layers may be used"
            )),
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

/// The edges issue 11 removed stay removed, whatever the layers say later.
#[test]
fn the_cut_edges_stay_cut() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = edges(&src);
    for (from, to) in [
        ("aws", "identity"),
        ("supervise", "telemetry"),
        ("telemetry", "supervise"),
        ("supervise", "daemon"),
        ("config", "daemon"),
        ("state", "daemon"),
        ("install", "join"),
        ("node", "install"),
    ] {
        assert!(
            !found.contains_key(&(from.to_string(), to.to_string())),
            "{from} uses {to} again at {}",
            found[&(from.to_string(), to.to_string())]
        );
    }
}

/// The scan itself: an edge in code counts, one in a comment does not.
#[test]
fn the_scan_reads_code_not_comments() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("a")).unwrap();
    std::fs::write(
        dir.path().join("a/mod.rs"),
        "//! see [`crate::c`]\nuse crate::b::X; // crate::d\n/// crate::e\n",
    )
    .unwrap();
    let found = edges(dir.path());
    let names: Vec<String> = found.keys().map(|(f, t)| format!("{f}->{t}")).collect();
    assert_eq!(names, ["a->b"]);
}
