//! Chapter 7, the runner's side: three legacy token Secrets for
//! pod-manager, filled by the token controller; a Pod that mounts one the
//! pre-1.22 way and uses it; the API server's last-used label; a token
//! marked invalid (refused until the label goes); a Secret deleted (its
//! token dies); finding what is left with a field selector; and what a
//! TokenRequest gives instead.
//!
//! A token's first successful check is cached by the API server for 10 s,
//! so every row that expects a refusal uses a token no earlier row used.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequestSpec, TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

use crate::chapters::kit::{self, Error, PRODUCTION, RunContext, delete_and_wait, probe_row, row};
use crate::chapters::Row;

kit::chapter! { 7, "07-legacy-tokens", "Legacy Secret tokens";
    NAMESPACE = "00-namespace.yaml",
    SERVICEACCOUNT = "01-serviceaccount.yaml",
    LEGACY_TOKEN = "02-legacy-token.yaml",
    MORE_TOKENS = "03-more-legacy-tokens.yaml",
    POD = "04-pod.yaml";
    exercises:
    RETIRE_LEGACY = "07-retire-legacy" => ["pod.yaml", "rbac.yaml", "serviceaccount.yaml", "token-secrets.yaml"],
    MARK_INVALID = "07-mark-invalid" => ["pod.yaml", "rbac.yaml", "serviceaccount.yaml", "token-secret.yaml"],
    PREDICT = "07-predict" => ["predictions.yaml"],
}

const WHO: &str = "pod-manager";
const LEGACY: &str = "pod-manager-token";
const MARKED: &str = "pod-manager-token-marked";
const DOOMED: &str = "pod-manager-token-doomed";
/// The labels the API server and the legacy token cleaner write.
const LAST_USED: &str = "kubernetes.io/legacy-token-last-used";
const INVALID_SINCE: &str = "kubernetes.io/legacy-token-invalid-since";
/// How long the API server may take to see a label change.
const SETTLE: Duration = Duration::from_secs(20);
/// A little more than the API server caches a token that passed its checks.
const AUTH_CACHE: Duration = Duration::from_secs(11);

async fn run(cx: &RunContext) -> Result<Vec<Row>, Error> {
    use manifests::*;
    let secrets: Api<Secret> = Api::namespaced(cx.client.clone(), PRODUCTION);
    cx.apply(&[NAMESPACE, SERVICEACCOUNT, LEGACY_TOKEN, MORE_TOKENS]).await?;
    cx.wait_namespace(PRODUCTION, &[WHO]).await?;
    let mut tokens = Vec::new();
    for name in [LEGACY, MARKED, DOOMED] {
        tokens.push(filled(cx, &secrets, name).await?);
    }
    let [legacy, marked, doomed] = [&tokens[0], &tokens[1], &tokens[2]];
    let keys: Vec<String> = legacy.data.iter().flatten().map(|(k, _)| k.clone()).collect();
    let mut rows = vec![row("filled.keys", "token controller", keys.join(", "), LEGACY)];
    let sas: Api<ServiceAccount> = Api::namespaced(cx.client.clone(), PRODUCTION);
    let sa = sas.get(WHO).await.map_err(|source| Error::Api {
        action: format!("reading ServiceAccount {PRODUCTION}/{WHO}"),
        source,
    })?;
    let listed: Vec<String> = sa.secrets.iter().flatten().filter_map(|r| r.name.clone()).collect();
    let actual = if listed.is_empty() { "empty".to_string() } else { listed.join(", ") };
    rows.push(row("filled.sa-secrets", "token controller", actual, "ServiceAccount.secrets"));

    // The Pod mounts the legacy Secret and uses its token.
    let day = today();
    let runs = cx.run_pods(&[POD]).await?;
    let r = &runs[0].report;
    let fact = |k: &str| r.facts.get(k).cloned().unwrap_or_default();
    let text = |v: serde_json::Value| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
    let files: Vec<String> = serde_json::from_value(fact("files")).unwrap_or_default();
    rows.push(row("pod.files", WHO, files.join(", "), lab_kit::SA_DIR));
    rows.push(row("pod.iss", WHO, text(fact("iss")), "the iss claim"));
    let exp = if fact("has_exp") == serde_json::json!(false) { "none" } else { "present" };
    rows.push(row("pod.exp", WHO, exp, "the exp claim"));
    rows.push(row("pod.secret-name", WHO, text(fact("secret_name")), "kubernetes.io/serviceaccount/secret.name"));
    rows.push(probe_row("pod.used", WHO, r.row("incluster")));
    let pod = fact("extra_pod");
    let pod = if pod.is_null() { "none".to_string() } else { pod.to_string() };
    rows.push(row("pod.extra-pod", WHO, pod, "extra authentication.kubernetes.io/pod-name"));

    // The API server notes the day a legacy token was last used.
    let used = last_used(cx, &secrets, &token_of(legacy)).await?;
    let actual = if used == day || used == today() { "the day it was used (UTC)".to_string() } else { used.clone() };
    rows.push(row("tracking.last-used", "kube-apiserver", actual, format!("{LAST_USED}={used}")));

    // Marked invalid: refused, and TokenReview says why.
    let marked_token = token_of(marked);
    let why = settled_review(cx, &marked_token, |e| e.contains("marked invalid")).await?;
    rows.push(cx.use_token("tracking.marked", WHO, &marked_token, "label invalid-since set").await?);
    let actual = if why.contains("has been marked invalid") { "marked invalid" } else { why.as_str() };
    rows.push(row("tracking.marked.why", "TokenReview", actual, why.clone()));
    // The label removed: the same token works again.
    let unlabel = serde_json::json!({ "metadata": { "labels": { INVALID_SINCE: null } } });
    secrets
        .patch(MARKED, &PatchParams::default(), &Patch::Merge(&unlabel))
        .await
        .map_err(|source| Error::Api {
            action: format!("removing {INVALID_SINCE} from {MARKED}"),
            source,
        })?;
    rows.push(used_until_allowed(cx, "tracking.unmarked", &marked_token).await?);

    // Deleting the Secret kills its token.
    let doomed_token = token_of(doomed);
    delete_and_wait(&secrets, DOOMED, cx.timeout).await?;
    rows.push(cx.use_token("deleted.use", WHO, &doomed_token, "its Secret was deleted").await?);

    // ANCHOR: find
    // What is left: `kubectl get secrets -A --field-selector
    // type=kubernetes.io/service-account-token` (here: in production).
    let lp = ListParams::default().fields("type=kubernetes.io/service-account-token");
    let left = secrets.list_metadata(&lp).await.map_err(|source| Error::Api {
        action: "listing legacy token Secrets".into(),
        source,
    })?;
    // ANCHOR_END: find
    let mut names: Vec<String> = left.items.iter().filter_map(|s| s.metadata.name.clone()).collect();
    names.sort();
    rows.push(row("find.left", "admin", names.join(", "), "field selector type=kubernetes.io/service-account-token"));

    // What replaces them: a TokenRequest with its defaults (one hour).
    let bound = cx.token(PRODUCTION, WHO, TokenRequestSpec::default()).await?;
    let claims = lab_kit::jwt::decode_payload(&bound).unwrap_or_default();
    let secs = |k: &str| claims[k].as_i64().unwrap_or_default();
    rows.push(row("migrate.lifetime", "admin", format!("{} s", secs("exp") - secs("iat")), "exp - iat"));
    let iss = claims["iss"].as_str().unwrap_or_default();
    let actual = if iss.starts_with("https://") { "the issuer's URL" } else { iss };
    rows.push(row("migrate.iss", "admin", actual, format!("iss {iss}")));
    rows.push(cx.use_token("migrate.use", WHO, &bound, "a bound token from TokenRequest").await?);

    // When the API server started tracking (the cleaner counts from it).
    let cms: Api<ConfigMap> = Api::namespaced(cx.client.clone(), "kube-system");
    let since = cms
        .get_opt("kube-apiserver-legacy-service-account-token-tracking")
        .await
        .map_err(|source| Error::Api {
            action: "reading the legacy token tracking ConfigMap".into(),
            source,
        })?
        .and_then(|c| c.data)
        .and_then(|d| d.get("since").cloned())
        .unwrap_or_default();
    let actual = if is_date(&since) { "a date (YYYY-MM-DD)" } else { since.as_str() };
    rows.push(row("tracking.since", "kube-apiserver", actual, format!("since: {since}")));
    Ok(rows)
}

/// Today's date, UTC, as the API server writes it.
fn today() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%d").to_string()
}

fn is_date(s: &str) -> bool {
    s.len() == 10 && jiff::civil::Date::strptime("%Y-%m-%d", s).is_ok()
}

fn token_of(s: &Secret) -> String {
    s.data
        .as_ref()
        .and_then(|d| d.get("token"))
        .map(|t| String::from_utf8_lossy(&t.0).into_owned())
        .unwrap_or_default()
}

/// Wait (a watch) until the token controller has filled Secret `name`.
async fn filled(cx: &RunContext, api: &Api<Secret>, name: &str) -> Result<Secret, Error> {
    let has_token = |s: Option<&Secret>| {
        s.and_then(|s| s.data.as_ref())
            .is_some_and(|d| d.get("token").is_some_and(|t| !t.0.is_empty()))
    };
    let what = format!("Secret {PRODUCTION}/{name} was not filled (is the serviceaccount-token controller running?)");
    kit::await_object(api, name, has_token, cx.timeout, &what)
        .await?
        .ok_or_else(|| Error::Unexpected(format!("Secret {name} disappeared")))
}

/// The value of the last-used label of the legacy token's Secret, awaited
/// (a watch). The API server writes it while it checks a use, once: a
/// write that fails (a restarting API server, say) is only logged, and a
/// token that passed is not checked again for 10 s (its cache). So when the
/// label has not come by then, the runner uses the token again, at most
/// twice; the last wait is the run's timeout.
async fn last_used(cx: &RunContext, api: &Api<Secret>, token: &str) -> Result<String, Error> {
    let value = |s: Option<&Secret>| s.and_then(|s| s.metadata.labels.as_ref()?.get(LAST_USED).cloned());
    let what = format!("Secret {PRODUCTION}/{LEGACY} got no label {LAST_USED}");
    let has = move |s: Option<&Secret>| value(s).is_some();
    for _ in 0..2 {
        match kit::await_object(api, LEGACY, has, AUTH_CACHE, &what).await {
            Ok(found) => return Ok(value(found.as_ref()).unwrap_or_default()),
            Err(Error::Timeout { .. }) => {
                cx.use_token("tracking.used-again", WHO, token, "no last-used label yet").await?;
            }
            Err(e) => return Err(e),
        }
    }
    let found = kit::await_object(api, LEGACY, has, cx.timeout, &what).await?;
    Ok(value(found.as_ref()).unwrap_or_default())
}

/// Ask TokenReview (as the admin) about `token` until its refusal says
/// what `settled` looks for: the API server reads Secrets through a cache
/// that a TokenReview cannot watch. A refusal is never cached, so asking
/// again changes nothing; the last error is returned.
async fn settled_review(cx: &RunContext, token: &str, settled: impl Fn(&str) -> bool) -> Result<String, Error> {
    let api: Api<TokenReview> = Api::all(cx.client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: None,
        },
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let st = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| Error::Api {
                action: "creating a TokenReview".into(),
                source,
            })?
            .status
            .unwrap_or_default();
        let error = st.error.unwrap_or_default();
        if st.authenticated != Some(true) && settled(&error) || tokio::time::Instant::now() > deadline {
            return Ok(if st.authenticated == Some(true) { "authenticated".into() } else { error });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Use `token` until the API server accepts it (a label change reaches
/// its Secret cache a moment after the write); the last answer is the row.
async fn used_until_allowed(cx: &RunContext, id: &str, token: &str) -> Result<Row, Error> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let r = cx.use_token(id, WHO, token, "label invalid-since removed").await?;
        if r.actual == "allowed" || tokio::time::Instant::now() > deadline {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
