//! The shape of a serde type — which keys each struct has, which leaves are strings or booleans —
//! read from the type's own `Deserialize` impl.
//!
//! nodeadm's decoder matches keys case-insensitively and coerces scalars by the target field's
//! type (see `compat`). Doing the same needs the schema at every path. Writing it down by hand
//! would drift from the `deny_unknown_fields` structs, so instead a probing [`Deserializer`]
//! walks the type once: serde hands `deserialize_struct` the field names, and every field is
//! visited with a dummy value. The structs stay the single source of truth.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::value::Error;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

/// What the type expects at one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A struct with these (serialized) field names.
    Struct(&'static [&'static str]),
    /// A string.
    Str,
    /// A boolean.
    Bool,
    /// A sequence; its elements are at `path[]`.
    Seq,
    /// A free-form map (kubelet config, feature gates): keys are data, not fields.
    Map,
    /// Anything else (numbers, enums, self-describing values).
    Other,
}

/// Path (`spec.kubelet.flags[]`, sequence elements as `[]`) → shape.
#[derive(Debug, Default)]
pub struct Schema(BTreeMap<String, Shape>);

impl Schema {
    /// The schema of `T`, or an empty schema if `T`'s impl rejects the probe (then nothing is
    /// folded and serde reports what it reports).
    pub fn of<T: for<'de> Deserialize<'de>>() -> Self {
        let shapes = RefCell::new(BTreeMap::new());
        match T::deserialize(Probe::new(String::new(), &shapes)) {
            Ok(_) => Self(shapes.into_inner()),
            Err(_) => Self::default(),
        }
    }

    /// The shape at `path` (`""` is the root).
    pub fn get(&self, path: &str) -> Option<Shape> {
        self.0.get(path).copied()
    }
}

/// Joins a key onto a path.
pub fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The path of a sequence's elements.
pub fn element(path: &str) -> String {
    format!("{path}[]")
}

/// Answers every request of a `Deserialize` impl with a dummy value, recording what was asked.
struct Probe<'a> {
    path: String,
    out: &'a RefCell<BTreeMap<String, Shape>>,
}

impl<'a> Probe<'a> {
    fn new(path: String, out: &'a RefCell<BTreeMap<String, Shape>>) -> Self {
        Self { path, out }
    }

    fn record(&self, shape: Shape) {
        self.out.borrow_mut().insert(self.path.clone(), shape);
    }
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = Error;

    /// Self-describing targets (`serde_json::Value`, [`super::Secret`]) take a string: every
    /// such type accepts one.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.record(Shape::Other);
        visitor.visit_str("")
    }
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.record(Shape::Bool);
        visitor.visit_bool(false)
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.record(Shape::Str);
        visitor.visit_str("")
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.record(Shape::Other);
        visitor.visit_i64(0)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.record(Shape::Other);
        visitor.visit_u64(0)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.record(Shape::Other);
        visitor.visit_f64(0.0)
    }
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.record(Shape::Other);
        visitor.visit_char('x')
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.record(Shape::Other);
        visitor.visit_bytes(&[])
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(visitor)
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.record(Shape::Other);
        visitor.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.record(Shape::Seq);
        visitor.visit_seq(Elements {
            path: element(&self.path),
            out: self.out,
            left: 1,
        })
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.record(Shape::Seq);
        visitor.visit_seq(Elements {
            path: element(&self.path),
            out: self.out,
            left: len,
        })
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(len, visitor)
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.record(Shape::Map);
        visitor.visit_map(Fields {
            path: self.path,
            out: self.out,
            fields: &[],
        })
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.record(Shape::Struct(fields));
        visitor.visit_map(Fields {
            path: self.path,
            out: self.out,
            fields,
        })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.record(Shape::Other);
        let first = variants.first().copied().unwrap_or_default();
        visitor.visit_enum(de::value::StrDeserializer::<Error>::new(first))
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("")
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! { i8 i16 i32 i128 u8 u16 u32 u128 f32 }
}

/// A struct's fields (each once, with a probe as its value), or a free-form map (no entries).
struct Fields<'a> {
    path: String,
    out: &'a RefCell<BTreeMap<String, Shape>>,
    fields: &'static [&'static str],
}

impl<'de> de::MapAccess<'de> for Fields<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.fields.first() {
            Some(field) => seed.deserialize((*field).into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some((field, rest)) = self.fields.split_first() else {
            return Err(de::Error::custom("value without a key"));
        };
        self.fields = rest;
        seed.deserialize(Probe::new(child(&self.path, field), self.out))
    }
}

/// A sequence of `left` probed elements.
struct Elements<'a> {
    path: String,
    out: &'a RefCell<BTreeMap<String, Shape>>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Elements<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(Probe::new(self.path.clone(), self.out))
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::node::NodeConfigFile;

    #[test]
    fn nodeconfig_schema_lists_fields_and_leaf_types() {
        let schema = Schema::of::<NodeConfigFile>();
        let Some(Shape::Struct(top)) = schema.get("") else {
            panic!("root is a struct: {schema:?}");
        };
        assert!(top.contains(&"apiVersion") && top.contains(&"spec"));
        assert!(matches!(
            schema.get("spec.hybrid.ssm"),
            Some(Shape::Struct(f)) if f.contains(&"activationId")
        ));
        assert_eq!(
            schema.get("spec.hybrid.enableCredentialsFile"),
            Some(Shape::Bool)
        );
        assert_eq!(schema.get("spec.cluster.name"), Some(Shape::Str));
        assert_eq!(schema.get("spec.kubelet.flags"), Some(Shape::Seq));
        assert_eq!(schema.get("spec.kubelet.flags[]"), Some(Shape::Str));
        assert_eq!(schema.get("spec.kubelet.config"), Some(Shape::Map));
        assert_eq!(schema.get("spec.featureGates"), Some(Shape::Map));
        // Nothing below a free-form map is a field.
        assert_eq!(schema.get("spec.kubelet.config.maxPods"), None);
    }
}
