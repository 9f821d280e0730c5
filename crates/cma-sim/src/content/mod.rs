//! Stack content of the simulated CMA: the stack itself, content types, entries and assets.
//!
//! The session layer (`session.rs`) authenticates the request first; this module only sees requests
//! whose `authtoken` was valid, and answers them from an in-memory store. It owns `GET /v3/stacks`,
//! `GET /v3/stacks/settings`, `GET /v3/locales` (the master locale only: what the CLI's export
//! reads) and everything under `/v3/content_types` and `/v3/assets`, with the paths, bodies,
//! response shapes and error bodies of the real CMA as far as the official SDKs and the CLI's
//! export rely on them (checked against `@contentstack/management` 1.30.2, `@contentstack/cli`
//! 1.60.1 and Contentstack's API reference). It must not authenticate, rate limit or log (the
//! session layer does), and it keeps no asset bytes, only their metadata.
//!
//! Simplifications, on purpose: one locale per entry, no versions history, no publishing, no `query`
//! filters (`limit`, `skip`, `include_count` and `count` are honoured), and `PUT` merges the fields
//! it is given into the stored object (the SDKs always send the whole object anyway).
//!
//! Routing and content types and entries are here; asset uploads in `assets`, the refusals and
//! their wording in `error`, query parameters and paging in `query`.
mod assets;
mod error;
mod query;
#[cfg(test)]
mod tests;

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use error::{CmaError, Invalid, Write};
use query::{Query, list};

/// One authenticated request, already read in full.
pub struct SimRequest<'a> {
    pub method: &'a Method,
    /// The path as sent, e.g. `/v3/content_types/blog/entries`.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    /// The account whose authtoken authenticated the request.
    pub user_email: &'a str,
}

/// A JSON answer.
pub struct SimResponse {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

/// Content of every simulated stack, keyed by the stack's `api_key`.
pub struct ContentStore {
    stacks: Vec<Stack>,
    uids: UidSource,
    clock: fn() -> SystemTime,
}

impl Default for ContentStore {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl ContentStore {
    /// A store with the given stacks (`api_key`, name) and nothing in them.
    pub fn new(stacks: &[(&str, &str)]) -> Self {
        let stacks = stacks
            .iter()
            .map(|(api_key, name)| Stack {
                api_key: api_key.to_string(),
                name: name.to_string(),
                content_types: Vec::new(),
                assets: Vec::new(),
            })
            .collect();
        Self {
            stacks,
            uids: UidSource::default(),
            clock: SystemTime::now,
        }
    }

    /// Answers a content route, or `None` when the path is not one this module serves (also when the
    /// path is known but the method is not, so the caller answers both alike).
    pub fn handle(&mut self, req: SimRequest<'_>) -> Option<SimResponse> {
        let op = Op::parse(req.method, req.path)?;
        let mut ctx = Ctx {
            now: humantime::format_rfc3339_millis((self.clock)()).to_string(),
            user: user_uid(req.user_email),
            query: Query::parse(req.query),
            uids: &mut self.uids,
        };
        let api_key = header_str(req.headers, "api_key");
        let result = match self.stacks.iter_mut().find(|s| s.api_key == api_key) {
            Some(stack) => stack.apply(op, &req, &mut ctx),
            None => Err(CmaError::StackNotFound),
        };
        Some(result.unwrap_or_else(CmaError::into_response))
    }
}

/// The uid the simulator gives the account with this email, in `created_by`/`updated_by`: `blt` and
/// the first 16 hex digits of the email's SHA-256, the uid `GET /v3/user` reports for it.
pub fn user_uid(email: &str) -> String {
    blt_of(email)
}

/// A CMA operation this module serves, named after the SDK call that makes it.
#[derive(Debug, PartialEq, Eq)]
enum Op<'a> {
    FetchStack,
    /// `stack.settings()`; the CLI's export writes it out as it comes.
    FetchStackSettings,
    /// `stack.locale().query()`: the export reads the master locale from it.
    ListLocales,
    ListContentTypes,
    CreateContentType,
    FetchContentType(&'a str),
    UpdateContentType(&'a str),
    DeleteContentType(&'a str),
    ListEntries(&'a str),
    CreateEntry(&'a str),
    FetchEntry(&'a str, &'a str),
    UpdateEntry(&'a str, &'a str),
    DeleteEntry(&'a str, &'a str),
    ListAssets,
    CreateAsset,
    FetchAsset(&'a str),
    UpdateAsset(&'a str),
    DeleteAsset(&'a str),
}

impl<'a> Op<'a> {
    fn parse(method: &Method, path: &'a str) -> Option<Self> {
        let rest = path.strip_prefix("/v3/")?;
        let segments: Vec<&'a str> = rest.strip_suffix('/').unwrap_or(rest).split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return None;
        }
        let op = match (method.as_str(), segments.as_slice()) {
            ("GET", ["stacks"]) => Op::FetchStack,
            ("GET", ["stacks", "settings"]) => Op::FetchStackSettings,
            ("GET", ["locales"]) => Op::ListLocales,
            ("GET", ["content_types"]) => Op::ListContentTypes,
            ("POST", ["content_types"]) => Op::CreateContentType,
            ("GET", ["content_types", ct]) => Op::FetchContentType(ct),
            ("PUT", ["content_types", ct]) => Op::UpdateContentType(ct),
            ("DELETE", ["content_types", ct]) => Op::DeleteContentType(ct),
            ("GET", ["content_types", ct, "entries"]) => Op::ListEntries(ct),
            ("POST", ["content_types", ct, "entries"]) => Op::CreateEntry(ct),
            ("GET", ["content_types", ct, "entries", uid]) => Op::FetchEntry(ct, uid),
            ("PUT", ["content_types", ct, "entries", uid]) => Op::UpdateEntry(ct, uid),
            ("DELETE", ["content_types", ct, "entries", uid]) => Op::DeleteEntry(ct, uid),
            ("GET", ["assets"]) => Op::ListAssets,
            ("POST", ["assets"]) => Op::CreateAsset,
            ("GET", ["assets", uid]) => Op::FetchAsset(uid),
            ("PUT", ["assets", uid]) => Op::UpdateAsset(uid),
            ("DELETE", ["assets", uid]) => Op::DeleteAsset(uid),
            _ => return None,
        };
        Some(op)
    }
}

/// What every operation of one request shares.
struct Ctx<'s> {
    /// RFC 3339 with milliseconds, as the CMA writes `created_at`.
    now: String,
    user: String,
    query: Query,
    uids: &'s mut UidSource,
}

/// A JSON object as stored and returned: system fields and user fields side by side, as in the CMA.
type Object = Map<String, Value>;

struct Stack {
    api_key: String,
    name: String,
    content_types: Vec<ContentType>,
    assets: Vec<Object>,
}

struct ContentType {
    doc: Object,
    entries: Vec<Object>,
}

/// Keys the CMA sets itself; a client sending them (the SDKs send whole fetched objects back on
/// update) does not change them.
const SYSTEM_KEYS: &[&str] = &[
    "uid",
    "_version",
    "created_at",
    "updated_at",
    "created_by",
    "updated_by",
    "deleted_at",
    "ACL",
    "_in_progress",
    "locale",
    "publish_details",
    "content_type_uid",
    "content_type",
    "schema",
    "stackHeaders",
    "urlPath",
];

impl Stack {
    fn apply(
        &mut self,
        op: Op<'_>,
        req: &SimRequest<'_>,
        ctx: &mut Ctx<'_>,
    ) -> Result<SimResponse, CmaError> {
        match op {
            Op::FetchStack => Ok(ok(json!({ "stack": self.describe() }))),
            Op::FetchStackSettings => Ok(ok(json!({
                "stack_settings": {
                    "stack_variables": {},
                    "discrete_variables": {},
                    "live_preview": {},
                    "language_fallback": false,
                    "rte": {},
                }
            }))),
            Op::ListLocales => {
                let master = self.master_locale();
                Ok(ok(list("locales", std::iter::once(&master), &ctx.query)))
            }
            Op::ListContentTypes => {
                let docs = self.content_types.iter().map(|ct| &ct.doc);
                Ok(ok(list("content_types", docs, &ctx.query)))
            }
            Op::CreateContentType => self.create_content_type(&req.body, ctx),
            Op::FetchContentType(uid) => {
                Ok(ok(json!({ "content_type": self.content_type(uid)?.doc })))
            }
            Op::UpdateContentType(uid) => self.update_content_type(uid, &req.body, ctx),
            Op::DeleteContentType(uid) => {
                self.content_type(uid)?;
                self.content_types.retain(|ct| uid_of(&ct.doc) != uid);
                Ok(notice("Content Type deleted successfully."))
            }
            Op::ListEntries(ct) => {
                let ct = self.content_type(ct)?;
                let mut body = list("entries", ct.entries.iter(), &ctx.query);
                if ctx.query.flag("include_content_type") {
                    body["content_type"] = Value::Object(ct.doc.clone());
                }
                Ok(ok(body))
            }
            Op::CreateEntry(ct) => self.content_type_mut(ct)?.create_entry(&req.body, ctx),
            Op::FetchEntry(ct, uid) => {
                let ct = self.content_type(ct)?;
                let mut body = json!({ "entry": ct.entry(uid)? });
                if ctx.query.flag("include_content_type") {
                    body["content_type"] = Value::Object(ct.doc.clone());
                }
                Ok(ok(body))
            }
            Op::UpdateEntry(ct, uid) => {
                self.content_type_mut(ct)?.update_entry(uid, &req.body, ctx)
            }
            Op::DeleteEntry(ct, uid) => {
                let ct = self.content_type_mut(ct)?;
                ct.entry(uid)?;
                ct.entries.retain(|e| uid_of(e) != uid);
                Ok(notice("Entry deleted successfully."))
            }
            Op::ListAssets => Ok(ok(list("assets", self.assets.iter(), &ctx.query))),
            Op::CreateAsset => self.create_asset(req, ctx),
            Op::FetchAsset(uid) => Ok(ok(json!({ "asset": self.asset(uid)? }))),
            Op::UpdateAsset(uid) => self.update_asset(uid, req, ctx),
            Op::DeleteAsset(uid) => {
                self.asset(uid)?;
                self.assets.retain(|a| uid_of(a) != uid);
                Ok(notice("Asset deleted successfully."))
            }
        }
    }

    fn describe(&self) -> Value {
        json!({
            "uid": blt_of(&self.api_key),
            "api_key": self.api_key,
            "name": self.name,
            "master_locale": MASTER_LOCALE,
        })
    }

    /// The stack's one locale, its master (no fallback): the one `describe` names.
    fn master_locale(&self) -> Object {
        let mut locale = Object::new();
        locale.insert("code".into(), MASTER_LOCALE.into());
        locale.insert("name".into(), "English - United States".into());
        locale.insert(
            "uid".into(),
            blt_of(&format!("{}/{MASTER_LOCALE}", self.api_key)).into(),
        );
        locale.insert("fallback_locale".into(), Value::Null);
        locale
    }

    fn content_type(&self, uid: &str) -> Result<&ContentType, CmaError> {
        self.content_types
            .iter()
            .find(|ct| uid_of(&ct.doc) == uid)
            .ok_or_else(|| CmaError::ContentTypeNotFound(uid.to_owned()))
    }

    fn content_type_mut(&mut self, uid: &str) -> Result<&mut ContentType, CmaError> {
        self.content_types
            .iter_mut()
            .find(|ct| uid_of(&ct.doc) == uid)
            .ok_or_else(|| CmaError::ContentTypeNotFound(uid.to_owned()))
    }

    fn create_content_type(
        &mut self,
        body: &[u8],
        ctx: &mut Ctx<'_>,
    ) -> Result<SimResponse, CmaError> {
        let reject = |field: &str, reason| {
            CmaError::ContentTypeRejected(Write::Create, Invalid::new(field, reason))
        };
        let fields = wrapped_object(body, "content_type")
            .ok_or_else(|| reject("content_type", "is required."))?;
        let uid = match fields.get("uid") {
            Some(Value::String(uid)) if is_valid_uid(uid) => uid.clone(),
            Some(_) => return Err(reject("uid", "is not valid.")),
            None => return Err(reject("uid", "is required.")),
        };
        if self.content_type(&uid).is_ok() {
            return Err(reject("uid", "is not unique."));
        }
        let mut doc = Object::new();
        doc.insert("title".into(), Value::Null);
        doc.insert("description".into(), "".into());
        doc.insert(
            "schema".into(),
            fields.get("schema").cloned().unwrap_or_else(|| json!([])),
        );
        doc.insert("options".into(), json!({}));
        merge(&mut doc, fields, |key| !SYSTEM_KEYS.contains(&key));
        self.check_title(&doc, &uid)
            .map_err(|i| CmaError::ContentTypeRejected(Write::Create, i))?;
        stamp_new(&mut doc, uid, ctx);
        doc.insert("inbuilt_class".into(), false.into());
        doc.insert("maintain_revisions".into(), true.into());
        doc.insert("last_activity".into(), json!({}));
        let response =
            created(json!({ "notice": "Content Type created successfully.", "content_type": doc }));
        self.content_types.push(ContentType {
            doc,
            entries: Vec::new(),
        });
        Ok(response)
    }

    fn update_content_type(
        &mut self,
        uid: &str,
        body: &[u8],
        ctx: &mut Ctx<'_>,
    ) -> Result<SimResponse, CmaError> {
        let mut doc = self.content_type(uid)?.doc.clone();
        let fields = wrapped_object(body, "content_type").ok_or_else(|| {
            CmaError::ContentTypeRejected(
                Write::Update,
                Invalid::new("content_type", "is required."),
            )
        })?;
        // `schema` is the content type's own field here, not a system one.
        let schema = fields.get("schema").cloned();
        merge(&mut doc, fields, |key| !SYSTEM_KEYS.contains(&key));
        if let Some(schema) = schema {
            doc.insert("schema".into(), schema);
        }
        self.check_title(&doc, uid)
            .map_err(|i| CmaError::ContentTypeRejected(Write::Update, i))?;
        stamp_update(&mut doc, ctx);
        let ct = self.content_type_mut(uid)?;
        ct.doc = doc.clone();
        Ok(ok(
            json!({ "notice": "Content Type updated successfully.", "content_type": doc }),
        ))
    }

    /// Content type titles are unique in a stack, like their uids.
    fn check_title(&self, doc: &Object, own_uid: &str) -> Result<(), Invalid> {
        let title = doc
            .get("title")
            .filter(|t| !is_blank(t))
            .ok_or(Invalid::new("title", "is required."))?;
        let taken = self
            .content_types
            .iter()
            .any(|ct| uid_of(&ct.doc) != own_uid && ct.doc.get("title") == Some(title));
        if taken {
            Err(Invalid::new("title", "is not unique."))
        } else {
            Ok(())
        }
    }
}

impl ContentType {
    fn entry(&self, uid: &str) -> Result<&Object, CmaError> {
        self.entries
            .iter()
            .find(|e| uid_of(e) == uid)
            .ok_or(CmaError::EntryNotFound)
    }

    fn create_entry(&mut self, body: &[u8], ctx: &mut Ctx<'_>) -> Result<SimResponse, CmaError> {
        let reject = |field: &str, reason| {
            CmaError::EntryRejected(Write::Create, Invalid::new(field, reason))
        };
        let fields =
            wrapped_object(body, "entry").ok_or_else(|| reject("entry", "is required."))?;
        let mut doc = Object::new();
        doc.insert("tags".into(), json!([]));
        merge(&mut doc, fields, |key| !SYSTEM_KEYS.contains(&key));
        self.check_fields(&doc, None)
            .map_err(|i| CmaError::EntryRejected(Write::Create, i))?;
        let locale = ctx.query.get("locale").unwrap_or(MASTER_LOCALE).to_owned();
        stamp_new(&mut doc, ctx.uids.next(), ctx);
        doc.insert("locale".into(), locale.into());
        doc.insert("ACL".into(), json!({}));
        doc.insert("_in_progress".into(), false.into());
        let response = created(json!({ "notice": "Entry created successfully.", "entry": doc }));
        self.entries.push(doc);
        Ok(response)
    }

    fn update_entry(
        &mut self,
        uid: &str,
        body: &[u8],
        ctx: &mut Ctx<'_>,
    ) -> Result<SimResponse, CmaError> {
        let mut doc = self.entry(uid)?.clone();
        let fields = wrapped_object(body, "entry").ok_or_else(|| {
            CmaError::EntryRejected(Write::Update, Invalid::new("entry", "is required."))
        })?;
        merge(&mut doc, fields, |key| !SYSTEM_KEYS.contains(&key));
        self.check_fields(&doc, Some(uid))
            .map_err(|i| CmaError::EntryRejected(Write::Update, i))?;
        stamp_update(&mut doc, ctx);
        let slot = self
            .entries
            .iter_mut()
            .find(|e| uid_of(e) == uid)
            .ok_or(CmaError::EntryNotFound)?;
        *slot = doc.clone();
        Ok(ok(
            json!({ "notice": "Entry updated successfully.", "entry": doc }),
        ))
    }

    /// The schema's top-level `mandatory` and `unique` rules (`title` is both by default in the CMA).
    fn check_fields(&self, doc: &Object, own_uid: Option<&str>) -> Result<(), Invalid> {
        let fields = self
            .doc
            .get("schema")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for field in fields {
            let Some(name) = field.get("uid").and_then(Value::as_str) else {
                continue;
            };
            let rule = |key| field.get(key).and_then(Value::as_bool).unwrap_or(false);
            let value = doc.get(name).filter(|v| !is_blank(v));
            match value {
                None if rule("mandatory") => {
                    return Err(Invalid::new(name, "is a required field."));
                }
                Some(value) if rule("unique") => {
                    let taken = self
                        .entries
                        .iter()
                        .any(|e| Some(uid_of(e)) != own_uid && e.get(name) == Some(value));
                    if taken {
                        return Err(Invalid::new(name, "is not unique."));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Every stack's master locale: entries are stored in it unless a request names another.
const MASTER_LOCALE: &str = "en-us";

/// A stable uid for a named thing: `blt` and 16 hex digits of the name's SHA-256.
fn blt_of(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("blt{hex}")
}

/// Unique, realistic-looking uids (`blt` and 16 hex digits), the same sequence in every run.
#[derive(Default)]
struct UidSource {
    issued: u64,
}

impl UidSource {
    fn next(&mut self) -> String {
        self.issued += 1;
        blt(self.issued)
    }
}

/// `blt` and 16 hex digits, scrambled by SplitMix64's finaliser: a bijection, so distinct inputs give
/// distinct uids.
fn blt(seed: u64) -> String {
    let mut x = seed;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    format!("blt{x:016x}")
}

/// Lower-case letters, digits and underscores, starting with a letter or underscore: the CMA refuses
/// other content type uids (upper case ones since April 2022).
fn is_valid_uid(uid: &str) -> bool {
    let mut chars = uid.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn stamp_new(doc: &mut Object, uid: String, ctx: &Ctx<'_>) {
    doc.insert("uid".into(), uid.into());
    doc.insert("created_by".into(), ctx.user.clone().into());
    doc.insert("updated_by".into(), ctx.user.clone().into());
    doc.insert("created_at".into(), ctx.now.clone().into());
    doc.insert("updated_at".into(), ctx.now.clone().into());
    doc.insert("_version".into(), 1.into());
}

fn stamp_update(doc: &mut Object, ctx: &Ctx<'_>) {
    let version = doc.get("_version").and_then(Value::as_u64).unwrap_or(0) + 1;
    doc.insert("_version".into(), version.into());
    doc.insert("updated_by".into(), ctx.user.clone().into());
    doc.insert("updated_at".into(), ctx.now.clone().into());
}

/// Copies the fields `keep` accepts from `source` into `target`, replacing what was there.
fn merge(target: &mut Object, source: Object, keep: impl Fn(&str) -> bool) {
    target.extend(source.into_iter().filter(|(key, _)| keep(key)));
}

/// The object the CMA expects under `key` in a JSON body, e.g. `{"entry": {...}}`.
fn wrapped_object(body: &[u8], key: &str) -> Option<Object> {
    match serde_json::from_slice::<Value>(body).ok()? {
        Value::Object(mut outer) => match outer.remove(key)? {
            Value::Object(inner) => Some(inner),
            _ => None,
        },
        _ => None,
    }
}

fn is_blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn uid_of(doc: &Object) -> &str {
    doc.get("uid").and_then(Value::as_str).unwrap_or_default()
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn ok(body: Value) -> SimResponse {
    SimResponse {
        status: StatusCode::OK,
        body,
    }
}

fn created(body: Value) -> SimResponse {
    SimResponse {
        status: StatusCode::CREATED,
        body,
    }
}

fn notice(text: &str) -> SimResponse {
    ok(json!({ "notice": text }))
}
