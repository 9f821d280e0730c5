//! Assets: the multipart upload the SDKs send and the metadata the store keeps of it. The bytes
//! themselves are counted and dropped; nothing is served from the asset URLs.
use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, header};
use serde_json::{Value, json};

use super::error::{CmaError, Invalid, Write};
use super::{
    Ctx, Object, SimRequest, SimResponse, Stack, created, header_str, merge, ok, stamp_new,
    stamp_update, uid_of, wrapped_object,
};

/// Fields of an asset a JSON update may change; the file's own (name, size, type, url) only change
/// with a new upload.
const ASSET_EDITABLE: &[&str] = &["title", "description", "tags", "parent_uid"];

impl Stack {
    pub(super) fn asset(&self, uid: &str) -> Result<&Object, CmaError> {
        self.assets
            .iter()
            .find(|a| uid_of(a) == uid)
            .ok_or(CmaError::AssetNotFound)
    }

    pub(super) fn create_asset(
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
    pub(super) fn update_asset(
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
