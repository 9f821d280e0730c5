//! Which profile serves a request (docs/design.md#profiles-and-client-credentials): the
//! `x-cma-profile` header, else the profile that lists the request's stack, else `default`, else
//! the only profile. Pure.

use http::{HeaderMap, HeaderName};

use super::error::{BadRequest, ProxyError};
use super::headers::{PROFILE_HEADER, Screened};
use crate::config::{Config, ProfileConfig};
use crate::policy::Denial;

/// Names looked up by value, not by `&str`, which would parse them at every request.
static PROFILE_NAME: HeaderName = HeaderName::from_static(PROFILE_HEADER);
static API_KEY: HeaderName = HeaderName::from_static("api_key");

/// Profile routing: `x-cma-profile`, else the profile listing the request's `api_key`,
/// else `default`, else the only profile. A profile with `stacks` serves only those stacks.
/// `query_api_key` is the target's `api_key` query parameter.
/// `screened` is what [`super::headers::screen_request`] found in these headers: only the headers
/// it found are looked up. The profile is given by where it is in `config.profiles`, which is all
/// a request's future keeps of it.
pub(super) fn select_profile(
    headers: &HeaderMap,
    screened: &Screened,
    query_api_key: Option<&str>,
    config: &Config,
) -> Result<usize, ProxyError> {
    let api_key = if screened.carries_stack_key() {
        stack_key(headers, query_api_key)?
    } else {
        query_api_key
    };
    let serves = |p: &ProfileConfig, key: &str| p.stacks.iter().any(|s| s == key);
    let named = screened
        .names_a_profile()
        .then(|| headers.get(&PROFILE_NAME))
        .flatten();
    let profiles = &config.profiles;
    let named_profile = |name: &str| profiles.iter().position(|p| &*p.name == name);
    let index = if let Some(value) = named {
        let name = value.to_str().map_err(|_| BadRequest::BadProfileHeader)?;
        named_profile(name).ok_or_else(|| BadRequest::UnknownProfile(name.to_owned()))?
    } else if let Some(i) = api_key.and_then(|key| profiles.iter().position(|p| serves(p, key))) {
        i
    } else if let Some(i) = named_profile("default") {
        i
    } else if profiles.len() == 1 {
        0
    } else if api_key.is_some() && config.profiles.iter().all(|p| !p.stacks.is_empty()) {
        return Err(ProxyError::PolicyDenied(Denial::StackNotServed));
    } else {
        return Err(BadRequest::NoProfile.into());
    };
    let profile = &profiles[index];
    if let Some(key) = api_key
        && !profile.stacks.is_empty()
        && !serves(profile, key)
    {
        return Err(ProxyError::PolicyDenied(Denial::StackNotServed));
    }
    Ok(index)
}

/// The request's stack key: the `api_key` header, or the `api_key` query parameter, which the
/// upstream reads too. Ambiguous forms are refused rather than guessed at: two `api_key` headers,
/// a value that is not text, or a header and a query parameter that disagree. (Other spellings of
/// the name are refused earlier, by [`super::headers::screen_request`] and
/// [`super::target::judge`].)
fn stack_key<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Result<Option<&'a str>, BadRequest> {
    let mut values = headers.get_all(&API_KEY).iter();
    let header = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(value), None) => Some(
            value
                .to_str()
                .map_err(|_| BadRequest::Malformed("the api_key header is not valid text"))?,
        ),
        (Some(_), Some(_)) => return Err(BadRequest::Malformed("more than one api_key header")),
    };
    match (header, query) {
        (Some(header), Some(query)) if header != query => Err(BadRequest::Malformed(
            "the api_key header and the api_key query parameter name different stacks",
        )),
        (header, query) => Ok(header.or(query)),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::proxy::headers;

    fn config(profiles: &str) -> Config {
        Config::from_toml(profiles, Vec::new(), None).unwrap()
    }

    fn route(config: &Config, pairs: &[(&str, &str)]) -> Result<String, String> {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        route_with_query(config, &headers, None)
    }

    fn route_with_query(
        config: &Config,
        headers: &HeaderMap,
        query_api_key: Option<&str>,
    ) -> Result<String, String> {
        headers::screen_request(headers, config.policy.client_credentials)
            .and_then(|screened| select_profile(headers, &screened, query_api_key, config))
            .map(|i| config.profiles[i].name.to_string())
            .map_err(|e| e.reason().to_owned())
    }

    #[test]
    fn profile_routing_order() {
        let c = config(
            r#"
            [profiles.default]
            email = "a@x" 
            password = "p"
            [profiles.blog]
            email = "b@x"
            password = "p"
            stacks = ["blt_blog"]
            "#,
        );
        assert_eq!(route(&c, &[]).unwrap(), "default");
        assert_eq!(route(&c, &[("api_key", "blt_blog")]).unwrap(), "blog");
        assert_eq!(route(&c, &[("api_key", "blt_other")]).unwrap(), "default");
        assert_eq!(route(&c, &[("x-cma-profile", "blog")]).unwrap(), "blog");
        assert_eq!(
            route(&c, &[("x-cma-profile", "blog"), ("api_key", "blt_other")]).unwrap_err(),
            "policy_denied"
        );
        assert_eq!(
            route(&c, &[("x-cma-profile", "nope")]).unwrap_err(),
            "bad_request"
        );
        assert_eq!(
            route(&c, &[("api-key", "blt_blog")]).unwrap_err(),
            "bad_request"
        );
        let mut two = HeaderMap::new();
        two.append("api_key", HeaderValue::from_static("blt_other"));
        two.append("api_key", HeaderValue::from_static("blt_blog"));
        assert_eq!(route_with_query(&c, &two, None).unwrap_err(), "bad_request");
        let mut binary = HeaderMap::new();
        binary.insert("api_key", HeaderValue::from_bytes(b"blt\xff").unwrap());
        assert_eq!(
            route_with_query(&c, &binary, None).unwrap_err(),
            "bad_request"
        );
        // The query's api_key routes like the header; the two must agree.
        let none = HeaderMap::new();
        assert_eq!(
            route_with_query(&c, &none, Some("blt_blog")).unwrap(),
            "blog"
        );
        let mut blog = HeaderMap::new();
        blog.insert("api_key", HeaderValue::from_static("blt_blog"));
        assert_eq!(
            route_with_query(&c, &blog, Some("blt_blog")).unwrap(),
            "blog"
        );
        assert_eq!(
            route_with_query(&c, &blog, Some("blt_other")).unwrap_err(),
            "bad_request"
        );
    }

    #[test]
    fn profiles_that_all_list_stacks_refuse_other_stacks() {
        let c = config(
            r#"
            [profiles.a]
            email = "a@x"
            password = "p"
            stacks = ["blt_a"]
            [profiles.b]
            email = "b@x"
            password = "p"
            stacks = ["blt_b"]
            "#,
        );
        assert_eq!(route(&c, &[("api_key", "blt_a")]).unwrap(), "a");
        assert_eq!(route(&c, &[("api_key", "blt_b")]).unwrap(), "b");
        assert_eq!(
            route(&c, &[("api_key", "blt_c")]).unwrap_err(),
            "policy_denied"
        );
        assert_eq!(route(&c, &[]).unwrap_err(), "bad_request");
    }

    #[test]
    fn single_profile_is_used_without_default_name() {
        let c = config("[profiles.svc]\nemail = \"a@x\"\npassword = \"p\"\n");
        assert_eq!(route(&c, &[]).unwrap(), "svc");
    }
}
