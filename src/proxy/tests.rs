use super::*;

fn config(profiles: &str) -> Config {
    Config::from_toml(profiles, Vec::new(), None).unwrap()
}

/// The URI the upstream would be sent, or the reason for refusing.
fn admit_uri(target: &str, version: Version, method: Method) -> Result<String, String> {
    let c = config(
        "[upstream]\nurl = \"https://eu-api.contentstack.com\"\n[profiles.default]\nemail = \"a@x\"\npassword = \"p\"\n",
    );
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.uri = target.parse().unwrap();
    parts.version = version;
    parts.method = method;
    target::judge(&parts.method, &parts.uri, c.policy.client_credentials)
        .and_then(|t| admit(&parts, &c).map(|()| t))
        .and_then(|t| Ok(t.path_and_query()?))
        // Where the upstream connection sends it: the upstream's address, then the judged target.
        .map(|target| format!("{}://{}{target}", c.upstream.scheme, c.upstream.authority))
        .map_err(|e| e.reason().to_owned())
}

#[test]
fn admission() {
    let v1 = Version::HTTP_11;
    assert_eq!(
        admit_uri("/v3/user?x=1", v1, Method::GET).unwrap(),
        "https://eu-api.contentstack.com/v3/user?x=1"
    );
    assert_eq!(
        admit_uri("//x/v3/./user/?x=1", v1, Method::GET).unwrap(),
        "https://eu-api.contentstack.com/x/v3/user?x=1"
    );
    assert_eq!(
        admit_uri("https://eu-api.contentstack.com/v3/user", v1, Method::GET).unwrap(),
        "https://eu-api.contentstack.com/v3/user"
    );
    assert_eq!(
        admit_uri("http://evil.example/v3/user", v1, Method::GET).unwrap_err(),
        "bad_request"
    );
    assert_eq!(
        admit_uri("http://eu-api.contentstack.com/v3/user", v1, Method::GET).unwrap_err(),
        "bad_request",
        "port 80 is not the upstream's 443"
    );
    assert_eq!(
        admit_uri("eu-api.contentstack.com:443", v1, Method::CONNECT).unwrap_err(),
        "method_not_allowed"
    );
    for method in ["TRACE", "trace", "TRACK", "Track"] {
        assert_eq!(
            admit_uri(
                "/v3/user",
                v1,
                Method::from_bytes(method.as_bytes()).unwrap()
            )
            .unwrap_err(),
            "method_not_allowed",
            "{method}"
        );
    }
    // HTTP/2 always carries :authority; it is the Host, and never picks the destination.
    assert_eq!(
        admit_uri(
            "http://127.0.0.1:8080/v3/user",
            Version::HTTP_2,
            Method::GET
        )
        .unwrap(),
        "https://eu-api.contentstack.com/v3/user"
    );
}

/// An outbound request as [`Proxy::judge`] leaves it, with a client header and `x-forwarded-for`.
fn outbound(limiter: Option<Arc<RateLimiter>>) -> Outbound {
    let mut headers = HeaderMap::new();
    headers.insert("x-client", http::HeaderValue::from_static("kept"));
    headers.insert(
        "x-forwarded-for",
        http::HeaderValue::from_static("10.0.0.1"),
    );
    Outbound {
        kind: RequestKind::Read,
        method: Method::GET,
        target: http::uri::PathAndQuery::from_static("/v3/user"),
        headers,
        timeout: Duration::from_secs(1),
        budget: limiter.map(|limiter| Budget {
            limiter,
            profile: "default".into(),
        }),
        pinned: None,
        carries_token: true,
        token_kind: None,
    }
}

/// What a send carries: each header's values, in order of name.
fn sent(headers: &HeaderMap) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<_> = headers
        .keys()
        .map(|name| {
            let values = headers.get_all(name).iter();
            let values = values.map(|v| v.to_str().unwrap().to_owned());
            (name.as_str().to_owned(), values.collect())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_replay_sends_every_header_again_with_exactly_the_new_token() {
    let first = Token::new(http::HeaderValue::from_static("first"));
    let bearer = Token::bearer("second", Duration::from_secs(60)).unwrap();
    let again = Token::new(http::HeaderValue::from_static("third"));
    let mut out = outbound(None);
    out.set_token(&first);
    let one = out.headers_to_send(true);
    // A reload turned the profile into an OAuth app, and back, between sends: each send carries
    // one credential, the current one, and everything else the client's request had.
    out.set_token(&bearer);
    let two = out.headers_to_send(true);
    out.set_token(&again);
    let three = out.headers_to_send(false);
    let with = |token: (&str, &str)| {
        let mut want = vec![
            (token.0.to_owned(), vec![token.1.to_owned()]),
            ("x-client".to_owned(), vec!["kept".to_owned()]),
            ("x-forwarded-for".to_owned(), vec!["10.0.0.1".to_owned()]),
        ];
        want.sort();
        want
    };
    assert_eq!(sent(&one), with(("authtoken", "first")));
    assert_eq!(sent(&two), with(("authorization", "Bearer second")));
    assert_eq!(sent(&three), with(("authtoken", "third")));
}

#[test]
fn a_request_with_a_budget_keeps_its_headers_for_a_429_retry() {
    let c = config(
        "[profiles.default]\nemail = \"a@x\"\npassword = \"p\"\n[profiles.default.rate_limit]\nreads_per_second = 1\n",
    );
    let settings = c.profiles[0].rate_limit.clone().unwrap();
    let limiter = Arc::new(RateLimiter::new(&settings, None));
    let token = Token::new(http::HeaderValue::from_static("secret"));
    let mut out = outbound(Some(limiter));
    out.set_token(&token);
    let first = out.headers_to_send(false);
    // What `send_again` sends is what is left in the outbound request.
    assert_eq!(sent(&out.headers), sent(&first));
    assert!(first.contains_key("authtoken"));
    // Without a budget and without a body to replay, nothing is sent twice: nothing is kept.
    let mut out = outbound(None);
    out.set_token(&token);
    assert!(out.headers_to_send(false).contains_key("authtoken"));
    assert!(out.headers.is_empty());
}
