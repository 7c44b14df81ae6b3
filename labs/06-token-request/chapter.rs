//! Chapter 6, the runner's side. The TokenRequest API used directly, as
//! `kubectl create token` does: who may mint (token-minter's lab, before
//! and after a Role), what the API server does with `--duration` and
//! `--audience`, and tokens bound to a Pod, a Secret and a Node, used
//! before and after each object is deleted. Then a service's view
//! (token-reviewer's lab): TokenReview, which needs `system:auth-delegator`,
//! and offline verification with the issuer's keys, which still accepts a
//! token whose Pod is gone.
//!
//! The API server caches a successful token check for 10 s, so every row
//! that uses a token uses one no earlier row used.

use std::collections::BTreeMap;

use http_body_util::BodyExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::ResourceAttributes;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::ResourceExt as _;
use kube::api::{Api, PostParams};

use crate::chapters::kit::{
    self, COURSE_LABEL, Error, LabRun, PRODUCTION, RunContext, delete_and_wait, probe_row, row, word,
};
use crate::chapters::Row;

kit::chapter! { 6, "06-token-request", "Tokens on demand";
    NAMESPACE = "00-namespace.yaml",
    SERVICEACCOUNTS = "01-serviceaccounts.yaml",
    POD_APP = "02-pod-app.yaml",
    POD_MINTER = "03-pod-minter.yaml",
    MINT_ROLE = "04-mint-role.yaml",
    POD_REVIEWER = "05-pod-reviewer.yaml",
    AUTH_DELEGATOR = "06-auth-delegator.yaml",
    BOUND_OBJECTS = "07-bound-objects.yaml";
    exercises:
    MINT_ONE = "06-mint-one" => ["rbac.yaml", "serviceaccounts.yaml"],
    REVIEWER = "06-reviewer" => ["rbac.yaml", "serviceaccounts.yaml"],
    PREDICT = "06-predict" => ["predictions.yaml"],
}

const APP: &str = "pod-manager";
const MINTER: &str = "token-minter";
const REVIEWER: &str = "token-reviewer";
/// The Secret the runner hands tokens over in (05-pod-reviewer.yaml).
const HANDED_OVER: &str = "tokens-to-review";
/// The API server's minimum token lifetime (API validation).
const MIN_SECONDS: i64 = 600;

async fn run(cx: &RunContext) -> Result<Vec<Row>, Error> {
    use manifests::*;
    let mint = mint_attrs();
    let review = kit::attrs("create", "authentication.k8s.io", "tokenreviews", "");
    let mut rows = Vec::new();

    cx.apply(&[NAMESPACE, SERVICEACCOUNTS, BOUND_OBJECTS]).await?;
    cx.wait_namespace(PRODUCTION, &[APP, MINTER, REVIEWER]).await?;
    cx.wait_authorizer(PRODUCTION, MINTER, &mint, false).await?;
    cx.wait_authorizer(PRODUCTION, REVIEWER, &review, false).await?;

    // Before any grant: the application runs, token-minter tries to mint,
    // and token-reviewer (handed a vault token) tries TokenReview.
    let vault = spec(&["vault"], None);
    hand_over(cx, &[("vault", cx.token(PRODUCTION, APP, vault.clone()).await?)]).await?;
    let runs = cx.run_pods(&[POD_APP, POD_MINTER, POD_REVIEWER]).await?;
    let (app, before) = (&runs[0].pod, &runs[2]);
    rows.extend(mint_rows("before", &runs[1]));
    rows.push(probe_row("review.before", REVIEWER, before.report.row("vault.review")));
    rows.extend(discovery_rows(before));

    // What `kubectl create token` asks for, and what it gets.
    let issuer = fact(before, "issuer");
    rows.extend(request_rows(cx, &issuer).await?);

    // Tokens bound to objects, two each: one used now, one once the
    // object is gone.
    let session = get(&Api::<Secret>::namespaced(cx.client.clone(), PRODUCTION), "session").await?;
    let node = get(&Api::<Node>::all(cx.client.clone()), "sa-lab-token-node").await?;
    let objects = [
        ("pod", reference("Pod", app)),
        ("secret", reference("Secret", &session)),
        ("node", reference("Node", &node)),
    ];
    let mut later = Vec::new();
    for (what, r) in &objects {
        let bound = spec(&[], Some(r.clone()));
        let now = cx.token(PRODUCTION, APP, bound.clone()).await?;
        later.push((*what, cx.token(PRODUCTION, APP, bound).await?));
        let id = format!("bound.{what}.live");
        rows.push(cx.use_token(&id, APP, &now, &format!("{} exists", describe(r))).await?);
    }
    // The vault tokens the reviewer gets next, bound to the Pod `app`.
    let pod_vault = spec(&["vault"], Some(objects[0].1.clone()));
    let [live, live_no_aud, after_deletion] = [
        cx.token(PRODUCTION, APP, pod_vault.clone()).await?,
        cx.token(PRODUCTION, APP, pod_vault.clone()).await?,
        cx.token(PRODUCTION, APP, pod_vault).await?,
    ];

    // The grants: token-minter may mint pod-manager's tokens;
    // token-reviewer may call TokenReview.
    cx.apply(&[MINT_ROLE, AUTH_DELEGATOR]).await?;
    cx.wait_authorizer(PRODUCTION, MINTER, &mint, true).await?;
    cx.wait_authorizer(PRODUCTION, REVIEWER, &review, true).await?;
    hand_over(cx, &[("vault", live), ("vault-no-aud", live_no_aud)]).await?;
    let runs = cx.run_pods(&[POD_MINTER, POD_REVIEWER]).await?;
    rows.extend(mint_rows("after", &runs[0]));
    rows.extend(review_rows(&runs[1]));

    // Each bound object goes away; its second token is used.
    cx.delete_pod(PRODUCTION, &app.name_any()).await?;
    let secrets: Api<Secret> = Api::namespaced(cx.client.clone(), PRODUCTION);
    delete_and_wait(&secrets, "session", cx.timeout).await?;
    let nodes: Api<Node> = Api::all(cx.client.clone());
    delete_and_wait(&nodes, "sa-lab-token-node", cx.timeout).await?;
    for ((what, r), (_, token)) in objects.iter().zip(&later) {
        let id = format!("bound.{what}.deleted");
        let context = format!("{} was deleted", describe(r));
        rows.push(cx.use_token(&id, APP, token, &context).await?);
    }

    // The reviewer, handed a token whose Pod is gone.
    hand_over(cx, &[("vault", after_deletion)]).await?;
    let runs = cx.run_pods(&[POD_REVIEWER]).await?;
    let after = &runs[0];
    rows.push(offline_row("after.offline", after, "vault.offline"));
    rows.push(reviewed("after.review", after, "vault.review"));
    Ok(rows)
}

/// `create serviceaccounts/token` on pod-manager in production.
fn mint_attrs() -> ResourceAttributes {
    ResourceAttributes {
        subresource: Some("token".into()),
        name: Some(APP.into()),
        ..kit::attrs("create", "", "serviceaccounts", PRODUCTION)
    }
}

/// A TokenRequest for `audiences` (empty: the API server's), 10 minutes,
/// bound to `bound` if given.
fn spec(audiences: &[&str], bound: Option<BoundObjectReference>) -> TokenRequestSpec {
    TokenRequestSpec {
        audiences: (!audiences.is_empty()).then(|| audiences.iter().map(|a| a.to_string()).collect()),
        expiration_seconds: Some(MIN_SECONDS),
        bound_object_ref: bound,
        ..Default::default()
    }
}

/// A reference to `obj` (with its UID) for `--bound-object-kind`.
fn reference<K: kube::Resource>(kind: &str, obj: &K) -> BoundObjectReference {
    BoundObjectReference {
        api_version: Some("v1".into()),
        kind: Some(kind.into()),
        name: obj.meta().name.clone(),
        uid: obj.meta().uid.clone(),
    }
}

fn describe(r: &BoundObjectReference) -> String {
    format!(
        "{} {}",
        r.kind.as_deref().unwrap_or_default(),
        r.name.as_deref().unwrap_or_default()
    )
}

async fn get<K>(api: &Api<K>, name: &str) -> Result<K, Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    api.get(name).await.map_err(|source| Error::Api {
        action: format!("reading {} {name}", K::kind(&())),
        source,
    })
}

/// Hand `tokens` to the reviewer: the Secret its Pod mounts, written anew
/// (a Pod reads it when it starts).
async fn hand_over(cx: &RunContext, tokens: &[(&str, String)]) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(cx.client.clone(), PRODUCTION);
    delete_and_wait(&api, HANDED_OVER, cx.timeout).await?;
    let (key, value) = COURSE_LABEL.split_once('=').unwrap_or_default();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(HANDED_OVER.into()),
            labels: Some(BTreeMap::from([
                (key.to_string(), value.to_string()),
                ("sa-lab.dev/chapter".into(), "06".into()),
            ])),
            ..Default::default()
        },
        data: Some(
            tokens
                .iter()
                .map(|(k, t)| (k.to_string(), ByteString(t.clone().into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    api.create(&PostParams::default(), &secret)
        .await
        .map_err(|source| Error::Api {
            action: format!("creating Secret {PRODUCTION}/{HANDED_OVER}"),
            source,
        })?;
    Ok(())
}

/// The minter's two TokenRequests in `phase`.
fn mint_rows(phase: &str, run: &LabRun) -> Vec<Row> {
    ["mint-pod-manager", "mint-self"]
        .iter()
        .map(|id| probe_row(format!("{phase}.{id}"), MINTER, run.report.row(id)))
        .collect()
}

fn fact(run: &LabRun, key: &str) -> String {
    match run.report.facts.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "(not reported)".into(),
    }
}

/// The issuer's discovery document and keys, as token-reviewer read them.
fn discovery_rows(run: &LabRun) -> Vec<Row> {
    let r = &run.report;
    let issuer = fact(run, "issuer");
    let iss = fact(run, "vault.iss");
    let actual = if !issuer.is_empty() && issuer == iss {
        "the tokens' iss".to_string()
    } else {
        format!("{issuer:?} (tokens say {iss})")
    };
    let mut anonymous = probe_row("discovery.jwks-anonymous", "system:anonymous", r.row("jwks-anonymous"));
    if anonymous.actual == "forbidden" && !anonymous.message.contains("system:anonymous") {
        anonymous.actual = "forbidden (not as system:anonymous)".into();
    }
    vec![
        probe_row("discovery.document", REVIEWER, r.row("discovery")),
        row("discovery.issuer", REVIEWER, actual, format!("issuer {issuer}")),
        probe_row("discovery.jwks", REVIEWER, r.row("jwks")),
        anonymous,
    ]
}

/// A TokenReview the reviewer made, read from its report: the call's
/// outcome if it was refused, else whether the token was authenticated.
fn reviewed(id: &str, run: &LabRun, key: &str) -> Row {
    let mut r = probe_row(id, REVIEWER, run.report.row(key));
    let seen = run.report.facts.get(key).cloned().unwrap_or_default();
    if r.actual == "allowed" {
        let ok = seen["authenticated"].as_bool() == Some(true);
        r.actual = if ok { "authenticated" } else { "not authenticated" }.into();
        r.message = if ok {
            format!(
                "user {}, audiences {}",
                seen["user"].as_str().unwrap_or_default(),
                seen["audiences"]
            )
        } else {
            seen["error"].as_str().unwrap_or_default().to_string()
        };
    }
    r
}

/// The reviewer's checks of tokens bound to the live Pod `app`.
fn review_rows(run: &LabRun) -> Vec<Row> {
    let seen = run.report.facts.get("vault.review").cloned().unwrap_or_default();
    let pod = seen["pod"]
        .as_array()
        .map(|p| p.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    vec![
        reviewed("review.vault", run, "vault.review"),
        row(
            "review.vault.user",
            REVIEWER,
            seen["user"].as_str().unwrap_or("(none)"),
            "status.user.username",
        ),
        row(
            "review.vault.pod",
            REVIEWER,
            if pod.is_empty() { "(none)" } else { &pod },
            "status.user.extra[authentication.kubernetes.io/pod-name]",
        ),
        reviewed("review.no-audiences", run, "vault-no-aud.review-no-aud"),
        offline_row("offline.live", run, "vault.offline"),
        offline_row("offline.corrupted", run, "vault.offline-corrupted"),
        offline_row("offline.wrong-audience", run, "vault.offline-api-aud"),
    ]
}

/// An offline verification the reviewer made: `ok` or why not.
fn offline_row(id: &str, run: &LabRun, key: &str) -> Row {
    let seen = fact(run, key);
    let actual = if seen == "ok" {
        "authenticated"
    } else {
        "not authenticated"
    };
    let message = if seen == "ok" {
        "signature (JWKS), iss, aud and exp check out".to_string()
    } else {
        format!("jsonwebtoken: {seen}")
    };
    row(id, REVIEWER, actual, message)
}

/// What a TokenRequest got: status, token, the server's message and its
/// warnings (the API server says so when it shortens a token).
struct Minted {
    status: u16,
    token: Option<String>,
    message: String,
    warnings: String,
}

// ANCHOR: create-token
/// `kubectl create token pod-manager -n production --duration=<seconds>s`:
/// a TokenRequest, sent as is so the answer's warnings can be read.
async fn create_token(cx: &RunContext, seconds: i64) -> Result<Minted, Error> {
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(seconds),
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = format!("/api/v1/namespaces/{PRODUCTION}/serviceaccounts/{APP}/token");
    let body = serde_json::to_vec(&req).map_err(|e| Error::Unexpected(e.to_string()))?;
    let req = http::Request::post(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(kube::client::Body::from(body))
        .map_err(|e| Error::Unexpected(e.to_string()))?;
    // ANCHOR_END: create-token
    let res = cx.client.send(req).await.map_err(|source| Error::Api {
        action: format!("requesting a {seconds} s token for {APP}"),
        source,
    })?;
    let status = res.status().as_u16();
    let warnings = res
        .headers()
        .get_all(http::header::WARNING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ");
    let bytes = res
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    Ok(Minted {
        status,
        token: v["status"]["token"].as_str().map(str::to_owned),
        message: v["message"].as_str().unwrap_or_default().to_string(),
        warnings,
    })
}

/// `exp - iat` of a token, in seconds.
fn lifetime(token: &str) -> i64 {
    let c = lab_kit::jwt::decode_payload(token).unwrap_or_default();
    c["exp"].as_i64().unwrap_or_default() - c["iat"].as_i64().unwrap_or_default()
}

/// `--duration` below the minimum, at it, and above the server's
/// maximum; `--audience` left out and set; and each kind of token used
/// against the API server.
async fn request_rows(cx: &RunContext, issuer: &str) -> Result<Vec<Row>, Error> {
    let mut rows = Vec::new();
    let as_row = |id: &str, m: &Minted| {
        let actual = word(m.status).to_string();
        Row {
            verb: "create".into(),
            resource: "serviceaccounts".into(),
            subresource: "token".into(),
            namespace: PRODUCTION.into(),
            name: APP.into(),
            status: Some(m.status),
            ..row(id, "admin", actual, m.message.clone())
        }
    };
    let short = create_token(cx, MIN_SECONDS - 1).await?;
    rows.push(as_row("request.duration-599s", &short));
    let min = create_token(cx, MIN_SECONDS).await?;
    rows.push(as_row("request.duration-10m", &min));
    let min_token = min.token.clone().unwrap_or_default();
    rows.push(row(
        "request.duration-10m.lifetime",
        "admin",
        format!("{} s", lifetime(&min_token)),
        "exp - iat of the token",
    ));
    let long = create_token(cx, 48 * 3600).await?;
    let granted = long.token.as_deref().map(lifetime).unwrap_or_default();
    let message = if long.warnings.is_empty() {
        "no warning".to_string()
    } else {
        format!("warning: {}", long.warnings)
    };
    rows.push(row("request.duration-48h.lifetime", "admin", format!("{granted} s"), message));

    let aud = |token: &str| -> Vec<String> {
        lab_kit::jwt::decode_payload(token)
            .ok()
            .and_then(|c| serde_json::from_value(c["aud"].clone()).ok())
            .unwrap_or_default()
    };
    let default_aud = aud(&min_token);
    let actual = if default_aud == [issuer] {
        "the issuer's URL".to_string()
    } else {
        format!("{default_aud:?}")
    };
    rows.push(row("request.aud-default", "admin", actual, format!("aud {default_aud:?}")));
    let vault = cx.token(PRODUCTION, APP, spec(&["vault"], None)).await?;
    let vault_aud = aud(&vault);
    rows.push(row("request.aud-vault", "admin", vault_aud.join(","), format!("aud {vault_aud:?}")));

    // Each token once against the API server.
    rows.push(cx.use_token("review.api-token-api", APP, &min_token, "no --audience").await?);
    rows.push(cx.use_token("review.vault-token-api", APP, &vault, "--audience=vault").await?);
    Ok(rows)
}
