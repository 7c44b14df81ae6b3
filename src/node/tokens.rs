//! Projected ServiceAccount tokens: a TokenRequest bound to the Pod (its
//! name and UID), with the projection's audience and `expirationSeconds`,
//! cached per Pod and refreshed at 80 % of its lifetime or after 24 h, as
//! the kubelet's token manager does.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount, ServiceAccountTokenProjection};
use kube::Api;
use kube::api::PostParams;

/// A projected token that could not be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TokenRequest failed and no unexpired token is cached.
    #[error("failed to fetch token")]
    Fetch(#[source] kube::Error),
    /// The API server answered the TokenRequest without a status or token.
    #[error("the token request returned no {0}")]
    Empty(&'static str),
}

/// A token and when this node received it. Its age is counted on the
/// node's clock from that moment, not from the API server's timestamps: a
/// node clock ahead of or behind the API server's (or one that jumped
/// forward) then neither refreshes a token at every look nor keeps one past
/// its time.
#[derive(Clone, Debug)]
struct CachedToken {
    token: String,
    /// When the node received it (the node's clock).
    received: jiff::Timestamp,
    ttl_secs: i64,
}

impl CachedToken {
    /// When the kubelet's rule says to refresh: at 80 % of the TTL, or 24 h
    /// after issue, whichever comes first.
    fn refresh_at(&self) -> jiff::Timestamp {
        let iat = self.received.as_second();
        let at = (iat + 24 * 3600).min(iat + self.ttl_secs - self.ttl_secs * 20 / 100);
        jiff::Timestamp::from_second(at).unwrap_or(self.received)
    }

    fn needs_refresh(&self, now: jiff::Timestamp) -> bool {
        now.as_second() > self.refresh_at().as_second()
    }

    /// Not expired yet (by the node's clock).
    fn valid(&self, now: jiff::Timestamp) -> bool {
        now.as_second() < self.received.as_second() + self.ttl_secs
    }
}

/// Per-pod token cache: key is `volume/path`.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, CachedToken>>,
}

impl TokenCache {
    /// The earliest time a cached token is due for a refresh.
    pub fn next_refresh(&self) -> Option<jiff::Timestamp> {
        let tokens = self.tokens.lock().expect("token cache");
        tokens.values().map(CachedToken::refresh_at).min()
    }

    /// Whether a cached token is due for a refresh at `now`.
    pub fn due(&self, now: jiff::Timestamp) -> bool {
        let tokens = self.tokens.lock().expect("token cache");
        tokens.values().any(|t| t.needs_refresh(now))
    }
}

/// The token for projection `tp` of volume `vol`: the cached one while it is
/// fresh, else a new TokenRequest. A failed refresh keeps a token that has
/// not expired yet, as the kubelet does.
pub async fn token(
    client: &kube::Client,
    pod: &Pod,
    cache: &TokenCache,
    vol: &str,
    tp: &ServiceAccountTokenProjection,
) -> Result<String, Error> {
    let key = format!("{vol}/{}", tp.path);
    let now = jiff::Timestamp::now();
    let cached = cache.tokens.lock().expect("token cache").get(&key).cloned();
    if let Some(c) = cached.as_ref().filter(|c| !c.needs_refresh(now)) {
        return Ok(c.token.clone());
    }
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    match api
        .create_token_request(&sa, &PostParams::default(), &request(pod, tp))
        .await
    {
        Ok(tr) => {
            let status = tr.status.ok_or(Error::Empty("status"))?;
            let token = status.token.ok_or(Error::Empty("token"))?;
            // The TTL the API server granted (it may shorten the request).
            let ttl = tr.spec.and_then(|s| s.expiration_seconds).unwrap_or(3600);
            cache.tokens.lock().expect("token cache").insert(
                key,
                CachedToken {
                    token: token.clone(),
                    received: jiff::Timestamp::now(),
                    ttl_secs: ttl,
                },
            );
            Ok(token)
        }
        Err(e) => match cached {
            Some(c) if c.valid(now) => {
                tracing::warn!(pod = ?pod.metadata.name, error = %crate::node::error_text(&e), "token refresh failed; keeping the current token");
                Ok(c.token)
            }
            _ => Err(Error::Fetch(e)),
        },
    }
}

/// The TokenRequest the kubelet sends for a projection: bound to the Pod.
fn request(pod: &Pod, tp: &ServiceAccountTokenProjection) -> TokenRequest {
    let audiences: Vec<String> = tp
        .audience
        .iter()
        .filter(|a| !a.is_empty())
        .cloned()
        .collect();
    TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: (!audiences.is_empty()).then_some(audiences),
            expiration_seconds: Some(tp.expiration_seconds.unwrap_or(3600)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token received `age` seconds before `now`, with `ttl` seconds.
    fn received(now: jiff::Timestamp, age: i64, ttl: i64) -> CachedToken {
        CachedToken {
            token: String::new(),
            received: jiff::Timestamp::from_second(now.as_second() - age).unwrap(),
            ttl_secs: ttl,
        }
    }

    #[test]
    fn refresh_at_80_percent() {
        let now = jiff::Timestamp::now();
        let t = |age, ttl| received(now, age, ttl);
        assert!(!t(7, 3607).needs_refresh(now));
        assert!(!t(2800, 3600).needs_refresh(now));
        assert!(t(2900, 3600).needs_refresh(now));
        assert!(t(500, 600).needs_refresh(now));
        assert!(!t(100, 600).needs_refresh(now));
        // Tokens older than 24 h are refreshed whatever their TTL.
        assert!(t(25 * 3600, 365 * 86400).needs_refresh(now));
        assert!(!t(23 * 3600, 365 * 86400).needs_refresh(now));
    }

    #[test]
    fn a_jump_forward_makes_a_token_due_and_a_fresh_one_is_not() {
        let now = jiff::Timestamp::now();
        let cache = TokenCache::default();
        cache
            .tokens
            .lock()
            .unwrap()
            .insert("v/token".into(), received(now, 60, 3607));
        assert!(!cache.due(now));
        // The node's clock jumps two hours forward: due, and expired by
        // the node's clock.
        let later = jiff::Timestamp::from_second(now.as_second() + 7200).unwrap();
        assert!(cache.due(later));
        assert!(!received(now, 60, 3607).valid(later));
        // The token fetched then is counted from when it arrived, whatever
        // the API server's clock says: not due again at once.
        let fresh = CachedToken {
            received: later,
            ..received(now, 0, 3607)
        };
        assert!(!fresh.needs_refresh(later) && fresh.valid(later));
    }

    #[test]
    fn next_refresh_is_the_earliest() {
        let cache = TokenCache::default();
        assert_eq!(cache.next_refresh(), None);
        let now = jiff::Timestamp::now();
        for (key, ttl) in [("a/token", 3600), ("b/token", 600)] {
            cache
                .tokens
                .lock()
                .unwrap()
                .insert(key.into(), received(now, 0, ttl));
        }
        // b: received now, 600 s TTL -> due 480 s from now.
        assert_eq!(
            cache.next_refresh().unwrap().as_second(),
            now.as_second() + 480
        );
    }

    #[test]
    fn the_request_is_bound_to_the_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u-1"}, "spec": {"containers": []}
        }))
        .unwrap();
        let tp = ServiceAccountTokenProjection {
            audience: Some("vault".into()),
            expiration_seconds: Some(600),
            path: "token".into(),
            ..Default::default()
        };
        let spec = request(&pod, &tp).spec.unwrap();
        assert_eq!(spec.audiences, Some(vec!["vault".to_string()]));
        assert_eq!(spec.expiration_seconds, Some(600));
        let bound = spec.bound_object_ref.unwrap();
        assert_eq!(
            (
                bound.kind.as_deref(),
                bound.name.as_deref(),
                bound.uid.as_deref()
            ),
            (Some("Pod"), Some("p"), Some("u-1"))
        );
    }
}
