//! What `sa-lab check` asks an exercise's probe Pod to observe, passed in
//! the Pod's environment ([`ASKS_ENV`], JSON): API requests made as the
//! Pod's ServiceAccount (or with a token file the Pod holds), "who am I",
//! whether a file is there, and claims of a token. The probe lab
//! (`lab-exercise-probe`) answers each in its report: requests as rows,
//! everything else as facts under the ask's id.

use serde::{Deserialize, Serialize};

use crate::probe::Probe;

/// The environment variable holding the asks, as a JSON array.
pub const ASKS_ENV: &str = "SA_LAB_ASKS";

/// The cluster's CA bundle (PEM) that `check` gives the probe, so a
/// request with a token file reaches the API server even where the Pod
/// mounts no `ca.crt` (a Vault token needs none). CA certificates are
/// public.
pub const CA_ENV: &str = "SA_LAB_CA";

/// In a request's `name`: the probe Pod's own name (`POD_NAME`).
pub const SELF_NAME: &str = "$self";

/// One thing to observe, under a stable id.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Ask {
    /// The row or fact id in the report.
    pub id: String,
    /// What to observe.
    #[serde(flatten)]
    pub what: What,
}

/// What an [`Ask`] observes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum What {
    /// An API request, answered as a probe row (allowed, forbidden...). With
    /// `token`, it is sent with the token in that file (trusting the CA of
    /// [`CA_ENV`], else the `ca.crt` next to it, else the mounted one)
    /// instead of the Pod's own credential, and the authorizer is not asked.
    Request {
        /// The request's RBAC attributes.
        #[serde(flatten)]
        request: Request,
        /// A token file to send instead of the mounted token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// The username a SelfSubjectReview returns, through in-cluster config
    /// (fact: the username, or `error: ...`).
    Whoami,
    /// Whether `path` exists (fact: `present` or `absent`).
    File {
        /// The file.
        path: String,
    },
    /// A claim of the JWT in `path` (fact: `aud` as its values joined by
    /// `, `, `ttl` as `exp - iat` in seconds, a JSON pointer such as
    /// `/kubernetes.io/pod/name` as what it points at, any other claim as
    /// written).
    Claim {
        /// The token file.
        path: String,
        /// The claim: `aud`, `ttl`, `sub`...
        claim: String,
    },
}

/// The RBAC attributes of a request (see [`Probe`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Request {
    /// get, list, create, update, patch, delete.
    pub verb: String,
    /// API group, "" for core.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// API version (`v1` if empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Resource, plural.
    pub resource: String,
    /// Subresource (`log`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subresource: String,
    /// Namespace, "" for cluster scope.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Object name; [`SELF_NAME`] is the Pod's own.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The body of a create (a TokenRequest, a TokenReview...), sent as
    /// JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
}

impl Request {
    /// The probe for this request, `pod` standing in for [`SELF_NAME`].
    pub fn probe(&self, id: &str, pod: &str) -> Probe {
        let version = if self.version.is_empty() {
            "v1"
        } else {
            &self.version
        };
        let name = if self.name == SELF_NAME {
            pod
        } else {
            &self.name
        };
        let probe = Probe::new(id, &self.verb, &self.resource)
            .group(&self.group, version)
            .ns(&self.namespace)
            .name(name)
            .subresource(&self.subresource);
        match &self.body {
            Some(b) => probe.body(b.clone()),
            None => probe,
        }
    }
}

/// The asks in `text` (the value of [`ASKS_ENV`]).
pub fn parse(text: &str) -> Result<Vec<Ask>, serde_json::Error> {
    serde_json::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_round_trip_as_flat_json() {
        let asks = vec![
            Ask {
                id: "list-pods".into(),
                what: What::Request {
                    request: Request {
                        verb: "get".into(),
                        resource: "pods".into(),
                        subresource: "log".into(),
                        namespace: "shop".into(),
                        name: SELF_NAME.into(),
                        ..Request::default()
                    },
                    token: None,
                },
            },
            Ask {
                id: "aud".into(),
                what: What::Claim {
                    path: "/t".into(),
                    claim: "aud".into(),
                },
            },
            Ask {
                id: "me".into(),
                what: What::Whoami,
            },
        ];
        let text = serde_json::to_string(&asks).unwrap();
        assert!(text.contains(r#"{"id":"me","kind":"whoami"}"#), "{text}");
        assert!(text.contains(r#""kind":"request","verb":"get""#), "{text}");
        assert_eq!(parse(&text).unwrap(), asks);
        let What::Request { request, .. } = &asks[0].what else {
            unreachable!()
        };
        let p = request.probe("list-pods", "probe-reporter");
        assert_eq!(p.path(), "/api/v1/namespaces/shop/pods/probe-reporter/log");
    }
}
