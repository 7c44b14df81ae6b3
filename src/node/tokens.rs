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

#[derive(Clone, Debug)]
struct CachedToken {
    token: String,
    expires: jiff::Timestamp,
    ttl_secs: i64,
}

impl CachedToken {
    /// When the kubelet's rule says to refresh: at 80 % of the TTL, or 24 h
    /// after issue, whichever comes first.
    fn refresh_at(&self) -> jiff::Timestamp {
        let exp = self.expires.as_second();
        let iat = exp - self.ttl_secs;
        let at = (iat + 24 * 3600).min(exp - self.ttl_secs * 20 / 100);
        jiff::Timestamp::from_second(at).unwrap_or(self.expires)
    }

    fn needs_refresh(&self, now: jiff::Timestamp) -> bool {
        now.as_second() > self.refresh_at().as_second()
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
            let ttl = tr.spec.and_then(|s| s.expiration_seconds).unwrap_or(3600);
            let expires = status.expiration_timestamp.map(|t| t.0).unwrap_or_else(|| {
                jiff::Timestamp::from_second(now.as_second() + ttl).unwrap_or(now)
            });
            cache.tokens.lock().expect("token cache").insert(
                key,
                CachedToken {
                    token: token.clone(),
                    expires,
                    ttl_secs: ttl,
                },
            );
            Ok(token)
        }
        Err(e) => match cached {
            Some(c) if c.expires > now => {
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

    #[test]
    fn refresh_at_80_percent() {
        let now = jiff::Timestamp::now();
        let t = |secs_left: i64, ttl: i64| CachedToken {
            token: String::new(),
            expires: jiff::Timestamp::from_second(now.as_second() + secs_left).unwrap(),
            ttl_secs: ttl,
        };
        assert!(!t(3600, 3607).needs_refresh(now));
        assert!(!t(800, 3600).needs_refresh(now));
        assert!(t(700, 3600).needs_refresh(now));
        assert!(t(100, 600).needs_refresh(now));
        assert!(!t(500, 600).needs_refresh(now));
        // Tokens older than 24 h are refreshed whatever their TTL.
        assert!(t(365 * 86400 - 25 * 3600, 365 * 86400).needs_refresh(now));
    }

    #[test]
    fn next_refresh_is_the_earliest() {
        let cache = TokenCache::default();
        assert_eq!(cache.next_refresh(), None);
        let now = jiff::Timestamp::now().as_second();
        for (key, secs_left, ttl) in [("a/token", 3600, 3600), ("b/token", 600, 600)] {
            cache.tokens.lock().unwrap().insert(
                key.into(),
                CachedToken {
                    token: String::new(),
                    expires: jiff::Timestamp::from_second(now + secs_left).unwrap(),
                    ttl_secs: ttl,
                },
            );
        }
        // b: issued now, 600 s TTL -> due 480 s from now.
        assert_eq!(cache.next_refresh().unwrap().as_second(), now + 480);
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
