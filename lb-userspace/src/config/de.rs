//! A serde deserializer over the spanned tree of [`super::tree`]: the file decodes through the same
//! field definitions as ZooKeeper's JSON (`model::fields`), and every error it raises carries the
//! span and field path (`services[0].backends[1].weight`) of the value it is about.
//!
//! The file is strict: a key the target struct does not name is an error at that key.

use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, IntoDeserializer as _, MapAccess, SeqAccess, Visitor};

use super::tree::{Entry, Node, Value};

/// A decoding error and, once known, the value it is about.
#[derive(Debug)]
pub(super) struct DecodeError {
    pub place: Option<(Range<usize>, String)>,
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DecodeError {}

impl de::Error for DecodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DecodeError {
            place: None,
            message: msg.to_string(),
        }
    }

    fn invalid_type(unexpected: de::Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        let found = match unexpected {
            de::Unexpected::Str(_) => "a string",
            de::Unexpected::Signed(_) | de::Unexpected::Unsigned(_) => "an integer",
            de::Unexpected::Float(_) => "a float",
            de::Unexpected::Bool(_) => "a boolean",
            de::Unexpected::Seq => "an array",
            de::Unexpected::Map => "a table",
            _ => "another kind of value",
        };
        de::Error::custom(format!("expected {expected}, found {found}"))
    }

    fn missing_field(field: &'static str) -> Self {
        de::Error::custom(format!("missing field \"{field}\""))
    }
}

impl DecodeError {
    /// Places the error at `span`/`path` unless a deeper value already claimed it.
    fn at(mut self, span: &Range<usize>, path: &str) -> Self {
        if self.place.is_none() {
            self.place = Some((span.clone(), path.to_owned()));
        }
        self
    }
}

/// Deserializes `node`, found at `path`.
pub(super) struct NodeDeserializer<'n> {
    pub node: &'n Node,
    pub path: String,
}

impl NodeDeserializer<'_> {
    fn wrong_type(&self, expected: &str) -> DecodeError {
        de::Error::custom(format!(
            "expected {expected}, found {}",
            self.node.value.kind()
        ))
    }

    fn placed<T>(&self, result: Result<T, DecodeError>) -> Result<T, DecodeError> {
        result.map_err(|e| e.at(&self.node.span, &self.path))
    }

    fn table<'de, V: Visitor<'de>>(
        &self,
        entries: &[Entry],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_map(Entries {
            entries: entries.iter(),
            path: &self.path,
            value: None,
        })
    }
}

fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl<'de> de::Deserializer<'de> for NodeDeserializer<'_> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let result = match &self.node.value {
            Value::String(s) => visitor.visit_str(s),
            Value::Integer(v) => visitor.visit_i64(*v),
            Value::Float(v) => visitor.visit_f64(*v),
            Value::Boolean(v) => visitor.visit_bool(*v),
            Value::Array(items) => visitor.visit_seq(Items {
                items: items.iter().enumerate(),
                path: &self.path,
            }),
            Value::Table(entries) => self.table(entries, visitor),
        };
        self.placed(result)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let result = match &self.node.value {
            Value::String(s) => visitor.visit_str(s),
            _ => Err(self.wrong_type("a string")),
        };
        self.placed(result)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let result = match self.node.value {
            Value::Integer(v) => visitor.visit_i64(v),
            _ => Err(self.wrong_type("an integer")),
        };
        self.placed(result)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match &self.node.value {
            Value::Array(_) => self.deserialize_any(visitor),
            _ => self.placed(Err(self.wrong_type("an array"))),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        let Value::Table(entries) = &self.node.value else {
            return self.placed(Err(self.wrong_type("a table")));
        };
        if let Some(entry) = entries.iter().find(|e| !fields.contains(&e.key.as_str())) {
            let message = format!(
                "unknown field \"{}\", expected one of {}",
                entry.key,
                fields.join(", ")
            );
            return Err(DecodeError {
                place: Some((entry.key_span.clone(), child_path(&self.path, &entry.key))),
                message,
            });
        }
        let result = self.table(entries, visitor);
        self.placed(result)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match &self.node.value {
            Value::Table(_) => self.deserialize_any(visitor),
            _ => self.placed(Err(self.wrong_type("a table"))),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        // TOML has no null: a key that is there has a value.
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit unit_struct
        tuple tuple_struct enum identifier ignored_any
    }
}

/// The items of an array, each at `path[i]`.
struct Items<'n, I: Iterator<Item = (usize, &'n Node)>> {
    items: I,
    path: &'n str,
}

impl<'de, 'n, I: Iterator<Item = (usize, &'n Node)>> SeqAccess<'de> for Items<'n, I> {
    type Error = DecodeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DecodeError> {
        match self.items.next() {
            Some((i, node)) => {
                let path = format!("{}[{i}]", self.path);
                seed.deserialize(NodeDeserializer {
                    node,
                    path: path.clone(),
                })
                .map(Some)
                .map_err(|e| e.at(&node.span, &path))
            }
            None => Ok(None),
        }
    }
}

/// The entries of a table, each at `path.key`.
struct Entries<'n> {
    entries: std::slice::Iter<'n, Entry>,
    path: &'n str,
    value: Option<&'n Entry>,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(entry);
        let key: de::value::StrDeserializer<'_, DecodeError> =
            entry.key.as_str().into_deserializer();
        seed.deserialize(key)
            .map(Some)
            .map_err(|e| e.at(&entry.key_span, &child_path(self.path, &entry.key)))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DecodeError> {
        let Some(entry) = self.value.take() else {
            return Err(de::Error::custom("a value was asked for before its key"));
        };
        let path = child_path(self.path, &entry.key);
        // Errors a field's own `deserialize_with` raises after reading its value land here.
        seed.deserialize(NodeDeserializer {
            node: &entry.node,
            path: path.clone(),
        })
        .map_err(|e| e.at(&entry.node.span, &path))
    }
}
