//! Chapter 2, the runner's side: run the lab in a Pod (no RBAC yet), look
//! at what admission stored, bind `pod-reader` and run the lab again, then
//! use tokens bound to the Pod while it exists, while it is being deleted
//! and once it is gone.

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequestSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::wait::conditions;
use kube::ResourceExt as _;
use std::time::Duration;

use crate::chapters::kit::{
    self, Error, LabRun, PRODUCTION, RunContext, probe_row, row, username,
};
use crate::chapters::Row;

kit::chapter! { 2, "02-token-mount", "How the credential gets into the Pod";
    NAMESPACE = "00-namespace.yaml",
    SERVICEACCOUNT = "01-serviceaccount.yaml",
    POD = "02-pod.yaml",
    POD_READER = "03-pod-reader.yaml";
    exercises:
    HAND_MOUNTED = "02-hand-mounted" => ["pod.yaml", "serviceaccount.yaml"],
    RUST_BY_HAND = "02-rust-by-hand" => ["Cargo.toml", "rbac.yaml", "src/main.rs"],
    PREDICT = "02-predict" => ["predictions.yaml"],
}

const WHO: &str = "pod-manager";
/// Keeps the Pod object after its deletion, so its `deletionTimestamp` is
/// set while it still exists.
const HOLD: &str = "sa-lab.dev/hold";

async fn run(cx: &RunContext) -> Result<Vec<Row>, Error> {
    use manifests::*;
    cx.apply(&[NAMESPACE, SERVICEACCOUNT]).await?;
    cx.wait_namespace(PRODUCTION, &[WHO]).await?;
    let list_pods = kit::attrs("list", "", "pods", PRODUCTION);
    cx.wait_authorizer(PRODUCTION, WHO, &list_pods, false).await?;
    let runs = cx.run_pods(&[POD]).await?;
    // The audiences the API server gives a token when none is asked for.
    let plain = TokenRequestSpec {
        expiration_seconds: Some(600),
        ..Default::default()
    };
    let api_aud = audiences(&cx.token(PRODUCTION, WHO, plain).await?);
    let mut rows = mount_rows(&runs[0], &api_aud);
    let r = &runs[0].report;
    rows.push(probe_row("kube-whoami", WHO, r.row("kube-whoami")));
    rows.push(row("kube-whoami.username", WHO, username(r), ""));
    rows.push(probe_row("raw-get-pods", WHO, r.row("raw-get-pods")));

    // The same token, the same GET, once a RoleBinding allows it; and a
    // corrupted token, which the binding cannot help.
    cx.apply(&[POD_READER]).await?;
    cx.wait_authorizer(PRODUCTION, WHO, &list_pods, true).await?;
    let runs = cx.run_pods(&[POD]).await?;
    let r = &runs[0].report;
    rows.push(probe_row("bound.raw-get-pods", WHO, r.row("raw-get-pods")));
    rows.push(probe_row(
        "bound.raw-get-pods-corrupted",
        WHO,
        r.row("raw-get-pods-corrupted"),
    ));

    rows.extend(bound_tokens(cx, &runs[0].pod).await?);
    Ok(rows)
}

/// What admission put in the Pod spec and the lab found in its files.
fn mount_rows(run: &LabRun, api_aud: &[String]) -> Vec<Row> {
    let r = &run.report;
    let fact = |k: &str| r.facts.get(k).cloned().unwrap_or_default();
    let text = |v: serde_json::Value| match v {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => "(missing)".into(),
        v => v.to_string(),
    };
    let mut rows = Vec::new();
    let files: Vec<String> = serde_json::from_value(fact("files")).unwrap_or_default();
    rows.push(row("mount.files", WHO, files.join(", "), lab_kit::SA_DIR));

    // The volume the ServiceAccount admission plugin added.
    let spec = run.pod.spec.clone().unwrap_or_default();
    let vol = spec
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name.starts_with("kube-api-access-"));
    let mount = spec
        .containers
        .first()
        .and_then(|c| c.volume_mounts.clone())
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.name.starts_with("kube-api-access-"));
    let (actual, message) = match (vol, mount) {
        (Some(v), Some(m)) => {
            let ok_name = v.name.len() == "kube-api-access-".len() + 5;
            let ro = m.read_only == Some(true);
            let at = m.mount_path == lab_kit::SA_DIR;
            let actual = if ok_name && ro && at && v.projected.is_some() {
                "kube-api-access-<5 chars>, read-only".to_string()
            } else {
                format!(
                    "{} projected={} readOnly={ro} at {}",
                    v.name,
                    v.projected.is_some(),
                    m.mount_path
                )
            };
            (actual, format!("{} at {}", v.name, m.mount_path))
        }
        _ => (
            "none".to_string(),
            "no kube-api-access volume in the stored spec".to_string(),
        ),
    };
    rows.push(row("mount.volume", "admission", actual, message));
    rows.push(row("mount.namespace", WHO, text(fact("namespace")), ""));
    rows.push(row("claims.sub", WHO, text(fact("sub")), ""));
    rows.push(row("claims.pod", WHO, text(fact("pod")), ""));
    let aud: Vec<String> = serde_json::from_value(fact("aud")).unwrap_or_default();
    let actual = if !api_aud.is_empty() && aud.iter().any(|a| api_aud.contains(a)) {
        "contains the API server audience".to_string()
    } else {
        format!("{aud:?}")
    };
    rows.push(row(
        "claims.aud",
        WHO,
        actual,
        format!("aud {aud:?}; the API server's audiences {api_aud:?}"),
    ));
    rows.push(row("claims.warnafter", WHO, text(fact("warnafter_minus_iat")), ""));
    let exp = fact("exp_minus_iat").as_i64().unwrap_or_default();
    let actual = if (364 * 86400..=366 * 86400).contains(&exp) {
        "1 year".to_string()
    } else {
        format!("{exp} s")
    };
    rows.push(row("claims.exp", WHO, actual, format!("{exp} s")));
    rows
}

/// The `aud` claim of a token.
fn audiences(token: &str) -> Vec<String> {
    lab_kit::jwt::decode_payload(token)
        .ok()
        .and_then(|c| serde_json::from_value(c["aud"].clone()).ok())
        .unwrap_or_default()
}

/// Three new tokens bound to the lab Pod, each used once: while the Pod
/// exists, while it is being deleted, and once it is gone. The API server
/// caches a successful token check for 10 s, so reusing one token would
/// show the cache, not the check: each row uses a token never used before.
async fn bound_tokens(cx: &RunContext, pod: &Pod) -> Result<Vec<Row>, Error> {
    let name = pod.name_any();
    let spec = TokenRequestSpec {
        expiration_seconds: Some(600),
        bound_object_ref: Some(BoundObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name.clone()),
            uid: pod.uid(),
        }),
        ..Default::default()
    };
    let [live, terminating] = [
        cx.token(PRODUCTION, WHO, spec.clone()).await?,
        cx.token(PRODUCTION, WHO, spec.clone()).await?,
    ];
    // Tokens for "gone" must be minted while the Pod exists; spares for when
    // the API server's Pod cache has not seen the deletion yet (below).
    let mut deleted: [String; GONE_TRIES] = Default::default();
    for token in &mut deleted {
        *token = cx.token(PRODUCTION, WHO, spec.clone()).await?;
    }
    let mut rows = vec![cx.use_token("bound-token.live", WHO, &live, "the Pod exists").await?];

    // Deleting a finished Pod sets its deletionTimestamp to now (no grace
    // period); the finalizer keeps the object until we remove it.
    let pods: Api<Pod> = Api::namespaced(cx.client.clone(), PRODUCTION);
    let api_err = |action: String| move |source| Error::Api { action, source };
    let hold = serde_json::json!({ "metadata": { "finalizers": [HOLD] } });
    pods.patch(&name, &PatchParams::default(), &Patch::Merge(&hold))
        .await
        .map_err(api_err(format!("adding finalizer {HOLD} to Pod {name}")))?;
    pods.delete(&name, &DeleteParams::default())
        .await
        .map_err(api_err(format!("deleting Pod {name}")))?;
    let lingering = kit::await_object(
        &pods,
        &name,
        |p: Option<&Pod>| p.is_some_and(|p| p.metadata.deletion_timestamp.is_some()),
        cx.timeout,
        &format!("Pod {name} got no deletionTimestamp"),
    )
    .await?;
    let since = lingering
        .and_then(|p| p.metadata.deletion_timestamp)
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    let context = format!("deletionTimestamp {since}; valid until 60 s after it");
    rows.push(cx.use_token("bound-token.terminating", WHO, &terminating, &context).await?);

    let release = serde_json::json!({ "metadata": { "finalizers": null } });
    pods.patch(&name, &PatchParams::default(), &Patch::Merge(&release))
        .await
        .map_err(api_err(format!("removing finalizer {HOLD} from Pod {name}")))?;
    let uid = pod.uid().unwrap_or_default();
    let gone = format!("Pod {name} was not gone");
    kit::await_object(&pods, &name, conditions::is_deleted(&uid), cx.timeout, &gone).await?;
    rows.push(gone_row(cx, &deleted).await?);
    Ok(rows)
}

/// How many never-used tokens the "gone" row may try.
const GONE_TRIES: usize = 4;

/// The "gone" row. The API server checks a token's Pod in its own watch
/// cache first, which may see the deletion a moment after our watch did;
/// a token it accepts then is cached as valid for 10 s, so a retry needs a
/// token never used before. Each try waits twice as long as the last
/// (0.25 s, 0.5 s, 1 s: nothing the API server exposes says its cache has
/// caught up). The row is the last try's answer; the message says which try.
async fn gone_row(cx: &RunContext, tokens: &[String; GONE_TRIES]) -> Result<Row, Error> {
    let mut wait = Duration::from_millis(250);
    let mut row = cx
        .use_token("bound-token.deleted", WHO, &tokens[0], "the Pod object is gone")
        .await?;
    for (i, token) in tokens.iter().enumerate().skip(1) {
        if row.status == Some(401) {
            break;
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
        let try_no = i + 1;
        let context = format!("the Pod object is gone (try {try_no}: the API server's cache lagged)");
        row = cx.use_token("bound-token.deleted", WHO, token, &context).await?;
    }
    Ok(row)
}
