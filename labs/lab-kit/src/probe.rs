//! One API call, described by the attributes RBAC decides on, and its
//! outcome: allowed (2xx), forbidden (403), unauthorized (401) or error.

use http_body_util::BodyExt as _;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};

use crate::report::ProbeRow;

/// How the API server answered.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// 2xx: authenticated and authorised.
    Allowed,
    /// 403: authenticated, but RBAC said no.
    Forbidden,
    /// 401: the server does not know who you are.
    Unauthorized,
    /// 422: the request was understood and refused as invalid.
    Invalid,
    /// 404: no such object (or API).
    #[serde(rename = "not found")]
    NotFound,
    /// 409: the object exists, or changed meanwhile.
    Conflict,
    /// Anything else, including "no credentials at all".
    Error,
}

// ANCHOR: classify
impl Outcome {
    /// 401 means "who are you?", 403 means "you may not".
    pub fn from_status(code: u16) -> Outcome {
        match code {
            200..=299 => Outcome::Allowed,
            401 => Outcome::Unauthorized,
            403 => Outcome::Forbidden,
            404 => Outcome::NotFound,
            409 => Outcome::Conflict,
            422 => Outcome::Invalid,
            _ => Outcome::Error,
        }
    }
}
// ANCHOR_END: classify

impl Outcome {
    /// The lower-case word used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Forbidden => "forbidden",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Invalid => "invalid",
            Outcome::NotFound => "not found",
            Outcome::Conflict => "conflict",
            Outcome::Error => "error",
        }
    }

    /// Parse the lower-case word back.
    pub fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "allowed" => Outcome::Allowed,
            "forbidden" => Outcome::Forbidden,
            "unauthorized" => Outcome::Unauthorized,
            "invalid" => Outcome::Invalid,
            "not found" => Outcome::NotFound,
            "conflict" => Outcome::Conflict,
            "error" => Outcome::Error,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Outcome, HTTP status and message of a typed kube-rs call.
///
/// `Err(kube::Error::Api(s))` carries the server's status code and message;
/// anything else (no token file, connection refused) is an `error`.
pub fn classify<T>(res: &Result<T, kube::Error>) -> (Outcome, Option<u16>, String) {
    match res {
        Ok(_) => (Outcome::Allowed, None, String::new()),
        Err(kube::Error::Api(s)) => (
            Outcome::from_status(s.code),
            Some(s.code),
            s.message.clone(),
        ),
        Err(e) => (Outcome::Error, None, e.to_string()),
    }
}

/// One API request, described by its RBAC attributes.
///
/// Mutating verbs (`create`, `update`, `patch`, `delete`) are always sent
/// with `dryRun=All`, so a probe never changes the cluster.
#[derive(Clone, Debug, Default)]
pub struct Probe {
    /// Stable id, used by the expected tables and the tests.
    pub id: String,
    /// RBAC verb: get, list, create, update, patch, delete.
    pub verb: String,
    /// API group, "" for the core group.
    pub group: String,
    /// API version (v1 unless set).
    pub version: String,
    /// Resource (plural), e.g. `pods`.
    pub resource: String,
    /// Subresource, e.g. `log`, or "".
    pub subresource: String,
    /// Namespace, "" for cluster scope.
    pub namespace: String,
    /// Object name, "" for collections.
    pub name: String,
    /// Request body for create/update/patch.
    pub body: Option<serde_json::Value>,
}

impl Probe {
    /// A probe of `verb` on core-group `resource`.
    pub fn new(id: &str, verb: &str, resource: &str) -> Probe {
        Probe {
            id: id.into(),
            verb: verb.into(),
            version: "v1".into(),
            resource: resource.into(),
            ..Probe::default()
        }
    }

    /// In API group `group`, version `version`.
    pub fn group(mut self, group: &str, version: &str) -> Probe {
        self.group = group.into();
        self.version = version.into();
        self
    }

    /// In namespace `ns`.
    pub fn ns(mut self, ns: &str) -> Probe {
        self.namespace = ns.into();
        self
    }

    /// On the object called `name`.
    pub fn name(mut self, name: &str) -> Probe {
        self.name = name.into();
        self
    }

    /// On a subresource (e.g. `log`).
    pub fn subresource(mut self, subresource: &str) -> Probe {
        self.subresource = subresource.into();
        self
    }

    /// With this request body (create/update/patch).
    pub fn body(mut self, body: serde_json::Value) -> Probe {
        self.body = Some(body);
        self
    }

    fn mutating(&self) -> bool {
        matches!(self.verb.as_str(), "create" | "update" | "patch" | "delete")
    }

    /// The HTTP method the verb maps to.
    pub fn method(&self) -> http::Method {
        match self.verb.as_str() {
            "create" => http::Method::POST,
            "update" => http::Method::PUT,
            "patch" => http::Method::PATCH,
            "delete" => http::Method::DELETE,
            _ => http::Method::GET,
        }
    }

    /// The request path (and query), e.g.
    /// `/api/v1/namespaces/production/pods?dryRun=All`.
    pub fn path(&self) -> String {
        let mut p = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        if !self.namespace.is_empty() {
            p.push_str(&format!("/namespaces/{}", self.namespace));
        }
        p.push('/');
        p.push_str(&self.resource);
        // A create names its object in the body, except on a subresource
        // of an existing one (`serviceaccounts/<name>/token`).
        let named = match self.verb.as_str() {
            "list" => false,
            "create" => !self.subresource.is_empty(),
            _ => true,
        };
        if !self.name.is_empty() && named {
            p.push('/');
            p.push_str(&self.name);
        }
        if !self.subresource.is_empty() {
            p.push('/');
            p.push_str(&self.subresource);
        }
        if self.mutating() {
            p.push_str("?dryRun=All");
        }
        p
    }

    fn request(&self) -> Result<http::Request<Vec<u8>>, http::Error> {
        let body = match &self.body {
            Some(b) => serde_json::to_vec(b).unwrap_or_default(),
            None if self.verb == "delete" => {
                br#"{"kind":"DeleteOptions","apiVersion":"v1","dryRun":["All"]}"#
                    .to_vec()
            }
            None => Vec::new(),
        };
        let ctype = if self.verb == "patch" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        http::Request::builder()
            .method(self.method())
            .uri(self.path())
            .header(http::header::CONTENT_TYPE, ctype)
            .header(http::header::ACCEPT, "application/json")
            .body(body)
    }

    /// A row with this probe's attributes and the given result.
    pub fn row(
        &self,
        actual: Outcome,
        status: Option<u16>,
        message: &str,
    ) -> ProbeRow {
        ProbeRow {
            id: self.id.clone(),
            verb: self.verb.clone(),
            group: self.group.clone(),
            resource: self.resource.clone(),
            subresource: self.subresource.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            actual,
            status,
            message: message.to_string(),
            authorizer: None,
            audit_id: None,
        }
    }

    /// Send the request with `client` and classify the answer. A Pod's
    /// own log asked for before the kubelet has told the API server its
    /// container runs (400 "is waiting to start", while this very
    /// container is running) is asked again, for up to 30 s: the API
    /// server answers from the Pod's status, which the kubelet updates
    /// after it starts the container.
    pub async fn run(&self, client: &Client) -> ProbeRow {
        let deadline =
            tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let row = self.send(client).await;
            let starting = self.subresource == "log"
                && row.status == Some(400)
                && row.message.contains("is waiting to start");
            if !starting || tokio::time::Instant::now() > deadline {
                return row;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    async fn send(&self, client: &Client) -> ProbeRow {
        let req = match self.request() {
            Ok(r) => r,
            Err(e) => return self.row(Outcome::Error, None, &e.to_string()),
        };
        let res = match client.send(req.map(kube::client::Body::from)).await {
            Ok(r) => r,
            Err(e) => return self.row(Outcome::Error, None, &e.to_string()),
        };
        let code = res.status().as_u16();
        let audit_id = audit_id(res.headers());
        let bytes = res
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        self.row(
            Outcome::from_status(code),
            Some(code),
            &message_of(code, &bytes),
        )
        .audited(audit_id)
    }

    /// Ask the authorizer (SelfSubjectAccessReview) about the same
    /// attributes: `Allowed` or `Forbidden`, or `Error` if it can't be asked.
    pub async fn ask_authorizer(&self, client: &Client) -> (Outcome, String) {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(self.attributes()),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
        match api.create(&PostParams::default(), &review).await {
            Ok(r) => {
                let st = r.status.unwrap_or_default();
                let o = if st.allowed {
                    Outcome::Allowed
                } else {
                    Outcome::Forbidden
                };
                (o, st.reason.unwrap_or_default())
            }
            Err(e) => (Outcome::Error, classify::<()>(&Err(e)).2),
        }
    }

    /// The RBAC attributes of this request.
    pub fn attributes(&self) -> ResourceAttributes {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        ResourceAttributes {
            verb: Some(self.verb.clone()),
            group: Some(self.group.clone()),
            version: opt(&self.version),
            resource: Some(self.resource.clone()),
            subresource: opt(&self.subresource),
            namespace: opt(&self.namespace),
            name: opt(&self.name),
            ..Default::default()
        }
    }

    /// [`Probe::run`], then record what the authorizer says in the row.
    pub async fn run_and_ask(&self, client: &Client) -> ProbeRow {
        let mut row = self.run(client).await;
        row.authorizer = Some(self.ask_authorizer(client).await.0);
        row
    }
}

/// The `Audit-Id` header of an API server's response, if it sent one.
pub fn audit_id(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("audit-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A short message for an HTTP answer: the `Status` message for errors,
/// the object kind (and item count for lists) for successes.
pub fn message_of(code: u16, body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if (200..300).contains(&code) {
        let kind = v["kind"].as_str().unwrap_or("");
        return match v["items"].as_array() {
            Some(items) => format!("{kind} with {} items", items.len()),
            None if kind.is_empty() => format!("HTTP {code}"),
            None => kind.to_string(),
        };
    }
    match v["message"].as_str() {
        Some(m) => m.to_string(),
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                format!("HTTP {code}")
            } else {
                crate::truncate(text, 200)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_from_status() {
        assert_eq!(Outcome::from_status(200), Outcome::Allowed);
        assert_eq!(Outcome::from_status(201), Outcome::Allowed);
        assert_eq!(Outcome::from_status(401), Outcome::Unauthorized);
        assert_eq!(Outcome::from_status(403), Outcome::Forbidden);
        assert_eq!(Outcome::from_status(404), Outcome::NotFound);
        assert_eq!(Outcome::from_status(422), Outcome::Invalid);
        for o in [
            Outcome::Allowed,
            Outcome::NotFound,
            Outcome::Conflict,
            Outcome::Error,
        ] {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
        assert_eq!(Outcome::from_status(500), Outcome::Error);
        assert_eq!(Outcome::parse("forbidden"), Some(Outcome::Forbidden));
        assert_eq!(Outcome::Unauthorized.to_string(), "unauthorized");
    }

    #[test]
    fn paths() {
        let p = Probe::new("a", "list", "pods").ns("production");
        assert_eq!(p.path(), "/api/v1/namespaces/production/pods");
        let p = Probe::new("b", "get", "pods")
            .ns("production")
            .name("x")
            .subresource("log");
        assert_eq!(p.path(), "/api/v1/namespaces/production/pods/x/log");
        let p = Probe::new("c", "list", "deployments")
            .group("apps", "v1")
            .ns("p");
        assert_eq!(p.path(), "/apis/apps/v1/namespaces/p/deployments");
        let p = Probe::new("d", "create", "pods").ns("p").name("ignored");
        assert_eq!(p.path(), "/api/v1/namespaces/p/pods?dryRun=All");
        assert_eq!(p.method(), http::Method::POST);
        let p = Probe::new("e", "delete", "pods").ns("p").name("x");
        assert_eq!(p.path(), "/api/v1/namespaces/p/pods/x?dryRun=All");
        let p = Probe::new("f", "list", "namespaces");
        assert_eq!(p.path(), "/api/v1/namespaces");
        let p = Probe::new("g", "create", "serviceaccounts")
            .ns("p")
            .name("worker")
            .subresource("token");
        assert_eq!(
            p.path(),
            "/api/v1/namespaces/p/serviceaccounts/worker/token?dryRun=All"
        );
    }

    #[test]
    fn messages() {
        let forbidden =
            br#"{"kind":"Status","message":"pods is forbidden: nope","code":403}"#;
        assert_eq!(message_of(403, forbidden), "pods is forbidden: nope");
        assert_eq!(message_of(401, b""), "HTTP 401");
        assert_eq!(
            message_of(200, br#"{"kind":"PodList","items":[{},{}]}"#),
            "PodList with 2 items"
        );
        let (o, s, m) = classify::<()>(&Ok(()));
        assert_eq!((o, s, m.as_str()), (Outcome::Allowed, None, ""));
    }
}
