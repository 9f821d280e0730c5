//! Query parameters and the CMA's paging of lists (`limit`, `skip`, `include_count`, `count`).
use serde_json::{Value, json};

use super::Object;

/// The query parameters of a request, percent-decoded.
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    pub(super) fn parse(raw: Option<&str>) -> Self {
        let pairs = raw
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (name, value) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(name), percent_decode(value))
            })
            .collect();
        Query(pairs)
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn flag(&self, name: &str) -> bool {
        self.get(name) == Some("true")
    }

    pub(super) fn number(&self, name: &str) -> Option<usize> {
        self.get(name).and_then(|v| v.parse().ok())
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A page of a collection under `key`, as the CMA lists: at most `limit` (default and maximum 100)
/// after `skip`; `include_count=true` adds the total as `count`, `count=true` answers only the total.
pub(super) fn list<'o>(key: &str, items: impl Iterator<Item = &'o Object>, query: &Query) -> Value {
    let items: Vec<&Object> = items.collect();
    let mut body = Object::new();
    if query.flag("count") {
        body.insert(key.to_owned(), items.len().into());
        return Value::Object(body);
    }
    let limit = query.number("limit").unwrap_or(100).min(100);
    let page: Vec<&Object> = items
        .iter()
        .skip(query.number("skip").unwrap_or(0))
        .take(limit)
        .copied()
        .collect();
    body.insert(key.to_owned(), json!(page));
    if query.flag("include_count") {
        body.insert("count".into(), items.len().into());
    }
    Value::Object(body)
}
