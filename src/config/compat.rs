//! Reads a NodeConfig document the way nodeadm's decoder does, before serde sees it.
//!
//! nodeadm's `--config-source file://` path (`internal/configprovider/file.go` →
//! `internal/api/bridge/decode.go` `DecodeStrictNodeConfig`) calls sigs.k8s.io/yaml
//! `UnmarshalStrict`: go-yaml v2 (YAML 1.1) parses the document, `convertToJSONableObject`
//! turns it into JSON, and encoding/json decodes that with `DisallowUnknownFields`. Three of its
//! behaviours differ from serde's, and a file nodeadm accepts must load here too:
//!
//! - **Keys match fields case-insensitively** (encoding/json: exact match first, else Unicode
//!   simple case folding, as `bytes.EqualFold`). `activationID`, `roleARN`, `Spec` all work.
//!   Only struct fields fold; keys of free-form maps (`kubelet.config`) are data.
//! - **YAML 1.1 booleans**: go-yaml v2's resolve table reads plain `y Y yes Yes YES on On ON`
//!   as true and `n N no No NO off Off OFF` as false (`resolve.go`), anywhere in the document.
//! - **Scalars coerce to string fields**: a number or boolean where the field is a string
//!   becomes its text (`convertToJSONableObject`: ints in decimal, floats as Go
//!   `FormatFloat(f, 'g', -1, 32)`, booleans as `true`/`false`).
//!
//! serde_yaml_ng's `Value` does not record whether a scalar was quoted, so two readings are
//! wider than nodeadm's: a *quoted* `"yes"` for a boolean field is also accepted, and the YAML
//! 1.1 words in string fields stay as written (nodeadm turns `name: yes` into `"true"`, which
//! names no cluster; no working nodeadm file relies on it).
//!
//! The schema comes from the serde types themselves ([`Schema::of`]), and every renamed key is
//! remembered so problems point at the line the user wrote.

use std::collections::BTreeMap;

use serde_yaml_ng::{Mapping, Value};

use super::schema::{Schema, Shape, child, element};
use super::tolerant::Seg;

/// Plain scalars go-yaml v2 resolves to `true` (go.yaml.in/yaml/v2 `resolve.go`).
const YAML11_TRUE: [&str; 11] = [
    "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON",
];
/// Plain scalars go-yaml v2 resolves to `false` (go.yaml.in/yaml/v2 `resolve.go`).
const YAML11_FALSE: [&str; 11] = [
    "n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF",
];

/// A field given twice under spellings that differ only by case, with different values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The field, in canonical spelling.
    pub path: Vec<Seg>,
    /// The spelling kept.
    pub kept: String,
    /// The spelling dropped.
    pub dropped: String,
}

/// What folding changed.
#[derive(Debug, Default)]
pub struct Folded {
    /// Canonical path of each renamed key → the key as written.
    spellings: BTreeMap<Vec<Seg>, String>,
    /// Case variants of one field with different values.
    pub conflicts: Vec<Conflict>,
}

impl Folded {
    /// `path` (canonical keys) in the file's own spelling.
    pub fn written(&self, path: &[Seg]) -> Vec<Seg> {
        (0..path.len())
            .map(|i| match self.spellings.get(&path[..=i]) {
                Some(original) => Seg::Key(original.clone()),
                None => path[i].clone(),
            })
            .collect()
    }
}

/// Rewrites `value` in place: keys to their field's spelling, YAML 1.1 booleans, scalars in
/// string fields to strings.
pub fn fold(value: &mut Value, schema: &Schema) -> Folded {
    let mut folded = Folded::default();
    walk(value, schema, "", &mut Vec::new(), &mut folded);
    folded
}

fn walk(value: &mut Value, schema: &Schema, at: &str, path: &mut Vec<Seg>, out: &mut Folded) {
    match (schema.get(at), value) {
        (Some(Shape::Struct(fields)), Value::Mapping(map)) => {
            rename_keys(map, fields, path, out);
            for (key, child_value) in map.iter_mut() {
                let Value::String(key) = key else { continue };
                path.push(Seg::Key(key.clone()));
                walk(child_value, schema, &child(at, key), path, out);
                path.pop();
            }
        }
        (Some(Shape::Seq), Value::Sequence(items)) => {
            let at = element(at);
            for (i, item) in items.iter_mut().enumerate() {
                path.push(Seg::Index(i));
                walk(item, schema, &at, path, out);
                path.pop();
            }
        }
        (Some(Shape::Bool), value) => {
            if let Some(b) = value.as_str().and_then(yaml11_bool) {
                *value = Value::Bool(b);
            }
        }
        (Some(Shape::Str), value) => {
            let text = match value {
                Value::Number(n) => Some(number_text(n)),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            };
            if let Some(text) = text {
                *value = Value::String(text);
            }
        }
        // Free-form content (kubelet config, metadata): go-yaml's booleans apply inside it.
        (Some(Shape::Map | Shape::Other), value @ (Value::Mapping(_) | Value::Sequence(_))) => {
            free_form_bools(value);
        }
        _ => {}
    }
}

/// Renames case variants of `fields` to their spelling. A field given twice (two spellings) is
/// one field written twice when the values are equal; with different values nodeadm keeps the
/// one whose key sorts last in JSON, which no user means, so it is reported as a conflict.
fn rename_keys(map: &mut Mapping, fields: &[&str], path: &[Seg], out: &mut Folded) {
    let needs = map.keys().any(|k| match k {
        Value::String(k) => !fields.contains(&k.as_str()) && canonical(fields, k).is_some(),
        _ => false,
    });
    if !needs {
        return;
    }
    let mut renamed = Mapping::with_capacity(map.len());
    // Field → the spelling its kept entry was written with.
    let mut spelled: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in std::mem::take(map) {
        let (key, field, written) = match key {
            Value::String(k) => match canonical(fields, &k) {
                Some(field) => (Value::String(field.to_owned()), field.to_owned(), k),
                None => (Value::String(k.clone()), k.clone(), k),
            },
            other => {
                renamed.insert(other, value);
                continue;
            }
        };
        let mut field_path = path.to_vec();
        field_path.push(Seg::Key(field.clone()));
        match renamed.get(&key) {
            None => {
                if written != field {
                    out.spellings.insert(field_path, written.clone());
                }
                spelled.insert(field, written);
                renamed.insert(key, value);
            }
            Some(existing) if *existing == value => {}
            Some(_) => out.conflicts.push(Conflict {
                path: field_path,
                kept: spelled.get(&field).cloned().unwrap_or(field),
                dropped: written,
            }),
        }
    }
    *map = renamed;
}

/// The field `key` names under encoding/json's case-insensitive matching.
fn canonical<'f>(fields: &[&'f str], key: &str) -> Option<&'f str> {
    fields.iter().copied().find(|f| equal_fold(f, key))
}

/// Go's `bytes.EqualFold` for an ASCII field name: ASCII letters match either case, and the two
/// non-ASCII runes whose simple case fold is an ASCII letter match it (U+212A KELVIN SIGN ~ k,
/// U+017F LATIN SMALL LETTER LONG S ~ s).
fn equal_fold(field: &str, key: &str) -> bool {
    let fold = |c: char| match c {
        '\u{212A}' => 'k',
        '\u{017F}' => 's',
        c => c.to_ascii_lowercase(),
    };
    field.chars().count() == key.chars().count()
        && field
            .chars()
            .zip(key.chars())
            .all(|(a, b)| fold(a) == fold(b))
}

fn yaml11_bool(s: &str) -> Option<bool> {
    if YAML11_TRUE.contains(&s) {
        Some(true)
    } else if YAML11_FALSE.contains(&s) {
        Some(false)
    } else {
        None
    }
}

fn free_form_bools(value: &mut Value) {
    match value {
        Value::String(s) => {
            if let Some(b) = yaml11_bool(s) {
                *value = Value::Bool(b);
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(free_form_bools),
        Value::Mapping(map) => map.values_mut().for_each(free_form_bools),
        Value::Tagged(tagged) => free_form_bools(&mut tagged.value),
        _ => {}
    }
}

/// A number as sigs.k8s.io/yaml writes it into a string field: integers in decimal, floats as
/// Go's `strconv.FormatFloat(f, 'g', -1, 32)`.
fn number_text(n: &serde_yaml_ng::Number) -> String {
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    go_float32(n.as_f64().unwrap_or(f64::NAN))
}

/// `strconv.FormatFloat(f, 'g', -1, 32)`: the shortest digits that round-trip as float32, in
/// exponent form (`1.5e+07`, two-digit exponent at least) when the exponent is below -4 or at
/// least 6 (Go's `%e` threshold for shortest `'g'`), else plain decimal.
fn go_float32(f: f64) -> String {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "Go formats with bitSize 32: the value is rounded to float32 first"
    )]
    let f = f as f32;
    if f.is_nan() {
        return "NaN".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    let scientific = format!("{f:e}");
    let Some((mantissa, exp)) = scientific.split_once('e') else {
        return format!("{f}");
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..6).contains(&exp) {
        format!("{f}")
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::node::NodeConfigFile;

    fn fold_yaml(yaml: &str) -> (Value, Folded) {
        let mut value: Value = serde_yaml_ng::from_str(yaml).expect("yaml");
        let folded = fold(&mut value, &Schema::of::<NodeConfigFile>());
        (value, folded)
    }

    fn keys(path: &str) -> Vec<Seg> {
        super::super::tolerant::FieldPath::parse(path).0
    }

    #[test]
    fn keys_fold_to_field_spelling_and_remember_the_original() {
        let (value, folded) = fold_yaml(
            "APIVERSION: x\nSpec:\n  hybrid:\n    ssm:\n      activationID: a\n    iamRolesAnywhere:\n      roleARN: r\n  kubelet:\n    config:\n      MaxPods: 1\n",
        );
        let ssm = &value["spec"]["hybrid"]["ssm"];
        assert_eq!(ssm["activationId"], Value::from("a"));
        assert_eq!(
            value["spec"]["hybrid"]["iamRolesAnywhere"]["roleArn"],
            Value::from("r")
        );
        assert_eq!(value["apiVersion"], Value::from("x"));
        // Keys of free-form maps are data.
        assert_eq!(
            value["spec"]["kubelet"]["config"]["MaxPods"],
            Value::from(1)
        );
        assert_eq!(
            folded.written(&keys("spec.hybrid.ssm.activationId")),
            keys("Spec.hybrid.ssm.activationID")
        );
        assert!(folded.conflicts.is_empty());
    }

    #[test]
    fn go_fold_equivalents() {
        assert!(equal_fold("kind", "\u{212A}IND"));
        assert!(equal_fold("status", "\u{017F}tatus"));
        assert!(!equal_fold("kind", "kinds"));
        assert!(!equal_fold("roleArn", "role_arn"));
    }

    #[test]
    fn case_variants_with_different_values_conflict() {
        let (_, folded) =
            fold_yaml("spec:\n  hybrid:\n    ssm:\n      activationId: a\n      activationID: b\n");
        assert_eq!(
            folded.conflicts,
            [Conflict {
                path: keys("spec.hybrid.ssm.activationId"),
                kept: "activationId".into(),
                dropped: "activationID".into(),
            }]
        );
        let (_, same) =
            fold_yaml("spec:\n  hybrid:\n    ssm:\n      activationId: a\n      ACTIVATIONID: a\n");
        assert!(same.conflicts.is_empty());
    }

    #[test]
    fn yaml11_booleans_and_string_coercion() {
        let (value, _) = fold_yaml(
            "spec:\n  cluster:\n    name: 12345\n    enableOutpost: off\n    id: 1.5\n  hybrid:\n    enableCredentialsFile: yes\n  kubelet:\n    config: {serializeImagePulls: no, x: [On]}\n    flags: [7, true]\n",
        );
        let spec = &value["spec"];
        assert_eq!(spec["cluster"]["name"], Value::from("12345"));
        assert_eq!(spec["cluster"]["enableOutpost"], Value::Bool(false));
        assert_eq!(spec["cluster"]["id"], Value::from("1.5"));
        assert_eq!(spec["hybrid"]["enableCredentialsFile"], Value::Bool(true));
        assert_eq!(
            spec["kubelet"]["config"]["serializeImagePulls"],
            Value::Bool(false)
        );
        assert_eq!(spec["kubelet"]["config"]["x"][0], Value::Bool(true));
        assert_eq!(spec["kubelet"]["flags"][0], Value::from("7"));
        assert_eq!(spec["kubelet"]["flags"][1], Value::from("true"));
    }

    #[test]
    fn floats_format_as_go_g_32() {
        // Expected strings are strconv.FormatFloat(f, 'g', -1, 32) outputs.
        for (f, go) in [
            (1.5, "1.5"),
            (0.1, "0.1"),
            (123456.0, "123456"),
            (1234567.0, "1.234567e+06"),
            (1e10, "1e+10"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e-7, "-2.5e-07"),
            (1.1, "1.1"),
        ] {
            assert_eq!(go_float32(f), go, "{f}");
        }
    }
}
