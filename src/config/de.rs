//! A serde deserializer over the configuration tree: it fills the `File*` shapes, reads an
//! environment variable's string as a number or a boolean where the key wants one, and fails with
//! a [`DeError`] that knows the key and where it was written.
//!
//! serde's own messages quote the value they refused ("invalid type: integer `123456`"), which for
//! a mistyped password is the password. Here a type or value error says what was expected and
//! what *kind* of value was found, never the value; a message written by some other visitor (a
//! duration parser, say) is kept only for keys that hold no secret.
use std::collections::btree_map;
use std::fmt;

use serde::de::{self, DeserializeSeed, Expected, MapAccess, SeqAccess, Unexpected, Visitor};

use super::ConfigError;
use super::source::{Node, Origin, Value};

/// Secret keys of a profile; with `token_store.url` (which may carry a password), the keys whose
/// values no message may show.
pub(super) const PROFILE_SECRETS: &[&str] = &["password", "totp_secret", "management_token"];

pub(super) fn is_secret_key(key: &str) -> bool {
    // `profiles.x.password[0]`: an element of an array written where the secret belongs.
    let key = key.split('[').next().unwrap_or(key);
    match key.split('.').collect::<Vec<_>>().as_slice() {
        ["profiles", _, name, ..] => PROFILE_SECRETS.contains(name),
        ["token_store", "url", ..] => true,
        _ => false,
    }
}

pub(super) fn from_node<'de, T: de::Deserialize<'de>>(node: &'de Node) -> Result<T, ConfigError> {
    T::deserialize(NodeDeserializer {
        node,
        key: String::new(),
    })
    .map_err(DeError::into_config_error)
}

#[derive(Debug)]
pub(super) struct DeError {
    message: String,
    /// Whether `message` came from a visitor that may have quoted the value.
    may_quote_value: bool,
    key: Option<String>,
    origin: Option<Origin>,
}

impl DeError {
    fn plain(message: String) -> Self {
        DeError {
            message,
            may_quote_value: false,
            key: None,
            origin: None,
        }
    }

    /// The innermost key wins: errors pass up through every enclosing table.
    fn locate(mut self, key: &str, origin: &Origin) -> Self {
        if self.key.is_none() {
            self.key = Some(key.to_owned());
            self.origin = Some(origin.clone());
        }
        self
    }

    fn into_config_error(self) -> ConfigError {
        let key = self.key.unwrap_or_default();
        let problem = if self.may_quote_value && is_secret_key(&key) {
            "expected a string".to_owned()
        } else {
            self.message
        };
        ConfigError::Invalid {
            key,
            problem,
            at: self.origin,
        }
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        DeError {
            message: message.to_string(),
            may_quote_value: true,
            key: None,
            origin: None,
        }
    }

    fn invalid_type(found: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Self::plain(format!(
            "expected {}, found {}",
            expected_text(expected),
            kind_of(&found)
        ))
    }

    fn invalid_value(found: Unexpected<'_>, expected: &dyn Expected) -> Self {
        let found = match found {
            Unexpected::Signed(_) | Unexpected::Unsigned(_) => "an integer out of range",
            Unexpected::Str(_) => "a string that is not one",
            other => kind_of(&other),
        };
        Self::plain(format!(
            "expected {}, found {found}",
            expected_text(expected)
        ))
    }

    fn invalid_length(len: usize, expected: &dyn Expected) -> Self {
        Self::plain(format!(
            "expected {}, found {len} elements",
            expected_text(expected)
        ))
    }

    /// The value named no setting this key takes. Quoting it is as safe as a custom message: no
    /// secret key is one of these.
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let names: Vec<String> = expected.iter().map(|n| format!("{n:?}")).collect();
        DeError {
            message: format!("{variant:?} is not one of {}", names.join(", ")),
            may_quote_value: true,
            key: None,
            origin: None,
        }
    }

    fn unknown_field(_field: &str, expected: &'static [&'static str]) -> Self {
        Self::plain(format!("unknown key; the keys here are {}", list(expected)))
    }

    fn missing_field(field: &'static str) -> Self {
        Self::plain(format!("missing key `{field}`"))
    }

    fn duplicate_field(field: &'static str) -> Self {
        Self::plain(format!("duplicate key `{field}`"))
    }
}

fn list(names: &[&str]) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    names.join(", ")
}

/// serde's names of what a field wants, in the words of a TOML file.
fn expected_text(expected: &dyn Expected) -> String {
    let text = expected.to_string();
    match text.as_str() {
        t if t.starts_with("struct ") || t == "a map" => "a table".into(),
        "a sequence" => "an array".into(),
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number (0 or more)".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        "path string" => "a path (a string)".into(),
        "a duration" => "a duration such as \"250ms\", \"5m\" or \"1h\"".into(),
        // bytesize's name for a size written as text.
        "parsable string" => "a size such as \"64KiB\" or \"1GiB\"".into(),
        _ => text,
    }
}

/// The kind of a refused value, never the value itself.
fn kind_of(found: &Unexpected<'_>) -> &'static str {
    match found {
        Unexpected::Bool(_) => "a boolean",
        Unexpected::Unsigned(_) | Unexpected::Signed(_) => "an integer",
        Unexpected::Float(_) => "a float",
        Unexpected::Char(_) | Unexpected::Str(_) => "a string",
        Unexpected::Bytes(_) => "bytes",
        Unexpected::Unit => "nothing",
        Unexpected::Option => "an optional value",
        Unexpected::NewtypeStruct => "a newtype",
        Unexpected::Seq => "an array",
        Unexpected::Map => "a table",
        Unexpected::Enum
        | Unexpected::UnitVariant
        | Unexpected::NewtypeVariant
        | Unexpected::TupleVariant
        | Unexpected::StructVariant => "an enum",
        Unexpected::Other(_) => "another kind of value",
    }
}

fn child_key(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

struct NodeDeserializer<'de> {
    node: &'de Node,
    key: String,
}

/// Environment variables are strings; a key that wants a number or a boolean reads it as one.
macro_rules! from_env_string {
    ($($method:ident => $visit:ident($ty:ty)),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            let node = self.node;
            match &node.value {
                Value::String(text) if matches!(node.origin, Origin::Env { .. }) => {
                    let result: Result<V::Value, DeError> = match text.trim().parse::<$ty>() {
                        Ok(value) => visitor.$visit(value),
                        Err(_) => Err(de::Error::invalid_type(Unexpected::Str(text), &visitor)),
                    };
                    result.map_err(|e| e.locate(&self.key, &node.origin))
                }
                _ => self.deserialize_any(visitor),
            }
        }
    )*};
}

impl<'de> de::Deserializer<'de> for NodeDeserializer<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let node = self.node;
        match &node.value {
            Value::String(text) => visitor.visit_borrowed_str(text),
            Value::Integer(i) => visitor.visit_i64(*i),
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Boolean(b) => visitor.visit_bool(*b),
            Value::Datetime => Err(de::Error::invalid_type(
                Unexpected::Other("a date-time"),
                &visitor,
            )),
            Value::Array(items) => visitor.visit_seq(Items {
                items: items.iter().enumerate(),
                key: &self.key,
            }),
            Value::Table(entries) => visitor.visit_map(Entries {
                kind: entries.get_key_value(KIND),
                entries: entries.iter(),
                pending: None,
                key: &self.key,
            }),
        }
        .map_err(|e| e.locate(&self.key, &node.origin))
    }

    from_env_string! {
        deserialize_bool => visit_bool(bool),
        deserialize_i8 => visit_i8(i8),
        deserialize_i16 => visit_i16(i16),
        deserialize_i32 => visit_i32(i32),
        deserialize_i64 => visit_i64(i64),
        deserialize_u8 => visit_u8(u8),
        deserialize_u16 => visit_u16(u16),
        deserialize_u32 => visit_u32(u32),
        deserialize_u64 => visit_u64(u64),
        deserialize_f32 => visit_f32(f32),
        deserialize_f64 => visit_f64(f64),
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // TOML has no null: a key that is present has a value.
        visitor.visit_some(self)
    }

    /// A setting with a fixed set of values (`log.format = "json"`): the string names the variant.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let node = self.node;
        match &node.value {
            Value::String(text) => visitor
                .visit_enum(de::value::BorrowedStrDeserializer::<DeError>::new(text))
                .map_err(|e| e.locate(&self.key, &node.origin)),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char str string bytes byte_buf unit unit_struct seq tuple tuple_struct map
        struct identifier ignored_any
    }
}

struct Items<'a, 'de> {
    items: std::iter::Enumerate<std::slice::Iter<'de, Node>>,
    key: &'a str,
}

impl<'de> SeqAccess<'de> for Items<'_, 'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some((index, node)) = self.items.next() else {
            return Ok(None);
        };
        seed.deserialize(NodeDeserializer {
            node,
            key: format!("{}[{index}]", self.key),
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// The key that says which kind a tagged section is (`token_store.kind`).
const KIND: &str = "kind";

/// A table's entries in key order, but `kind` first: a tagged section reads its kind before the
/// keys that depend on it.
struct Entries<'a, 'de> {
    kind: Option<(&'de String, &'de Node)>,
    entries: btree_map::Iter<'de, String, Node>,
    /// The entry whose key was just read, waiting for its value to be asked for.
    pending: Option<(&'de String, &'de Node)>,
    key: &'a str,
}

impl<'de> MapAccess<'de> for Entries<'_, 'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let next = match self.kind.take() {
            Some(kind) => Some(kind),
            None => self.entries.find(|(name, _)| *name != KIND),
        };
        let Some((name, node)) = next else {
            return Ok(None);
        };
        self.pending = Some((name, node));
        // An unknown key is refused here, while reading the key: point at it. Such an error can
        // quote only the key's name, never its value.
        seed.deserialize(de::value::BorrowedStrDeserializer::new(name))
            .map(Some)
            .map_err(|e: DeError| {
                DeError {
                    may_quote_value: false,
                    ..e
                }
                .locate(&child_key(self.key, name), &node.origin)
            })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (name, node) = self.pending.take().ok_or_else(|| {
            <DeError as de::Error>::custom("a value was asked for before its key")
        })?;
        seed.deserialize(NodeDeserializer {
            node,
            key: child_key(self.key, name),
        })
    }

    fn size_hint(&self) -> Option<usize> {
        None
    }
}
