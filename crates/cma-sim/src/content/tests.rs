use super::*;
use http::{HeaderValue, header};

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
        (
            Method::GET,
            "/v3/stacks/settings",
            Some(Op::FetchStackSettings),
        ),
        (Method::GET, "/v3/locales", Some(Op::ListLocales)),
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
    assert!(body["stack"]["uid"].as_str().unwrap().starts_with("blt"));
}

#[test]
fn the_master_locale_is_listed_and_paged_like_any_collection() {
    let mut store = store();
    let (status, body) = call(
        &mut store,
        Method::GET,
        "/v3/locales?include_count=true&asc=updated_at&only%5BBASE%5D%5B%5D=code",
        Value::Null,
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["count"], 1);
    let master = &body["locales"][0];
    assert_eq!(master["code"], "en-us");
    assert_eq!(master["fallback_locale"], Value::Null);
    assert!(master["uid"].as_str().unwrap().starts_with("blt"));
    let (_, stack) = call(&mut store, Method::GET, "/v3/stacks", Value::Null);
    assert_eq!(stack["stack"]["master_locale"], master["code"]);
    let (_, past) = call(&mut store, Method::GET, "/v3/locales?skip=1", Value::Null);
    assert_eq!(past["locales"], json!([]));
}

#[test]
fn stack_settings_are_an_object() {
    let (status, body) = call(
        &mut store(),
        Method::GET,
        "/v3/stacks/settings",
        Value::Null,
    );
    assert_eq!(status, StatusCode::OK);
    assert!(body["stack_settings"].is_object(), "{body}");
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
        let (status, answer) = call(&mut store, Method::POST, "/v3/content_types", body.clone());
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

    let (ct, body) = multipart(&[("asset[upload]", Some(("b.html", "text/html")), b"<p>hi</p>")]);
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
        let ct = json!({ "content_type": { "title": format!("T{i}"), "uid": format!("t{i}") } });
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
