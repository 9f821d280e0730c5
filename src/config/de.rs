//! The file and the environment layered and read into the `File*` shapes by the `config` crate,
//! and the text of its errors.
//!
//! `config`'s own error texts quote what they refused (`invalid type: string "…"`), which for a
//! mistyped password is the password, and serde's messages, which it passes on as they are, do
//! the same. So no text of a `config::ConfigError` is ever shown or kept as a source: each variant
//! is rendered here from its structure, the key it names, what the key expected (`config`'s and
//! serde's names for it, put in the words of a TOML file with an example) and the *kind* of value
//! the layered configuration holds there, looked up by key. Where the key was written comes from
//! [`Origins`]. A refused value is never shown, secret or not.
use serde::Deserialize;
use serde::de::{DeserializeOwned, IntoDeserializer};

use super::ConfigError;
use super::source::{Environment, Origins, TomlFile, child_key};

/// Secret keys of a profile; with `token_store.url` (which may carry a password), the keys whose
/// values no message may show.
pub(super) const PROFILE_SECRETS: &[&str] = &["password", "totp_secret", "management_token"];

/// Lays the environment over the file and reads the result into `T`. Returns the layered values
/// too, for what the shapes do not keep (which secrets were written inline).
pub(super) fn layer<T: DeserializeOwned>(
    file: TomlFile,
    environment: Environment,
    origins: &Origins,
) -> Result<(T, config::Value), ConfigError> {
    let layered = config::Config::builder()
        .add_source(file)
        .add_source(environment)
        .build()
        .map_err(|e| render(e, &config::Value::default(), origins))?;
    let values = layered.cache.clone();
    let shaped = layered
        .try_deserialize()
        .map_err(|e| render(e, &values, origins))?;
    Ok((shaped, values))
}

/// A setting with a fixed set of values (`log.format = "json"`), read as a string first, so that
/// a wrong one is refused by serde's own message naming every value the key takes (`config` would
/// name the Rust type instead).
pub(super) fn one_of<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    let text = String::deserialize(deserializer)?;
    T::deserialize(IntoDeserializer::<serde::de::value::Error>::into_deserializer(text.as_str()))
        .map_err(serde::de::Error::custom)
}

/// A `config` error as the operator reads it: the key, where it was written, what was expected
/// and the kind of value found.
fn render(error: config::ConfigError, values: &config::Value, origins: &Origins) -> ConfigError {
    let (key, error) = match error {
        config::ConfigError::At { error, key, .. } => (key.unwrap_or_default(), *error),
        other => (String::new(), other),
    };
    let (key, problem) = match error {
        config::ConfigError::Type {
            key: at, expected, ..
        } => {
            let key = at.unwrap_or(key);
            let problem = expected_and_found(&key, expected, values);
            (key, problem)
        }
        config::ConfigError::Message(message) => message_problem(key, &message, values),
        config::ConfigError::NotFound(key) => (key, "is missing".to_owned()),
        // Not made by the sources here or by reading values (`Frozen`, `PathParse`, `FileParse`,
        // `Foreign`, and whatever a later `config` adds): their text may hold anything.
        _ => (key, "cannot be read".to_owned()),
    };
    let at = origins.get(&key).cloned();
    ConfigError::Invalid { key, problem, at }
}

/// serde's messages, passed on by `config` as text: read for the parts that are names (of keys
/// and of what a key expects), never for the value they may quote.
fn message_problem(key: String, message: &str, values: &config::Value) -> (String, String) {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        // A key's name, once checked to be one of the table's keys, is no value.
        let name = rest.split('`').next().unwrap_or_default();
        if kind_at(&key, values).is_some_and(|table| has_key(table, name)) {
            let known = rest
                .split_once("expected ")
                .map(|(_, names)| names.trim_start_matches("one of "));
            let problem = match known {
                Some(names) => format!("unknown key; the keys here are {names}"),
                None => "unknown key; this table takes none".to_owned(),
            };
            return (child_key(&key, name), problem);
        }
        return (key, "holds an unknown key".to_owned());
    }
    if is_secret_key(&key) {
        let problem = format!("expected a string, found {}", found(&key, values));
        return (key, problem);
    }
    let problem = match message.rfind(", expected ") {
        // What a key expects comes from the shape (`a duration`, `one of `na`, `eu``), after
        // whatever value the message quoted.
        Some(at) => {
            let expected = &message[at + ", expected ".len()..];
            expected_and_found(&key, expected, values)
        }
        None => format!(
            "is not one of the values this key takes (found {}); see config/cma-auth-proxy.example.toml",
            found(&key, values)
        ),
    };
    (key, problem)
}

fn expected_and_found(key: &str, expected: &str, values: &config::Value) -> String {
    let expected_text = expected_text(expected);
    let mut problem = format!("expected {expected_text}, found {}", found(key, values));
    // `30` meant as a duration: the fix is one letter, and a duration is no secret.
    if expected_text.starts_with("a duration")
        && !is_secret_key(key)
        && let Some(number) = kind_at(key, values).and_then(bare_number)
    {
        problem.push_str(&format!("; write \"{number}s\" for {number} seconds"));
    }
    problem
}

fn bare_number(value: &config::ValueKind) -> Option<String> {
    match value {
        config::ValueKind::I64(n) => Some(n.to_string()),
        config::ValueKind::U64(n) => Some(n.to_string()),
        config::ValueKind::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            Some(s.clone())
        }
        _ => None,
    }
}

/// `config`'s and serde's names of what a key wants, in the words of a TOML file, with an example.
fn expected_text(expected: &str) -> String {
    let plain = |text: &str| text.to_owned();
    match expected {
        t if t.starts_with("struct ") || t == "a map" => plain("a table"),
        "a sequence" | "an array" => plain("an array such as [\"a\", \"b\"]"),
        "a boolean" | "bool" => plain("true or false"),
        "a string" => plain("a string"),
        "a floating point" | "f32" | "f64" => plain("a number such as 10 or 2.5"),
        // bytesize's names for a size.
        "parsable string" | "an integer or string" => {
            plain("a size such as \"64KiB\" or \"1MiB\" (or a whole number of bytes)")
        }
        "u8" | "u16" | "u32" | "u64" | "usize" => plain("a whole number (0 or more)"),
        t if t.starts_with("an unsigned") => plain("a whole number (0 or more)"),
        t if t.contains("integer") || t.starts_with('i') && t[1..].parse::<u8>().is_ok() => {
            plain("an integer")
        }
        "path string" => plain("a path (a string)"),
        "a duration" => plain("a duration such as \"30s\", \"5m\" or \"1h\""),
        // serde's list of the values a setting takes: "one of `na`, `eu`".
        t if t.starts_with("one of ") || t.starts_with('`') => t.replace('`', "\""),
        _ => plain("another kind of value"),
    }
}

/// The kind of value the layered configuration holds at `key`, never the value itself.
fn found(key: &str, values: &config::Value) -> &'static str {
    match kind_at(key, values) {
        None => "nothing",
        Some(config::ValueKind::Nil) => "nothing",
        Some(config::ValueKind::Boolean(_)) => "a boolean",
        Some(
            config::ValueKind::I64(_)
            | config::ValueKind::I128(_)
            | config::ValueKind::U64(_)
            | config::ValueKind::U128(_),
        ) => "an integer",
        Some(config::ValueKind::Float(_)) => "a float",
        Some(config::ValueKind::String(_)) => "a string",
        Some(config::ValueKind::Table(_)) => "a table",
        Some(config::ValueKind::Array(_)) => "an array",
    }
}

fn has_key(table: &config::ValueKind, name: &str) -> bool {
    matches!(table, config::ValueKind::Table(entries) if entries.contains_key(name))
}

/// The value at a key as `config` names it in errors: `profiles.default.stacks[0]`.
pub(super) fn kind_at<'v>(key: &str, values: &'v config::Value) -> Option<&'v config::ValueKind> {
    let mut value = values;
    if key.is_empty() {
        return Some(&value.kind);
    }
    for segment in key.split('.') {
        let (name, indexes) = segment.split_once('[').unwrap_or((segment, ""));
        if !name.is_empty() {
            let config::ValueKind::Table(entries) = &value.kind else {
                return None;
            };
            value = entries.get(name)?;
        }
        for index in indexes.split('[').filter(|i| !i.is_empty()) {
            let index: usize = index.trim_end_matches(']').parse().ok()?;
            let config::ValueKind::Array(items) = &value.kind else {
                return None;
            };
            value = items.get(index)?;
        }
    }
    Some(&value.kind)
}

pub(super) fn is_secret_key(key: &str) -> bool {
    // `profiles.x.password[0]`: an element of an array written where the secret belongs.
    let key = key.split('[').next().unwrap_or(key);
    match key.split('.').collect::<Vec<_>>().as_slice() {
        ["profiles", _, name, ..] => PROFILE_SECRETS.contains(name),
        ["token_store", "url", ..] => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "Sekr1t-4471";

    fn values(pairs: &[(&str, config::Value)]) -> config::Value {
        let mut profile: config::Map<String, config::Value> = config::Map::new();
        for (k, v) in pairs {
            profile.insert(k.to_string(), v.clone());
        }
        let mut profiles: config::Map<String, config::Value> = config::Map::new();
        profiles.insert("default".to_owned(), profile.into());
        let mut root: config::Map<String, config::Value> = config::Map::new();
        root.insert("profiles".to_owned(), profiles.into());
        root.into()
    }

    fn shown(error: config::ConfigError, values: &config::Value) -> String {
        let rendered = render(error, values, &Origins::default());
        let text = format!("{rendered} {rendered:?}");
        assert!(!text.contains("Sekr1t") && !text.contains("4471"), "{text}");
        text
    }

    /// Every variant of `config::ConfigError`, each holding the secret in every text it carries:
    /// none of it is shown.
    #[test]
    fn no_variant_of_a_config_error_shows_its_text() {
        let secret_value = config::Value::new(None, SECRET);
        let values = values(&[("password", secret_value.clone())]);
        let boxed = || -> Box<dyn std::error::Error + Send + Sync> { SECRET.into() };
        // A real `Type` error, made by `config` itself from the secret.
        let type_error = config::Value::new(None, config::ValueKind::String(SECRET.into()))
            .try_deserialize::<u32>()
            .unwrap_err();
        assert!(type_error.to_string().contains(SECRET), "{type_error}");
        let at = |error: config::ConfigError| config::ConfigError::At {
            error: Box::new(error),
            origin: Some(SECRET.into()),
            key: Some("profiles.default.password".into()),
        };
        for error in [
            config::ConfigError::Frozen,
            config::ConfigError::NotFound("profiles.default.password".into()),
            config::ConfigError::PathParse { cause: boxed() },
            config::ConfigError::FileParse {
                uri: Some(SECRET.into()),
                cause: boxed(),
            },
            type_error,
            at(config::ConfigError::Message(format!(
                "invalid type: string \"{SECRET}\", expected u32"
            ))),
            at(config::ConfigError::Message(SECRET.into())),
            at(config::ConfigError::Foreign(boxed())),
            config::ConfigError::Message(format!("invalid value: string \"{SECRET}\"")),
        ] {
            shown(error, &values);
        }
    }

    #[test]
    fn what_was_expected_comes_with_an_example_and_the_kind_found() {
        let values = values(&[
            ("grace", config::Value::new(None, 30)),
            ("rate", config::Value::new(None, "lots")),
        ]);
        let at = |key: &str, message: &str| config::ConfigError::At {
            error: Box::new(config::ConfigError::Message(message.into())),
            origin: None,
            key: Some(key.into()),
        };
        let text = shown(
            at(
                "profiles.default.grace",
                "invalid value: string \"30\", expected a duration",
            ),
            &values,
        );
        assert!(
            text.contains("expected a duration such as \"30s\", \"5m\" or \"1h\", found an integer; write \"30s\" for 30 seconds"),
            "{text}"
        );
        let text = shown(
            at(
                "profiles.default.rate",
                "invalid value: string \"lots\", expected parsable string",
            ),
            &values,
        );
        assert!(
            text.contains("expected a size such as \"64KiB\" or \"1MiB\" (or a whole number of bytes), found a string"),
            "{text}"
        );
        let text = shown(
            at(
                "profiles.default",
                "unknown field `rate`, expected one of `email`, `password`",
            ),
            &values,
        );
        assert!(
            text.contains(
                "`profiles.default.rate`: unknown key; the keys here are `email`, `password`"
            ),
            "{text}"
        );
    }
}
