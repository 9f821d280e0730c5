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
        .and_then(|t| upstream_uri(&t, &c))
        .map(|u| u.to_string())
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
