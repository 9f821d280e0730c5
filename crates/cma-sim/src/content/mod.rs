//! Stack content of the simulated CMA: the stack itself, content types, entries and assets.
//!
//! The session layer (`session.rs`) authenticates the request first; this module only sees requests
//! whose `authtoken` was valid, and answers them from an in-memory store. It owns `GET /v3/stacks` and
//! everything under `/v3/content_types` and `/v3/assets`, with the paths, bodies, response shapes and
//! error bodies of the real CMA as far as the official SDKs rely on them (checked against
//! `@contentstack/management` 1.30.2 and Contentstack's API reference). It must not authenticate, rate
//! limit or log (the session layer does), and it keeps no asset bytes, only their metadata.
//!
//! Simplifications, on purpose: one locale per entry, no versions history, no publishing, no `query`
//! filters (`limit`, `skip`, `include_count` and `count` are honoured), and `PUT` merges the fields
//! it is given into the stored object (the SDKs always send the whole object anyway).
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, Method, StatusCode, header};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

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
    let digest = Sha256::digest(email.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("blt{hex}")
}

/// A CMA operation this module serves, named after the SDK call that makes it.
#[derive(Debug, PartialEq, Eq)]
enum Op<'a> {
    FetchStack,
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

/// Fields of an asset a JSON update may change; the file's own (name, size, type, url) only change
/// with a new upload.
const ASSET_EDITABLE: &[&str] = &["title", "description", "tags", "parent_uid"];

impl Stack {
    fn apply(
        &mut self,
        op: Op<'_>,
        req: &SimRequest<'_>,
        ctx: &mut Ctx<'_>,
    ) -> Result<SimResponse, CmaError> {
        match op {
            Op::FetchStack => Ok(ok(json!({ "stack": self.describe() }))),
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
        json!({ "api_key": self.api_key, "name": self.name, "master_locale": "en-us" })
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

    fn asset(&self, uid: &str) -> Result<&Object, CmaError> {
        self.assets
            .iter()
            .find(|a| uid_of(a) == uid)
            .ok_or(CmaError::AssetNotFound)
    }

    fn create_asset(
        &mut self,
        req: &SimRequest<'_>,
        ctx: &mut Ctx<'_>,
    ) -> Result<SimResponse, CmaError> {
        let no_file =
            || CmaError::AssetRejected(Write::Create, Invalid::new("upload", "is required."));
        let form = Form::parse(req.headers, req.body.clone()).ok_or_else(no_file)?;
        let upload = form.upload.ok_or_else(no_file)?;
        let mut doc = Object::new();
        stamp_new(&mut doc, ctx.uids.next(), ctx);
        describe_file(
            &mut doc,
            &upload,
            &asset_origin(req.headers),
            &self.api_key,
            ctx,
        );
        doc.insert("title".into(), upload.filename.clone().into());
        doc.insert("tags".into(), json!([]));
        doc.insert("ACL".into(), json!({}));
        doc.insert("is_dir".into(), false.into());
        doc.insert("parent_uid".into(), Value::Null);
        merge(&mut doc, form.fields, |key| ASSET_EDITABLE.contains(&key));
        let response = created(json!({ "notice": "Asset created successfully.", "asset": doc }));
        self.assets.push(doc);
        Ok(response)
    }

    /// JSON updates the asset's details; multipart/form-data (the SDK's `replace`) also swaps its file.
    fn update_asset(
        &mut self,
        uid: &str,
        req: &SimRequest<'_>,
        ctx: &mut Ctx<'_>,
    ) -> Result<SimResponse, CmaError> {
        let mut doc = self.asset(uid)?.clone();
        let invalid =
            || CmaError::AssetRejected(Write::Update, Invalid::new("asset", "is required."));
        let fields =
            if header_str(req.headers, header::CONTENT_TYPE.as_str()).starts_with("multipart/") {
                let form = Form::parse(req.headers, req.body.clone()).ok_or_else(invalid)?;
                if let Some(upload) = &form.upload {
                    describe_file(
                        &mut doc,
                        upload,
                        &asset_origin(req.headers),
                        &self.api_key,
                        ctx,
                    );
                }
                form.fields
            } else {
                wrapped_object(&req.body, "asset").ok_or_else(invalid)?
            };
        merge(&mut doc, fields, |key| ASSET_EDITABLE.contains(&key));
        stamp_update(&mut doc, ctx);
        let slot = self
            .assets
            .iter_mut()
            .find(|a| uid_of(a) == uid)
            .ok_or(CmaError::AssetNotFound)?;
        *slot = doc.clone();
        Ok(ok(
            json!({ "notice": "Asset updated successfully.", "asset": doc }),
        ))
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
        let locale = ctx.query.get("locale").unwrap_or("en-us").to_owned();
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

/// The error bodies of the CMA, in its shape `{"error_message","error_code","errors"}`.
#[derive(Debug, PartialEq, Eq)]
enum CmaError {
    /// Missing or unknown `api_key` header.
    StackNotFound,
    ContentTypeNotFound(String),
    ContentTypeRejected(Write, Invalid),
    EntryNotFound,
    EntryRejected(Write, Invalid),
    AssetNotFound,
    AssetRejected(Write, Invalid),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    Create,
    Update,
}

impl Write {
    fn noun(self) -> &'static str {
        match self {
            Write::Create => "creation",
            Write::Update => "update",
        }
    }
}

/// Which field was refused and why, as the CMA words it in `errors`.
#[derive(Debug, PartialEq, Eq)]
struct Invalid {
    field: String,
    reason: &'static str,
}

impl Invalid {
    fn new(field: &str, reason: &'static str) -> Self {
        Self {
            field: field.to_owned(),
            reason,
        }
    }
}

impl CmaError {
    /// Sources: 109 (status 412) and its body are as measured against the live API and quoted in
    /// public projects; 118, 141 and 145 with these messages come from Contentstack's SDK tests and its
    /// API change log; 422 for the rest is the CMA's status for semantic errors (the official SDK's
    /// tests accept 404 or 422 for unknown uids). 119 is what the CMA answers for invalid entry data;
    /// the asset rejection wording is this simulator's own, no public source quotes one.
    fn into_response(self) -> SimResponse {
        let (status, code, message, invalid) = match self {
            CmaError::StackNotFound => (
                StatusCode::PRECONDITION_FAILED,
                109,
                "We can't find that Stack. Please try again.".to_owned(),
                Invalid::new("api_key", "is not valid."),
            ),
            CmaError::ContentTypeNotFound(uid) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                118,
                format!("The Content Type '{uid}' was not found. Please try again."),
                Invalid::new("uid", "is not valid."),
            ),
            CmaError::ContentTypeRejected(write, invalid) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                118,
                format!("Content Type {} failed. Please try again.", write.noun()),
                invalid,
            ),
            CmaError::EntryNotFound => (
                StatusCode::UNPROCESSABLE_ENTITY,
                141,
                "The requested object doesn't exist.".to_owned(),
                Invalid::new("uid", "is not valid."),
            ),
            CmaError::EntryRejected(write, invalid) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                119,
                format!("Entry {} failed. Please enter valid data.", write.noun()),
                invalid,
            ),
            CmaError::AssetNotFound => (
                StatusCode::UNPROCESSABLE_ENTITY,
                145,
                "Asset was not found.".to_owned(),
                Invalid::new("uid", "is not valid."),
            ),
            CmaError::AssetRejected(write, invalid) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                145,
                format!("Asset {} failed. Please try again.", write.noun()),
                invalid,
            ),
        };
        let mut errors = Object::new();
        errors.insert(invalid.field, json!([invalid.reason]));
        SimResponse {
            status,
            body: crate::reply::error_body(code, &message, errors.into()),
        }
    }
}

/// The fields of an asset upload, as the SDK sends them: `asset[upload]` (the file), `asset[title]`,
/// `asset[description]`, `asset[tags]` (comma separated) and `asset[parent_uid]`.
struct Form {
    upload: Option<Upload>,
    fields: Object,
}

struct Upload {
    filename: String,
    content_type: String,
    size: usize,
}

impl Form {
    /// `None` when the body is not well-formed multipart/form-data.
    fn parse(headers: &HeaderMap, body: Bytes) -> Option<Self> {
        let boundary =
            multer::parse_boundary(header_str(headers, header::CONTENT_TYPE.as_str())).ok()?;
        let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
        let mut multipart = multer::Multipart::new(body, boundary);
        let mut form = Form {
            upload: None,
            fields: Object::new(),
        };
        // The whole body is already in memory, so every future here is ready when first polled.
        while let Some(field) = multipart.next_field().now_or_never()?.ok()? {
            let name = field.name().unwrap_or_default().to_owned();
            let filename = field.file_name().map(str::to_owned);
            let content_type = field.content_type().map(|m| m.to_string());
            let data = field.bytes().now_or_never()?.ok()?;
            let Some(key) = name
                .strip_prefix("asset[")
                .and_then(|n| n.strip_suffix(']'))
            else {
                continue;
            };
            match key {
                "upload" => {
                    form.upload = Some(Upload {
                        filename: filename.unwrap_or_else(|| "uploaded_file".to_owned()),
                        content_type: content_type
                            .unwrap_or_else(|| "application/octet-stream".to_owned()),
                        size: data.len(),
                    })
                }
                "tags" => {
                    let text = String::from_utf8_lossy(&data);
                    let tags: Vec<&str> = text
                        .split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .collect();
                    form.fields.insert("tags".into(), json!(tags));
                }
                _ => {
                    form.fields.insert(
                        key.to_owned(),
                        String::from_utf8_lossy(&data).into_owned().into(),
                    );
                }
            }
        }
        Some(form)
    }
}

/// Sets the fields that describe an uploaded file. The URL mimics the CMA's layout
/// (`…/v3/assets/{api_key}/{asset_uid}/{upload_uid}/{filename}`) on the simulator's own origin;
/// nothing is served there.
fn describe_file(
    doc: &mut Object,
    upload: &Upload,
    origin: &str,
    api_key: &str,
    ctx: &mut Ctx<'_>,
) {
    let uid = uid_of(doc).to_owned();
    let url = format!(
        "{origin}/v3/assets/{api_key}/{uid}/{}/{}",
        ctx.uids.next(),
        upload.filename
    );
    doc.insert("filename".into(), upload.filename.clone().into());
    doc.insert("content_type".into(), upload.content_type.clone().into());
    // The CMA reports sizes as strings.
    doc.insert("file_size".into(), upload.size.to_string().into());
    doc.insert("url".into(), url.into());
}

fn asset_origin(headers: &HeaderMap) -> String {
    match header_str(headers, header::HOST.as_str()) {
        "" => "http://localhost".to_owned(),
        host => format!("http://{host}"),
    }
}

/// The query parameters of a request, percent-decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: Option<&str>) -> Self {
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

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        self.get(name) == Some("true")
    }

    fn number(&self, name: &str) -> Option<usize> {
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
fn list<'o>(key: &str, items: impl Iterator<Item = &'o Object>, query: &Query) -> Value {
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const KEY: &str = "blt_demo_key";

    fn store() -> ContentStore {
        let mut store = ContentStore::new(&[(KEY, "Demo")]);
        store.clock = || SystemTime::UNIX_EPOCH;
        store
    }

    fn headers(api_key: Option<&str>, content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(key) = api_key {
            headers.insert("api_key", HeaderValue::from_str(key).unwrap());
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9999"));
        headers
    }

    fn call_raw(
        store: &mut ContentStore,
        method: Method,
        target: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Option<SimResponse> {
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        store.handle(SimRequest {
            method: &method,
            path,
            query,
            headers,
            body,
            user_email: "svc@example.com",
        })
    }

    fn call(
        store: &mut ContentStore,
        method: Method,
        target: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let body = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        let headers = headers(Some(KEY), "application/json");
        let response = call_raw(store, method, target, &headers, body).expect("a served route");
        (response.status, response.body)
    }

    fn blog(store: &mut ContentStore) {
        let ct = json!({ "content_type": { "title": "Blog", "uid": "blog", "schema": [
            { "uid": "title", "data_type": "text", "mandatory": true, "unique": true },
            { "uid": "body", "data_type": "text" },
        ] } });
        let (status, _) = call(store, Method::POST, "/v3/content_types", ct);
        assert_eq!(status, StatusCode::CREATED);
    }

    /// A form part: name, optional (file name, content type), data.
    type Part<'a> = (&'a str, Option<(&'a str, &'a str)>, &'a [u8]);

    fn multipart(fields: &[Part<'_>]) -> (String, Bytes) {
        let boundary = "XyZzY";
        let mut body = Vec::new();
        for (name, file, data) in fields {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            let disposition = match file {
                Some((filename, ct)) => format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {ct}\r\n"
                ),
                None => format!("Content-Disposition: form-data; name=\"{name}\"\r\n"),
            };
            body.extend_from_slice(disposition.as_bytes());
            body.extend_from_slice(b"\r\n");
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        (
            format!("multipart/form-data; boundary={boundary}"),
            Bytes::from(body),
        )
    }

    #[test]
    fn routes_parse_by_method_and_path() {
        let cases = [
            (Method::GET, "/v3/stacks", Some(Op::FetchStack)),
            (Method::GET, "/v3/content_types", Some(Op::ListContentTypes)),
            (
                Method::GET,
                "/v3/content_types/",
                Some(Op::ListContentTypes),
            ),
            (
                Method::POST,
                "/v3/content_types",
                Some(Op::CreateContentType),
            ),
            (
                Method::GET,
                "/v3/content_types/blog",
                Some(Op::FetchContentType("blog")),
            ),
            (
                Method::PUT,
                "/v3/content_types/blog",
                Some(Op::UpdateContentType("blog")),
            ),
            (
                Method::DELETE,
                "/v3/content_types/blog",
                Some(Op::DeleteContentType("blog")),
            ),
            (
                Method::GET,
                "/v3/content_types/blog/entries",
                Some(Op::ListEntries("blog")),
            ),
            (
                Method::POST,
                "/v3/content_types/blog/entries",
                Some(Op::CreateEntry("blog")),
            ),
            (
                Method::GET,
                "/v3/content_types/blog/entries/e1",
                Some(Op::FetchEntry("blog", "e1")),
            ),
            (
                Method::PUT,
                "/v3/content_types/blog/entries/e1",
                Some(Op::UpdateEntry("blog", "e1")),
            ),
            (
                Method::DELETE,
                "/v3/content_types/blog/entries/e1",
                Some(Op::DeleteEntry("blog", "e1")),
            ),
            (Method::GET, "/v3/assets", Some(Op::ListAssets)),
            (Method::POST, "/v3/assets", Some(Op::CreateAsset)),
            (Method::GET, "/v3/assets/a1", Some(Op::FetchAsset("a1"))),
            (Method::PUT, "/v3/assets/a1", Some(Op::UpdateAsset("a1"))),
            (Method::DELETE, "/v3/assets/a1", Some(Op::DeleteAsset("a1"))),
            (Method::PATCH, "/v3/content_types/blog", None),
            (Method::GET, "/v3/user", None),
            (Method::GET, "/v3/content_types//entries", None),
            (Method::GET, "/v2/content_types", None),
            (
                Method::GET,
                "/v3/content_types/blog/entries/e1/locales",
                None,
            ),
        ];
        for (method, path, expected) in cases {
            assert_eq!(Op::parse(&method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn error_stack_not_found_is_412_109() {
        let r = CmaError::StackNotFound.into_response();
        assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(
            r.body,
            json!({ "error_message": "We can't find that Stack. Please try again.", "error_code": 109,
                    "errors": { "api_key": ["is not valid."] } })
        );
    }

    #[test]
    fn error_content_type_not_found_is_118_naming_the_uid() {
        let r = CmaError::ContentTypeNotFound("blog".into()).into_response();
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.body["error_code"], 118);
        assert_eq!(
            r.body["error_message"],
            "The Content Type 'blog' was not found. Please try again."
        );
        assert_eq!(r.body["errors"], json!({ "uid": ["is not valid."] }));
    }

    #[test]
    fn error_content_type_rejected_is_118_with_the_field() {
        let r = CmaError::ContentTypeRejected(Write::Create, Invalid::new("uid", "is not valid."))
            .into_response();
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            r.body,
            json!({ "error_message": "Content Type creation failed. Please try again.", "error_code": 118,
                    "errors": { "uid": ["is not valid."] } })
        );
    }

    #[test]
    fn error_entry_not_found_is_141() {
        let r = CmaError::EntryNotFound.into_response();
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            r.body,
            json!({ "error_message": "The requested object doesn't exist.", "error_code": 141,
                    "errors": { "uid": ["is not valid."] } })
        );
    }

    #[test]
    fn error_entry_rejected_is_119_with_the_field() {
        let r = CmaError::EntryRejected(Write::Update, Invalid::new("title", "is not unique."))
            .into_response();
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.body["error_code"], 119);
        assert_eq!(
            r.body["error_message"],
            "Entry update failed. Please enter valid data."
        );
        assert_eq!(r.body["errors"], json!({ "title": ["is not unique."] }));
    }

    #[test]
    fn error_asset_not_found_is_145() {
        let r = CmaError::AssetNotFound.into_response();
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.body["error_code"], 145);
        assert_eq!(r.body["error_message"], "Asset was not found.");
    }

    #[test]
    fn error_asset_rejected_names_the_field() {
        let r = CmaError::AssetRejected(Write::Create, Invalid::new("upload", "is required."))
            .into_response();
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            r.body["error_message"],
            "Asset creation failed. Please try again."
        );
        assert_eq!(r.body["errors"], json!({ "upload": ["is required."] }));
    }

    #[test]
    fn unknown_or_missing_api_key_is_stack_not_found() {
        let mut store = store();
        for key in [Some("nope"), None] {
            let headers = headers(key, "application/json");
            let r = call_raw(
                &mut store,
                Method::GET,
                "/v3/content_types",
                &headers,
                Bytes::new(),
            )
            .unwrap();
            assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
            assert_eq!(r.body["error_code"], 109);
        }
    }

    #[test]
    fn paths_it_does_not_serve_are_left_to_the_caller() {
        let mut store = store();
        let headers = headers(Some(KEY), "application/json");
        assert!(call_raw(&mut store, Method::GET, "/v3/user", &headers, Bytes::new()).is_none());
        assert!(
            call_raw(
                &mut store,
                Method::PATCH,
                "/v3/assets",
                &headers,
                Bytes::new()
            )
            .is_none()
        );
    }

    #[test]
    fn stack_fetch_describes_the_stack() {
        let (status, body) = call(&mut store(), Method::GET, "/v3/stacks", Value::Null);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["stack"]["api_key"], KEY);
        assert_eq!(body["stack"]["name"], "Demo");
    }

    #[test]
    fn content_type_lifecycle() {
        let mut store = store();
        blog(&mut store);
        let (_, body) = call(
            &mut store,
            Method::GET,
            "/v3/content_types/blog",
            Value::Null,
        );
        let ct = &body["content_type"];
        assert_eq!(
            (
                ct["uid"].as_str(),
                ct["title"].as_str(),
                ct["_version"].as_u64()
            ),
            (Some("blog"), Some("Blog"), Some(1))
        );
        assert_eq!(ct["created_at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(ct["created_by"], user_uid("svc@example.com"));

        let update =
            json!({ "content_type": { "title": "Blog posts", "uid": "ignored", "_version": 9 } });
        let (status, body) = call(&mut store, Method::PUT, "/v3/content_types/blog", update);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["notice"], "Content Type updated successfully.");
        assert_eq!(
            (
                body["content_type"]["uid"].as_str(),
                body["content_type"]["_version"].as_u64()
            ),
            (Some("blog"), Some(2))
        );
        assert_eq!(
            body["content_type"]["schema"].as_array().map(Vec::len),
            Some(2),
            "schema kept"
        );

        let (_, body) = call(
            &mut store,
            Method::GET,
            "/v3/content_types?include_count=true",
            Value::Null,
        );
        assert_eq!(body["count"], 1);
        assert_eq!(body["content_types"][0]["title"], "Blog posts");

        let (_, body) = call(
            &mut store,
            Method::DELETE,
            "/v3/content_types/blog",
            Value::Null,
        );
        assert_eq!(body["notice"], "Content Type deleted successfully.");
        let (status, body) = call(
            &mut store,
            Method::GET,
            "/v3/content_types/blog",
            Value::Null,
        );
        assert_eq!(
            (status, body["error_code"].as_u64()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(118))
        );
    }

    #[test]
    fn content_type_creation_refuses_bad_uids_duplicates_and_missing_bodies() {
        let mut store = store();
        blog(&mut store);
        let cases = [
            (
                json!({ "content_type": { "title": "Upper", "uid": "Upper" } }),
                "uid",
                "is not valid.",
            ),
            (
                json!({ "content_type": { "title": "No uid" } }),
                "uid",
                "is required.",
            ),
            (
                json!({ "content_type": { "title": "Again", "uid": "blog" } }),
                "uid",
                "is not unique.",
            ),
            (
                json!({ "content_type": { "title": "Blog", "uid": "blog2" } }),
                "title",
                "is not unique.",
            ),
            (
                json!({ "content_type": { "uid": "untitled" } }),
                "title",
                "is required.",
            ),
            (
                json!({ "title": "unwrapped", "uid": "x" }),
                "content_type",
                "is required.",
            ),
        ];
        for (body, field, reason) in cases {
            let (status, answer) =
                call(&mut store, Method::POST, "/v3/content_types", body.clone());
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            assert_eq!(answer["errors"], json!({ field: [reason] }), "{body}");
        }
    }

    #[test]
    fn entry_lifecycle() {
        let mut store = store();
        blog(&mut store);
        let create =
            json!({ "entry": { "title": "Hello", "body": "v1", "_version": 7, "uid": "mine" } });
        let (status, body) = call(
            &mut store,
            Method::POST,
            "/v3/content_types/blog/entries?locale=en-us",
            create,
        );
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(body["notice"], "Entry created successfully.");
        let entry = body["entry"].clone();
        let uid = entry["uid"].as_str().unwrap().to_owned();
        assert!(uid.starts_with("blt") && uid.len() == 19, "{uid}");
        assert_eq!(
            (entry["_version"].as_u64(), entry["locale"].as_str()),
            (Some(1), Some("en-us"))
        );
        assert_eq!(entry["tags"], json!([]));
        let path = format!("/v3/content_types/blog/entries/{uid}");

        let (_, body) = call(&mut store, Method::GET, &path, Value::Null);
        assert_eq!(body["entry"], entry);

        // The SDK sends the whole fetched entry back, system fields included.
        let mut sent = entry.clone();
        sent["body"] = "v2".into();
        let (status, body) = call(&mut store, Method::PUT, &path, json!({ "entry": sent }));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["notice"], "Entry updated successfully.");
        assert_eq!(
            (
                body["entry"]["body"].as_str(),
                body["entry"]["_version"].as_u64()
            ),
            (Some("v2"), Some(2))
        );
        assert_eq!(body["entry"]["uid"], uid.as_str());

        let (_, body) = call(
            &mut store,
            Method::GET,
            "/v3/content_types/blog/entries?include_count=true",
            Value::Null,
        );
        assert_eq!(
            (body["count"].as_u64(), body["entries"][0]["body"].as_str()),
            (Some(1), Some("v2"))
        );

        let (_, body) = call(&mut store, Method::DELETE, &path, Value::Null);
        assert_eq!(body["notice"], "Entry deleted successfully.");
        let (status, body) = call(&mut store, Method::GET, &path, Value::Null);
        assert_eq!(
            (status, body["error_code"].as_u64()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(141))
        );
    }

    #[test]
    fn entries_follow_the_schema_rules() {
        let mut store = store();
        blog(&mut store);
        let path = "/v3/content_types/blog/entries";
        call(
            &mut store,
            Method::POST,
            path,
            json!({ "entry": { "title": "Taken" } }),
        );
        let cases = [
            (
                json!({ "entry": { "body": "no title" } }),
                "title",
                "is a required field.",
            ),
            (
                json!({ "entry": { "title": "  " } }),
                "title",
                "is a required field.",
            ),
            (
                json!({ "entry": { "title": "Taken" } }),
                "title",
                "is not unique.",
            ),
            (json!({ "title": "unwrapped" }), "entry", "is required."),
        ];
        for (body, field, reason) in cases {
            let (status, answer) = call(&mut store, Method::POST, path, body.clone());
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            assert_eq!(answer["error_code"], 119, "{body}");
            assert_eq!(answer["errors"], json!({ field: [reason] }), "{body}");
        }
    }

    #[test]
    fn entries_of_an_unknown_content_type_are_118() {
        let (status, body) = call(
            &mut store(),
            Method::POST,
            "/v3/content_types/nope/entries",
            json!({ "entry": {} }),
        );
        assert_eq!(
            (status, body["error_code"].as_u64()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(118))
        );
    }

    #[test]
    fn deleting_a_content_type_deletes_its_entries() {
        let mut store = store();
        blog(&mut store);
        call(
            &mut store,
            Method::POST,
            "/v3/content_types/blog/entries",
            json!({ "entry": { "title": "A" } }),
        );
        call(
            &mut store,
            Method::DELETE,
            "/v3/content_types/blog",
            Value::Null,
        );
        blog(&mut store);
        let (_, body) = call(
            &mut store,
            Method::GET,
            "/v3/content_types/blog/entries?count=true",
            Value::Null,
        );
        assert_eq!(body, json!({ "entries": 0 }));
    }

    #[test]
    fn asset_upload_fetch_update_delete() {
        let mut store = store();
        let (content_type, body) = multipart(&[
            ("asset[title]", None, b"Logo"),
            ("asset[tags]", None, b"a, b"),
            (
                "asset[upload]",
                Some(("logo.png", "image/png")),
                b"\x89PNG fake",
            ),
            ("unrelated", None, b"x"),
        ]);
        let headers = headers(Some(KEY), &content_type);
        let r = call_raw(&mut store, Method::POST, "/v3/assets", &headers, body).unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.body["notice"], "Asset created successfully.");
        let asset = r.body["asset"].clone();
        let uid = asset["uid"].as_str().unwrap().to_owned();
        assert_eq!(asset["filename"], "logo.png");
        assert_eq!(asset["content_type"], "image/png");
        assert_eq!(asset["file_size"], "9");
        assert_eq!(asset["title"], "Logo");
        assert_eq!(asset["tags"], json!(["a", "b"]));
        assert_eq!(asset["_version"], 1);
        let url = asset["url"].as_str().unwrap();
        assert!(
            url.starts_with(&format!("http://127.0.0.1:9999/v3/assets/{KEY}/{uid}/"))
                && url.ends_with("/logo.png"),
            "{url}"
        );
        assert!(asset.get("unrelated").is_none());

        let path = format!("/v3/assets/{uid}");
        let (_, body) = call(&mut store, Method::GET, &path, Value::Null);
        assert_eq!(body["asset"], asset);

        let update = json!({ "asset": { "title": "New", "filename": "evil.exe", "_version": 40 } });
        let (_, body) = call(&mut store, Method::PUT, &path, update);
        assert_eq!(body["notice"], "Asset updated successfully.");
        assert_eq!(
            (
                body["asset"]["title"].as_str(),
                body["asset"]["filename"].as_str()
            ),
            (Some("New"), Some("logo.png"))
        );
        assert_eq!(body["asset"]["_version"], 2);

        let (_, body) = call(
            &mut store,
            Method::GET,
            "/v3/assets?include_count=true&limit=1",
            Value::Null,
        );
        assert_eq!(
            (
                body["count"].as_u64(),
                body["assets"].as_array().map(Vec::len)
            ),
            (Some(1), Some(1))
        );

        let (_, body) = call(&mut store, Method::DELETE, &path, Value::Null);
        assert_eq!(body["notice"], "Asset deleted successfully.");
        let (status, body) = call(&mut store, Method::GET, &path, Value::Null);
        assert_eq!(
            (status, body["error_code"].as_u64()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(145))
        );
    }

    #[test]
    fn asset_replace_swaps_the_file() {
        let mut store = store();
        let (ct, body) = multipart(&[("asset[upload]", Some(("a.txt", "text/plain")), b"hello")]);
        let r = call_raw(
            &mut store,
            Method::POST,
            "/v3/assets",
            &headers(Some(KEY), &ct),
            body,
        )
        .unwrap();
        let uid = r.body["asset"]["uid"].as_str().unwrap().to_owned();
        assert_eq!(
            r.body["asset"]["title"], "a.txt",
            "title defaults to the file name"
        );

        let (ct, body) =
            multipart(&[("asset[upload]", Some(("b.html", "text/html")), b"<p>hi</p>")]);
        let r = call_raw(
            &mut store,
            Method::PUT,
            &format!("/v3/assets/{uid}"),
            &headers(Some(KEY), &ct),
            body,
        )
        .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            (
                r.body["asset"]["filename"].as_str(),
                r.body["asset"]["file_size"].as_str()
            ),
            (Some("b.html"), Some("9"))
        );
        assert_eq!(r.body["asset"]["_version"], 2);
    }

    #[test]
    fn asset_upload_without_a_file_is_refused() {
        let mut store = store();
        let (ct, body) = multipart(&[("asset[title]", None, b"no file")]);
        let r = call_raw(
            &mut store,
            Method::POST,
            "/v3/assets",
            &headers(Some(KEY), &ct),
            body,
        )
        .unwrap();
        assert_eq!(
            (r.status, r.body["errors"].clone()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "upload": ["is required."] })
            )
        );

        let headers = headers(Some(KEY), "application/json");
        let r = call_raw(
            &mut store,
            Method::POST,
            "/v3/assets",
            &headers,
            Bytes::from_static(b"{}"),
        )
        .unwrap();
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn stacks_are_separate() {
        let mut store = ContentStore::new(&[("k1", "One"), ("k2", "Two")]);
        let body = Bytes::from(json!({ "content_type": { "title": "T", "uid": "t" } }).to_string());
        let r = call_raw(
            &mut store,
            Method::POST,
            "/v3/content_types",
            &headers(Some("k1"), "application/json"),
            body,
        )
        .unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        let r = call_raw(
            &mut store,
            Method::GET,
            "/v3/content_types/t",
            &headers(Some("k2"), "application/json"),
            Bytes::new(),
        )
        .unwrap();
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn listing_pages_with_skip_and_limit() {
        let mut store = store();
        for i in 0..3 {
            let ct =
                json!({ "content_type": { "title": format!("T{i}"), "uid": format!("t{i}") } });
            call(&mut store, Method::POST, "/v3/content_types", ct);
        }
        let (_, body) = call(
            &mut store,
            Method::GET,
            "/v3/content_types?skip=1&limit=1",
            Value::Null,
        );
        let uids: Vec<&str> = body["content_types"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["uid"].as_str())
            .collect();
        assert_eq!(uids, ["t1"]);
        assert!(body.get("count").is_none());
        let (_, body) = call(
            &mut store,
            Method::GET,
            "/v3/content_types?count=true",
            Value::Null,
        );
        assert_eq!(body, json!({ "content_types": 3 }));
    }

    #[test]
    fn query_parameters_are_percent_decoded() {
        let q = Query::parse(Some(
            "locale=en%2Dus&query=%7B%22a%22%3A1%7D&flag&x=a+b&bad=%zz",
        ));
        assert_eq!(q.get("locale"), Some("en-us"));
        assert_eq!(q.get("query"), Some("{\"a\":1}"));
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.get("x"), Some("a b"));
        assert_eq!(q.get("bad"), Some("%zz"));
        assert_eq!(q.get("missing"), None);
    }

    #[test]
    fn uids_are_unique_and_look_like_the_cma_ones() {
        let mut source = UidSource::default();
        let uids: std::collections::HashSet<String> = (0..1000).map(|_| source.next()).collect();
        assert_eq!(uids.len(), 1000);
        assert!(uids.iter().all(|u| u.len() == 19
            && u.starts_with("blt")
            && u[3..].bytes().all(|b| b.is_ascii_hexdigit())));
        assert_eq!(
            UidSource::default().next(),
            UidSource::default().next(),
            "deterministic"
        );
    }

    #[test]
    fn user_uids_are_derived_from_the_email() {
        // sha256("svc@example.com") begins with these 8 bytes.
        assert_eq!(user_uid("svc@example.com"), "bltc45e3200c0a454b8");
        assert_ne!(user_uid("a@example.com"), user_uid("b@example.com"));
    }

    #[test]
    fn content_type_uid_rules() {
        for ok in ["blog", "blog_post2", "_x"] {
            assert!(is_valid_uid(ok), "{ok}");
        }
        for bad in ["", "Blog", "2blog", "blog-post", "blog post"] {
            assert!(!is_valid_uid(bad), "{bad}");
        }
    }
}
