//! The configuration as written: the TOML file with the `CMA_AUTH_PROXY_*` environment laid over
//! it, as one tree in which every value remembers where it was written (a line of the file, or an
//! environment variable), so that errors and warnings can send the operator there.
//!
//! Nothing built here quotes configuration text. The TOML parser's own error display shows the
//! offending line, which may be `password = "…` with the secret in it; a syntax error is therefore
//! rebuilt from its position and the parser's description of the problem (fixed phrases such as
//! "missing closing quote"), never from the source.
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use toml::de::{DeTable, DeValue};

use super::{ConfigError, ENV_PREFIX};

/// Where a value was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// 1-based line and column in the configuration file; `file` is `None` for text that was not
    /// read from a file.
    File {
        file: Option<Arc<Path>>,
        line: usize,
        column: usize,
    },
    /// An environment variable, by name.
    Env { var: String },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { file, line, column } => {
                write!(f, "line {line}, column {column}")?;
                match file {
                    Some(file) => write!(f, " of {}", file.display()),
                    None => Ok(()),
                }
            }
            Origin::Env { var } => write!(f, "environment variable {var}"),
        }
    }
}

/// A value of the configuration and where it was written. No `Debug`: it holds secrets as written.
pub(super) struct Node {
    pub value: Value,
    pub origin: Origin,
}

pub(super) enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// TOML's date-times, kept as text; no key takes one, so they only ever meet a type error.
    Datetime,
    Array(Vec<Node>),
    Table(BTreeMap<String, Node>),
}

impl Value {
    /// What kind of value this is, for messages that must not show the value itself.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime => "a date-time",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }
}

impl Node {
    /// The node at a dotted key path (`profiles.default.password`), if the configuration has one.
    pub fn get(&self, key: &str) -> Option<&Node> {
        key.split('.')
            .try_fold(self, |node, segment| match &node.value {
                Value::Table(entries) => entries.get(segment),
                _ => None,
            })
    }
}

/// Parses the file text and lays the environment over it. `env` holds only the variables that
/// start with [`ENV_PREFIX`]`_`.
pub(super) fn load(
    text: &str,
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<Node, ConfigError> {
    let positions = Positions::new(text, file);
    let document = DeTable::parse(text).map_err(|e| ConfigError::Syntax {
        at: positions.origin(e.span().map_or(text.len(), |s| s.start)),
        problem: e.message().to_owned(),
    })?;
    let mut root = Node {
        value: Value::Table(BTreeMap::new()),
        origin: positions.origin(0),
    };
    if let Value::Table(entries) = &mut root.value {
        for (key, value) in document.get_ref() {
            let node = convert(value, &positions)?;
            entries.insert(key.get_ref().to_string(), node);
        }
    }
    for (var, value) in env {
        apply_env(&mut root, var, value)?;
    }
    Ok(root)
}

fn convert(value: &toml::Spanned<DeValue<'_>>, positions: &Positions) -> Result<Node, ConfigError> {
    let origin = positions.origin(value.span().start);
    let value = match value.get_ref() {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(i) => Value::Integer(i),
            Err(_) => {
                return Err(ConfigError::Syntax {
                    at: origin,
                    problem: "integer out of range".into(),
                });
            }
        },
        DeValue::Float(f) => match f.as_str().parse() {
            Ok(f) => Value::Float(f),
            Err(_) => {
                return Err(ConfigError::Syntax {
                    at: origin,
                    problem: "invalid float".into(),
                });
            }
        },
        DeValue::Boolean(b) => Value::Boolean(*b),
        DeValue::Datetime(_) => Value::Datetime,
        DeValue::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| convert(item, positions))
                .collect::<Result<_, _>>()?,
        ),
        DeValue::Table(table) => Value::Table(
            table
                .iter()
                .map(|(k, v)| Ok((k.get_ref().to_string(), convert(v, positions)?)))
                .collect::<Result<_, ConfigError>>()?,
        ),
    };
    Ok(Node { value, origin })
}

/// `CMA_AUTH_PROXY_PROFILES__DEFAULT__EMAIL=x` sets `profiles.default.email = "x"`. Environment
/// values are strings; where a key wants a number or a boolean, the deserializer reads the string
/// as one.
fn apply_env(root: &mut Node, var: &str, value: &str) -> Result<(), ConfigError> {
    let origin = Origin::Env { var: var.into() };
    let path: Vec<String> = var[ENV_PREFIX.len() + 1..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(ConfigError::Invalid {
            key: var.into(),
            problem: format!(
                "names no configuration key: use {ENV_PREFIX}_ and the key path joined by `__`, \
                 e.g. {ENV_PREFIX}_UPSTREAM__REGION"
            ),
            at: None,
        });
    }
    let (leaf, parents) = path.split_last().expect("split yields a segment");
    let mut node = root;
    for (depth, segment) in parents.iter().enumerate() {
        node = table_for_env(node, &path[..depth], &origin)?
            .entry(segment.clone())
            .or_insert_with(|| Node {
                value: Value::Table(BTreeMap::new()),
                origin: origin.clone(),
            });
    }
    let value = Node {
        value: Value::String(value.into()),
        origin: origin.clone(),
    };
    table_for_env(node, parents, &origin)?.insert(leaf.clone(), value);
    Ok(())
}

/// The table an environment variable sets a key in; an error when the file made it something else.
fn table_for_env<'n>(
    node: &'n mut Node,
    key: &[String],
    env: &Origin,
) -> Result<&'n mut BTreeMap<String, Node>, ConfigError> {
    match &mut node.value {
        Value::Table(entries) => Ok(entries),
        other => Err(ConfigError::Invalid {
            key: key.join("."),
            problem: format!(
                "is {} ({}), so no environment variable can set a key inside it",
                other.kind(),
                node.origin
            ),
            at: Some(env.clone()),
        }),
    }
}

/// Turns byte offsets into line and column.
struct Positions<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
    file: Option<Arc<Path>>,
}

impl<'a> Positions<'a> {
    fn new(text: &'a str, file: Option<&Path>) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Positions {
            text,
            line_starts,
            file: file.map(Arc::from),
        }
    }

    fn origin(&self, offset: usize) -> Origin {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|start| *start <= offset);
        let start = self.line_starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(1, |before| before.chars().count() + 1);
        Origin::File {
            file: self.file.clone(),
            line,
            column,
        }
    }
}
