//! Deserialize a whole document and report *every* field error, not just the first.
//!
//! serde stops at the first error. Rather than duplicating the schema in a hand-written walker
//! (which would drift from the `deny_unknown_fields` structs), this module keeps the serde types
//! as the single source of truth and loops: deserialize a copy of the parsed tree; on error, note
//! the field path (via `serde_path_to_error`), delete that key (or list element) from the tree,
//! and try again. Every struct field in the raw config types is optional, so deleting a bad key
//! never causes a second, derived error. The loop ends when deserialization succeeds (yielding the
//! value with the bad parts left out, so validation can still run and report its own problems) or
//! when an error cannot be attributed to a removable key.
//!
//! Lines: TOML errors carry byte spans from the parser, and the spanned TOML tree locates any
//! path. serde_yaml_ng keeps no positions in its `Value`, so YAML paths are located by scanning the
//! source text for the keys along the path (block style; flow style falls back to the nearest
//! enclosing key found).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Cap on reported field errors per document; past it the file is not worth reading further.
const MAX_ISSUES: usize = 100;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A field path such as `spec.kubelet.flags[2]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    /// Parses the rendered form back: `"spec.kubelet.flags[2]"` (keys containing `.` or `[`
    /// cannot be expressed, and none of the config schemas have such keys).
    pub fn parse(path: &str) -> Self {
        let mut segs = Vec::new();
        for part in path.split('.') {
            let (key, mut rest) = match part.find('[') {
                Some(at) => part.split_at(at),
                None => (part, ""),
            };
            if !key.is_empty() {
                segs.push(Seg::Key(key.to_owned()));
            }
            while let Some(inner) = rest.strip_prefix('[') {
                let Some(close) = inner.find(']') else { break };
                if let Ok(n) = inner[..close].parse() {
                    segs.push(Seg::Index(n));
                }
                rest = &inner[close + 1..];
            }
        }
        Self(segs)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A field error found while deserializing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The field, in the original document's indices.
    pub path: FieldPath,
    /// serde's message (`unknown field \`x\`, expected one of …`, `invalid type: …`).
    pub message: String,
    /// Byte offset in the source, when the parser knows it.
    pub offset: Option<usize>,
}

/// The outcome: the value (with bad fields left out) if one could be built, and every issue.
#[derive(Debug)]
pub struct Decoded<T> {
    /// `None` when an error could not be isolated to a field.
    pub value: Option<T>,
    /// Every field error, in the order found.
    pub issues: Vec<Issue>,
}

/// A parsed document that can be deserialized from a copy and pruned.
pub trait Tree: Clone {
    /// Deserializes `T`, returning the failing path, message and source offset on error.
    fn decode<T: DeserializeOwned>(self) -> Result<T, (Vec<Seg>, String, Option<usize>)>;
    /// Removes the key or element at `path`; false if there is nothing there.
    fn remove(&mut self, path: &[Seg]) -> bool;
}

fn segments(path: &serde_path_to_error::Path) -> Option<Vec<Seg>> {
    path.iter()
        .map(|seg| match seg {
            Segment::Map { key } => Some(Seg::Key(key.clone())),
            Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Unknown => None,
        })
        .collect()
}

/// Maps indices in the pruned tree back to the original document, per sequence.
#[derive(Default)]
struct Removed(BTreeMap<Vec<Seg>, Vec<usize>>);

impl Removed {
    fn original(&self, path: &[Seg]) -> Vec<Seg> {
        let mut out: Vec<Seg> = Vec::with_capacity(path.len());
        for seg in path {
            let mapped = match seg {
                Seg::Index(i) => Seg::Index(self.original_index(&out, *i)),
                key => key.clone(),
            };
            out.push(mapped);
        }
        out
    }

    fn original_index(&self, seq: &[Seg], current: usize) -> usize {
        let mut index = current;
        if let Some(removed) = self.0.get(seq) {
            // `removed` is sorted: each removed element at or before the index shifts it by one.
            for &r in removed {
                if r <= index {
                    index += 1;
                } else {
                    break;
                }
            }
        }
        index
    }

    fn record(&mut self, original: &[Seg]) {
        if let Some((Seg::Index(i), seq)) = original.split_last() {
            let list = self.0.entry(seq.to_vec()).or_default();
            let at = list.partition_point(|r| r < i);
            list.insert(at, *i);
        }
    }
}

/// Deserializes `T` from `tree`, collecting every field error (see the module docs).
pub fn decode_all<T: DeserializeOwned, D: Tree>(mut tree: D) -> Decoded<T> {
    let mut issues = Vec::new();
    let mut removed = Removed::default();
    while issues.len() < MAX_ISSUES {
        match tree.clone().decode::<T>() {
            Ok(value) => {
                return Decoded {
                    value: Some(value),
                    issues,
                };
            }
            Err((path, message, offset)) => {
                let original = removed.original(&path);
                issues.push(Issue {
                    path: FieldPath(original.clone()),
                    message,
                    offset,
                });
                if path.is_empty() || !tree.remove(&path) {
                    return Decoded {
                        value: None,
                        issues,
                    };
                }
                removed.record(&original);
            }
        }
    }
    Decoded {
        value: None,
        issues,
    }
}

// ---------------------------------------------------------------------------------------------
// YAML

impl Tree for serde_yaml_ng::Value {
    fn decode<T: DeserializeOwned>(self) -> Result<T, (Vec<Seg>, String, Option<usize>)> {
        serde_path_to_error::deserialize(self).map_err(|e| {
            let path = segments(e.path()).unwrap_or_default();
            (path, e.into_inner().to_string(), None)
        })
    }

    fn remove(&mut self, path: &[Seg]) -> bool {
        use serde_yaml_ng::Value;
        let Some((last, parents)) = path.split_last() else {
            return false;
        };
        let mut current = self;
        for seg in parents {
            let next = match (seg, current) {
                (Seg::Key(k), Value::Mapping(map)) => map.get_mut(k.as_str()),
                (Seg::Index(i), Value::Sequence(seq)) => seq.get_mut(*i),
                _ => None,
            };
            match next {
                Some(value) => current = value,
                None => return false,
            }
        }
        match (last, current) {
            (Seg::Key(k), Value::Mapping(map)) => map.remove(k.as_str()).is_some(),
            (Seg::Index(i), Value::Sequence(seq)) if *i < seq.len() => {
                seq.remove(*i);
                true
            }
            _ => false,
        }
    }
}

/// Finds the 1-based line of `path` in block-style YAML text; when the full path is not found
/// (a missing field, or flow style), returns the line of the deepest enclosing key found.
pub fn yaml_line(source: &str, path: &[Seg]) -> Option<usize> {
    let lines: Vec<&str> = source.lines().collect();
    let mut found: Option<usize> = None; // index into `lines`
    let mut start = 0;
    let mut parent_indent: Option<usize> = None;
    for seg in path {
        let mut hit = None;
        let mut child_indent: Option<usize> = None;
        let mut item = 0;
        for (i, raw) in lines.iter().enumerate().skip(start) {
            let trimmed = raw.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
                continue;
            }
            let indent = raw.len() - trimmed.len();
            if parent_indent.is_some_and(|p| indent <= p) && found.is_some() {
                // Left the enclosing block. A sequence item ("- ") may sit at the parent's
                // indentation, which YAML allows for lists under a key.
                if !(matches!(seg, Seg::Index(_))
                    && trimmed.starts_with('-')
                    && parent_indent == Some(indent))
                {
                    break;
                }
            }
            match seg {
                Seg::Key(key) => {
                    let (content, content_indent) = match trimmed.strip_prefix("- ") {
                        Some(rest) => (rest.trim_start(), indent + 2),
                        None => (trimmed, indent),
                    };
                    let level = *child_indent.get_or_insert(content_indent);
                    if content_indent == level && key_matches(content, key) {
                        hit = Some((i, content_indent));
                        break;
                    }
                }
                Seg::Index(n) => {
                    if let Some(rest) = trimmed.strip_prefix('-') {
                        if rest.is_empty() || rest.starts_with(' ') {
                            let level = *child_indent.get_or_insert(indent);
                            if indent == level {
                                if item == *n {
                                    hit = Some((i, indent));
                                    break;
                                }
                                item += 1;
                            }
                        }
                    } else if child_indent.is_none() {
                        break; // not a block sequence (flow style or scalar)
                    }
                }
            }
        }
        match hit {
            Some((i, indent)) => {
                found = Some(i);
                start = i + 1;
                parent_indent = Some(indent);
            }
            None => break,
        }
    }
    found.map(|i| i + 1)
}

fn key_matches(content: &str, key: &str) -> bool {
    let rest = if let Some(r) = content.strip_prefix(key) {
        r
    } else if let Some(r) = content
        .strip_prefix('"')
        .and_then(|c| c.strip_prefix(key))
        .and_then(|c| c.strip_prefix('"'))
    {
        r
    } else if let Some(r) = content
        .strip_prefix('\'')
        .and_then(|c| c.strip_prefix(key))
        .and_then(|c| c.strip_prefix('\''))
    {
        r
    } else {
        return false;
    };
    let rest = rest.trim_start_matches([' ', '\t']);
    rest == ":" || rest.starts_with(": ") || rest.starts_with(":\t")
}

// ---------------------------------------------------------------------------------------------
// TOML

/// A parsed TOML document that remembers spans.
#[derive(Clone)]
pub struct TomlTree<'i>(pub Spanned<DeTable<'i>>);

impl<'i> TomlTree<'i> {
    /// Parses a TOML document, returning every syntax error the parser recovered from as
    /// (message, byte offset).
    pub fn parse(source: &'i str) -> Result<Self, Vec<(String, Option<usize>)>> {
        let (table, errors) = DeTable::parse_recoverable(source);
        if errors.is_empty() {
            Ok(Self(table))
        } else {
            Err(errors
                .into_iter()
                .map(|e| (e.message().to_owned(), e.span().map(|s| s.start)))
                .collect())
        }
    }

    /// Byte offset of the key at `path`, or of the deepest enclosing key that exists.
    pub fn offset(&self, path: &[Seg]) -> Option<usize> {
        let mut best = None;
        let mut table: Option<&DeTable<'i>> = Some(self.0.get_ref());
        let mut value: Option<&Spanned<DeValue<'i>>> = None;
        for seg in path {
            let next = match (seg, table, value) {
                (Seg::Key(k), Some(t), _) => t
                    .iter()
                    .find(|(key, _)| key.get_ref().as_ref() == k.as_str())
                    .map(|(key, v)| (key.span().start, v)),
                (Seg::Index(i), _, Some(v)) => match v.get_ref() {
                    DeValue::Array(items) => items.get(*i).map(|item| (item.span().start, item)),
                    _ => None,
                },
                _ => None,
            };
            let Some((at, v)) = next else { break };
            best = Some(at);
            value = Some(v);
            table = match v.get_ref() {
                DeValue::Table(t) => Some(t),
                _ => None,
            };
        }
        best
    }
}

impl<'i> Tree for TomlTree<'i> {
    fn decode<T: DeserializeOwned>(self) -> Result<T, (Vec<Seg>, String, Option<usize>)> {
        let deserializer = toml::de::Deserializer::from(self.0);
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = segments(e.path()).unwrap_or_default();
            let inner = e.into_inner();
            (
                path,
                inner.message().to_owned(),
                inner.span().map(|s| s.start),
            )
        })
    }

    fn remove(&mut self, path: &[Seg]) -> bool {
        let Some((last, parents)) = path.split_last() else {
            return false;
        };
        let mut table: Option<&mut DeTable<'i>> = Some(self.0.get_mut());
        let mut array: Option<&mut toml::de::DeArray<'i>> = None;
        for seg in parents {
            let next: Option<&mut Spanned<DeValue<'i>>> = match (seg, table.take(), array.take()) {
                (Seg::Key(k), Some(t), _) => t.get_mut(k.as_str()),
                (Seg::Index(i), _, Some(a)) => a.get_mut(*i),
                _ => None,
            };
            match next.map(Spanned::get_mut) {
                Some(DeValue::Table(t)) => table = Some(t),
                Some(DeValue::Array(a)) => array = Some(a),
                _ => return false,
            }
        }
        match (last, table, array) {
            (Seg::Key(k), Some(t), _) => t.remove(k.as_str()).is_some(),
            (Seg::Index(i), _, Some(a)) if *i < a.len() => {
                let kept = std::mem::replace(a, toml::de::DeArray::new())
                    .into_iter()
                    .enumerate()
                    .filter(|(n, _)| n != i)
                    .map(|(_, v)| v)
                    .collect();
                *a = kept;
                true
            }
            _ => false,
        }
    }
}

/// 1-based line of a byte offset in `source`.
pub fn line_of_offset(source: &str, offset: usize) -> usize {
    let end = offset.min(source.len());
    source.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        name: Option<String>,
        count: Option<u32>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        inner: Option<Inner>,
        list: Option<Vec<String>>,
    }

    fn keys(path: &str) -> Vec<Seg> {
        FieldPath::parse(path).0
    }

    #[test]
    fn yaml_collects_every_field_error_and_keeps_the_rest() {
        let src = "inner:\n  name: ok\n  nmae: typo\n  count: many\nlist:\n  - a\n  - [b]\n  - c\n  - {d: 1}\nextra: 1\n";
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(src).expect("yaml");
        let decoded: Decoded<Outer> = decode_all(value);
        let paths: Vec<String> = decoded.issues.iter().map(|i| i.path.to_string()).collect();
        assert_eq!(
            paths,
            ["inner.nmae", "inner.count", "list[1]", "list[3]", "extra"]
        );
        let value = decoded.value.expect("value with bad fields left out");
        assert_eq!(value.inner.and_then(|i| i.name).as_deref(), Some("ok"));
        assert_eq!(value.list, Some(vec!["a".to_owned(), "c".to_owned()]));
    }

    #[test]
    fn yaml_lines_follow_the_path() {
        let src = "# c\napiVersion: v1\nspec:\n  cluster:\n    name: x\n  hybrid:\n    ssm:\n      activationId: y\n  kubelet:\n    flags:\n    - --a\n    - --b\nname: top\n";
        assert_eq!(
            yaml_line(src, &keys("spec.hybrid.ssm.activationId")),
            Some(8)
        );
        assert_eq!(yaml_line(src, &keys("spec.cluster.name")), Some(5));
        assert_eq!(yaml_line(src, &keys("name")), Some(13));
        // Missing leaf: the closest enclosing key.
        assert_eq!(yaml_line(src, &keys("spec.cluster.region")), Some(4));
        let mut flags = keys("spec.kubelet.flags");
        flags.push(Seg::Index(1));
        assert_eq!(yaml_line(src, &flags), Some(12));
        assert_eq!(yaml_line(src, &keys("nothing")), None);
    }

    #[test]
    fn toml_collects_errors_with_offsets() {
        let src =
            "list = [\"a\", 2, \"c\", 4]\n[inner]\nname = \"n\"\nbogus = true\ncount = \"x\"\n";
        let tree = TomlTree::parse(src).expect("toml");
        let decoded: Decoded<Outer> = decode_all(tree.clone());
        let found: Vec<(String, Option<usize>)> = decoded
            .issues
            .iter()
            .map(|i| (i.path.to_string(), i.offset.map(|o| line_of_offset(src, o))))
            .collect();
        assert_eq!(
            found,
            [
                ("inner.bogus".to_owned(), Some(4)),
                ("inner.count".to_owned(), Some(5)),
                ("list[1]".to_owned(), Some(1)),
                ("list[3]".to_owned(), Some(1)),
            ]
        );
        assert_eq!(
            tree.offset(&keys("inner.count"))
                .map(|o| line_of_offset(src, o)),
            Some(5)
        );
        assert_eq!(
            tree.offset(&keys("inner.missing"))
                .map(|o| line_of_offset(src, o)),
            Some(2)
        );
        let value = decoded.value.expect("value");
        assert_eq!(value.list, Some(vec!["a".to_owned(), "c".to_owned()]));
    }

    #[test]
    fn toml_syntax_errors_are_reported() {
        let errors = TomlTree::parse("a = \nb = [1,\n")
            .err()
            .expect("syntax errors");
        assert!(!errors.is_empty());
        assert!(errors.iter().all(|(_, offset)| offset.is_some()));
    }

    #[test]
    fn field_paths_round_trip() {
        for text in [
            "a",
            "spec.kubelet.flags[2]",
            "a[0][1].b",
            "spec.featureGates.X",
        ] {
            assert_eq!(FieldPath::parse(text).to_string(), text);
        }
    }

    #[test]
    fn root_level_error_stops() {
        let value = serde_yaml_ng::Value::String("just text".into());
        let decoded: Decoded<Outer> = decode_all(value);
        assert!(decoded.value.is_none());
        assert_eq!(decoded.issues.len(), 1);
        assert!(decoded.issues[0].path.0.is_empty());
    }
}
