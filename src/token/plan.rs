//! The organization's plan limits, read with the profile's session (docs/design.md#rate-budget):
//! `GET /v3/user` names the account's organizations, `GET /v3/organizations/{uid}?include_plan=true`
//! lists the plan's features, among them `getLimit`, `limit` and `bulkLimit`, the organization's
//! reads, writes and bulk calls per second. Same discipline as the session calls: no redirect
//! followed, answers read up to a bound, no text of them kept.
use serde::Deserialize;

use super::Token;
use super::session::{AuthClient, CallError, read_capped};

/// The most read of either answer: a user with many organizations, a plan with many features.
const PLAN_BODY_LIMIT: usize = 256 << 10;

/// What the plan says, per second; `None` for a limit the plan does not have (or has off).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrganizationPlan {
    pub organization_uid: String,
    pub reads: Option<u32>,
    pub writes: Option<u32>,
    pub bulk: Option<u32>,
}

#[derive(Deserialize)]
struct UserAnswer {
    user: User,
}

#[derive(Deserialize)]
struct User {
    #[serde(default)]
    organizations: Vec<Organization>,
}

#[derive(Deserialize)]
struct Organization {
    uid: String,
    #[serde(default)]
    is_owner: bool,
}

#[derive(Deserialize)]
struct OrganizationAnswer {
    organization: PlannedOrganization,
}

#[derive(Deserialize)]
struct PlannedOrganization {
    plan: Option<Plan>,
}

#[derive(Deserialize)]
struct Plan {
    #[serde(default)]
    features: Vec<Feature>,
}

#[derive(Deserialize)]
struct Feature {
    uid: String,
    limit: Option<f64>,
    enabled: Option<bool>,
}

impl AuthClient {
    /// The plan of `organization_uid`, or of the account's organization when `None`: the only
    /// one, else the first it owns, else the first. `pace` is awaited before each call: the calls
    /// count against the organization's budget like any other read.
    pub async fn organization_plan<F, P>(
        &self,
        token: &Token,
        organization_uid: Option<&str>,
        mut pace: P,
    ) -> Result<OrganizationPlan, CallError>
    where
        P: FnMut() -> F,
        F: Future<Output = ()>,
    {
        let uid = match organization_uid {
            Some(uid) => uid.to_owned(),
            None => {
                pace().await;
                let user: UserAnswer = self.get_json(token, "/v3/user").await?;
                let orgs = user.user.organizations;
                let chosen = orgs.iter().find(|o| o.is_owner).or(orgs.first());
                let chosen = chosen.ok_or(CallError::Unexpected("a user in no organization"))?;
                chosen.uid.clone()
            }
        };
        // An organization uid goes into the path: only what a uid may hold.
        if uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(CallError::Unexpected("an organization uid that is not one"));
        }
        let path = format!("/v3/organizations/{uid}?include_plan=true");
        pace().await;
        let answer: OrganizationAnswer = self.get_json(token, &path).await?;
        let features = answer
            .organization
            .plan
            .map(|p| p.features)
            .unwrap_or_default();
        let limit = |name: &str| {
            let feature = features.iter().find(|f| f.uid == name)?;
            let limit = feature.limit.filter(|_| feature.enabled != Some(false))?;
            // A rate is a whole number of requests per second, at least one.
            (limit >= 1.0 && limit.is_finite()).then(|| limit.min(f64::from(u32::MAX)) as u32)
        };
        Ok(OrganizationPlan {
            reads: limit("getLimit"),
            writes: limit("limit"),
            bulk: limit("bulkLimit"),
            organization_uid: uid,
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        token: &Token,
        path: &str,
    ) -> Result<T, CallError> {
        let response = self
            .http
            .get(self.url(path))
            .header("authtoken", token.header().clone())
            .send()
            .await
            .map_err(CallError::Network)?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(CallError::Status(status));
        }
        let body = read_capped(response, PLAN_BODY_LIMIT)
            .await
            .map_err(CallError::Network)?
            .ok_or(CallError::TooLarge(PLAN_BODY_LIMIT))?;
        // The answer is not kept, nor any of its text: a parse error says only where it failed.
        serde_json::from_slice(&body).map_err(|_| CallError::Unexpected("JSON of another shape"))
    }
}
