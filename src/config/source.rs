//! The configuration as written, as two `config::Source`s that the `config` crate layers (the
//! environment over the file): the TOML file, parsed with positions, and the `CMA_AUTH_PROXY_*`
//! environment. Every value carries where it was written (a line and column of the file, or an
//! environment variable) as its `config` origin, and [`Origins`] keeps the same for every key,
//! tables included (`config` keeps no origin for a table), so that errors and warnings can send the
//! operator there.
//!
//! Nothing built here quotes configuration text. The TOML parser's own error display shows the
//! offending line, which may be `password = "…` with the secret in it; a syntax error is therefore
//! rebuilt from its position and the parser's description of the problem (fixed phrases such as
//! "missing closing quote"), never from the source. `Debug` of a source shows no value.
use std::collections::{BTreeMap, BTreeSet};
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

/// Where each key of the configuration was written, by its path as `config` names it in errors
/// (`profiles.default.stacks[0]`). The environment's entries replace the file's, as its values do.
#[derive(Debug, Default)]
pub(super) struct Origins {
    keys: BTreeMap<String, Origin>,
    /// The keys that are tables in the file: a variable that sets a key inside one leaves it a
    /// table of the file, while one that sets a key inside a file's scalar makes it a table of its
    /// own.
    tables: BTreeSet<String>,
}

impl Origins {
    pub fn get(&self, key: &str) -> Option<&Origin> {
        self.keys.get(key)
    }

    fn set(&mut self, key: String, origin: Origin) {
        self.keys.insert(key, origin);
    }
}

/// The configuration file, converted with the position of every value: a `config::Source`.
#[derive(Clone)]
pub(super) struct TomlFile(config::Map<String, config::Value>);

impl fmt::Debug for TomlFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TomlFile { .. }")
    }
}

impl config::Source for TomlFile {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

impl TomlFile {
    /// Parses `text`, recording in `origins` where each key was written.
    pub fn parse(
        text: &str,
        file: Option<&Path>,
        origins: &mut Origins,
    ) -> Result<TomlFile, ConfigError> {
        let positions = Positions::new(text, file);
        let document = DeTable::parse(text).map_err(|e| ConfigError::Syntax {
            at: positions.origin(e.span().map_or(text.len(), |s| s.start)),
            problem: e.message().to_owned(),
        })?;
        let mut table = config::Map::new();
        for (key, value) in document.get_ref() {
            let key = key.get_ref().to_string();
            let value = convert(value, &key, &positions, origins)?;
            table.insert(key, value);
        }
        Ok(TomlFile(table))
    }
}

fn convert(
    value: &toml::Spanned<DeValue<'_>>,
    key: &str,
    positions: &Positions,
    origins: &mut Origins,
) -> Result<config::Value, ConfigError> {
    let origin = positions.origin(value.span().start);
    let kind = match value.get_ref() {
        DeValue::String(s) => config::ValueKind::String(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(i) => config::ValueKind::I64(i),
            Err(_) => return Err(syntax(origin, "integer out of range")),
        },
        DeValue::Float(f) => match f.as_str().parse() {
            Ok(f) => config::ValueKind::Float(f),
            Err(_) => return Err(syntax(origin, "invalid float")),
        },
        DeValue::Boolean(b) => config::ValueKind::Boolean(*b),
        // No key takes one, and `config` has no such kind: say so here, where the position is.
        DeValue::Datetime(_) => {
            return Err(ConfigError::Invalid {
                key: key.to_owned(),
                problem: "is a date-time, which no key takes".into(),
                at: Some(origin),
            });
        }
        DeValue::Array(items) => config::ValueKind::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| convert(item, &format!("{key}[{i}]"), positions, origins))
                .collect::<Result<_, _>>()?,
        ),
        DeValue::Table(table) => config::ValueKind::Table(
            table
                .iter()
                .map(|(k, v)| {
                    let name = k.get_ref().to_string();
                    let child = convert(v, &format!("{key}.{name}"), positions, origins)?;
                    Ok((name, child))
                })
                .collect::<Result<_, ConfigError>>()?,
        ),
    };
    if matches!(kind, config::ValueKind::Table(_)) {
        origins.tables.insert(key.to_owned());
    }
    let value = config::Value::new(Some(&origin.to_string()), kind);
    origins.set(key.to_owned(), origin);
    Ok(value)
}

fn syntax(at: Origin, problem: &str) -> ConfigError {
    ConfigError::Syntax {
        at,
        problem: problem.into(),
    }
}

/// The `CMA_AUTH_PROXY_*` variables as a `config::Source`: `CMA_AUTH_PROXY_PROFILES__DEFAULT__EMAIL=x`
/// sets `profiles.default.email = "x"`. Values are strings; `config` reads one as a number or a
/// boolean where a key wants one.
#[derive(Clone)]
pub(super) struct Environment(config::Map<String, config::Value>);

impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Environment { .. }")
    }
}

impl config::Source for Environment {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

impl Environment {
    /// `env` holds only the variables that start with [`ENV_PREFIX`]`_`.
    pub fn read(
        env: &BTreeMap<String, String>,
        origins: &mut Origins,
    ) -> Result<Environment, ConfigError> {
        let mut root: config::Map<String, config::Value> = config::Map::new();
        for (var, value) in env {
            let origin = Origin::Env { var: var.clone() };
            let path = key_path(var)?;
            let (leaf, parents) = path.split_last().expect("a key path has a segment");
            let mut table = &mut root;
            let mut key = String::new();
            for segment in parents {
                key = child_key(&key, segment);
                // A table the file already has keeps its position; one the environment makes
                // points at the variable.
                if !origins.tables.contains(&key) {
                    origins.set(key.clone(), origin.clone());
                }
                let entry: &mut config::Value = table
                    .entry(segment.clone())
                    .or_insert_with(|| config::Map::<String, config::Value>::new().into());
                if !matches!(entry.kind, config::ValueKind::Table(_)) {
                    *entry = config::Map::<String, config::Value>::new().into();
                }
                let config::ValueKind::Table(inner) = &mut entry.kind else {
                    unreachable!("made a table just above")
                };
                table = inner;
            }
            let text = origin.to_string();
            table.insert(
                leaf.clone(),
                config::Value::new(Some(&text), value.as_str()),
            );
            origins.set(child_key(&key, leaf), origin);
        }
        Ok(Environment(root))
    }
}

/// The key path a variable names, lower-cased: `CMA_AUTH_PROXY_SERVER__MAX_BODY` → `server`,
/// `max_body`.
fn key_path(var: &str) -> Result<Vec<String>, ConfigError> {
    let path: Vec<String> = var[ENV_PREFIX.len() + 1..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    let is_key = |segment: &String| {
        !segment.is_empty()
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if path.iter().all(is_key) {
        return Ok(path);
    }
    Err(ConfigError::Invalid {
        key: var.into(),
        problem: format!(
            "names no configuration key: use {ENV_PREFIX}_ and the key path joined by `__`, \
             e.g. {ENV_PREFIX}_UPSTREAM__REGION"
        ),
        at: None,
    })
}

pub(super) fn child_key(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
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
