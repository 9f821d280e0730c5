//! Learning the organization's budget (docs/design.md#rate-budget): for every login profile whose
//! `rate_limit` leaves a rate open, the plan is read with the profile's session once a login
//! succeeds, and again after each new session; a plan that cannot be read leaves Contentstack's
//! defaults in force until the next login tries again. Never on the request path.
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Proxy;
use crate::ratelimit::{Decision, PlanLimits, RateLimiter, RequestKind};

/// How often the learner looks even without a new token: a reload may have added a profile.
const LOOK_EVERY: Duration = Duration::from_secs(60);
/// The longest the plan's reads wait for the budget; past it they go anyway (two reads, once per
/// session, cannot starve anyone).
const PLAN_WAIT: Duration = Duration::from_secs(10);

impl Proxy {
    /// Starts the learner on the current runtime; it ends with the proxy.
    pub fn learn_budgets(self: &Arc<Self>) {
        let changes = self.tokens.token_changes();
        let proxy = Arc::downgrade(self);
        tokio::spawn(async move {
            // Per profile: the budget learned for, and the session it was learned with.
            let mut learned: HashMap<Arc<str>, (Weak<RateLimiter>, String)> = HashMap::new();
            loop {
                let changed = changes.notified();
                tokio::pin!(changed);
                // Registered before looking, so that a login in between is not missed.
                changed.as_mut().enable();
                let Some(this) = proxy.upgrade() else { return };
                this.learn_once(&mut learned).await;
                drop(this);
                let _ = tokio::time::timeout(LOOK_EVERY, changed).await;
            }
        });
    }

    async fn learn_once(&self, learned: &mut HashMap<Arc<str>, (Weak<RateLimiter>, String)>) {
        let config = self.config();
        for profile in config.profiles.iter().filter(|p| p.login().is_some()) {
            let Some((settings, limiter)) = self.limiters.load().get(&profile.name).cloned() else {
                continue;
            };
            let Some(token) = self.tokens.cached(&profile.name) else {
                continue;
            };
            let seen = learned.get(&profile.name).is_some_and(|(l, fingerprint)| {
                l.upgrade().is_some_and(|l| Arc::ptr_eq(&l, &limiter))
                    && fingerprint == token.fingerprint()
            });
            if seen || !limiter.learns() {
                continue;
            }
            let fingerprint = token.fingerprint().to_owned();
            // The plan's reads count against the organization's budget like any other: each
            // waits for a slot of its own right before it is sent.
            let pace = || async {
                match limiter.acquire_within(RequestKind::Read, PLAN_WAIT).await {
                    Decision::Now => {}
                    Decision::After(wait) => tokio::time::sleep(wait).await,
                    // Busier than PLAN_WAIT: wait that long, then go (it is two reads per login).
                    Decision::Refuse(wait) => tokio::time::sleep(wait.min(PLAN_WAIT)).await,
                }
            };
            let plan = self
                .tokens
                .auth()
                .organization_plan(&token, settings.organization_uid.as_deref(), pace)
                .await;
            drop(token);
            let plan = match plan {
                Ok(plan) => {
                    tracing::info!(profile = %profile.name, organization = %plan.organization_uid, reads = plan.reads, writes = plan.writes, bulk = plan.bulk, "using the organization's plan limits");
                    Some(PlanLimits {
                        organization_uid: plan.organization_uid,
                        reads: plan.reads,
                        writes: plan.writes,
                        bulk: plan.bulk,
                    })
                }
                Err(e) => {
                    tracing::warn!(profile = %profile.name, "cannot read the organization's plan limits; using Contentstack's defaults (10 reads/s, 10 writes/s, 1 bulk call/s) until the next login: {}", crate::error_text::error_chain_text(&e));
                    None
                }
            };
            limiter.learn(plan.as_ref());
            learned.insert(
                profile.name.clone(),
                (Arc::downgrade(&limiter), fingerprint),
            );
        }
    }
}
