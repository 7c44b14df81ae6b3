//! Chapter 5, the runner's side: four Pods that differ only in where
//! automount is switched off, what the one with automount off can still do,
//! and how Vault checks a token minted for it (TokenReview).

use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use kube::api::{Api, PostParams};
use kube::ResourceExt as _;

use crate::chapters::kit::{
    self, Error, LabRun, PRODUCTION, RunContext, probe_row, row, service_account_of,
};
use crate::chapters::Row;

kit::chapter! { 5, "05-automount", "Disabling automount";
    NAMESPACE = "00-namespace.yaml",
    SERVICEACCOUNTS = "01-serviceaccounts.yaml",
    POD_DEFAULT = "02-pod-default.yaml",
    POD_OFF = "03-pod-off.yaml",
    POD_SA_OFF = "04-pod-sa-off.yaml",
    POD_OPTS_IN = "05-pod-opts-in.yaml",
    POD_READER = "06-pod-reader.yaml",
    VAULT_REVIEWER = "07-vault-reviewer.yaml";
    exercises:
    FIX_AUTOMOUNT = "05-fix-automount" => ["pod.yaml", "serviceaccount.yaml"],
    VAULT_TOKEN = "05-vault-token" => ["pod.yaml", "rbac.yaml", "serviceaccount.yaml"],
    RUST_NO_TOKEN = "05-rust-no-token" => ["Cargo.toml", "serviceaccount.yaml", "src/main.rs"],
    PREDICT = "05-predict" => ["predictions.yaml"],
}

async fn run(cx: &RunContext) -> Result<Vec<Row>, Error> {
    use manifests::*;
    cx.apply(&[NAMESPACE, SERVICEACCOUNTS, POD_READER, VAULT_REVIEWER]).await?;
    cx.wait_namespace(PRODUCTION, &["mounts-by-default", "no-automount", "vault-reviewer"])
        .await?;
    let list_pods = kit::attrs("list", "", "pods", PRODUCTION);
    cx.wait_authorizer(PRODUCTION, "mounts-by-default", &list_pods, true).await?;
    let runs = cx
        .run_pods(&[POD_DEFAULT, POD_OFF, POD_SA_OFF, POD_OPTS_IN])
        .await?;
    let mut rows = Vec::new();
    for run in &runs {
        rows.extend(mount_rows(run));
        if run.pod.name_any() == "mount-pod-off" {
            rows.extend(pod_off_rows(run));
            rows.extend(vault_reviews(cx, run).await?);
        }
    }
    Ok(rows)
}

fn fact_str(run: &LabRun, key: &str) -> String {
    match run.report.facts.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "(not reported)".into(),
    }
}

/// Was a token mounted, and what did in-cluster config make of it?
fn mount_rows(run: &LabRun) -> Vec<Row> {
    let pod = run.pod.name_any();
    let sa = service_account_of(run);
    let r = &run.report;
    let token_file = r.facts.get("token_file").and_then(|v| v.as_bool());
    let in_spec = run
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|vs| vs.iter().any(|v| v.name.starts_with("kube-api-access-")));
    let mounted = match token_file {
        Some(true) => "yes",
        Some(false) => "no",
        None => "(not reported)",
    };
    let msg = format!(
        "{}: {}; kube-api-access volume in the stored spec: {in_spec}",
        lab_kit::SA_DIR,
        fact_str(run, "sa_dir")
    );
    let mut rows = vec![row(format!("{pod}.token"), &sa, mounted, msg)];

    // "fails: no token" rests on what was observed: the token file is
    // absent, and kube's own error is about a missing file.
    let mut ic = probe_row(format!("{pod}.incluster"), &sa, r.row("incluster"));
    let missing_file = ic.message.contains("No such file or directory");
    if ic.actual == "error" && token_file == Some(false) && missing_file {
        ic.actual = "fails: no token".into();
    }
    rows.push(ic);
    rows
}

/// What the Pod with automount off saw and could do.
fn pod_off_rows(run: &LabRun) -> Vec<Row> {
    let sa = service_account_of(run);
    let r = &run.report;
    let mut rows = Vec::new();
    let state = fact_str(run, "sa_dir");
    let actual = if state == "absent" {
        "does not exist".to_string()
    } else {
        state.clone()
    };
    let files: Vec<String> =
        serde_json::from_value(r.facts.get("files").cloned().unwrap_or_default()).unwrap_or_default();
    rows.push(row("pod-off.sa-dir", &sa, actual, format!("{state}; files: {files:?}")));
    let set = r.facts.get("kubernetes_service_host_set").and_then(|v| v.as_bool()) == Some(true);
    rows.push(row("pod-off.service-env", &sa, if set { "set" } else { "unset" }, ""));

    let mut anon = probe_row("pod-off.anonymous-pods", "system:anonymous", r.row("anonymous-get-pods"));
    if anon.actual == "forbidden" && !anon.message.contains("system:anonymous") {
        anon.actual = "forbidden (not as system:anonymous)".into();
    }
    rows.push(anon);
    rows.push(probe_row(
        "pod-off.anonymous-version",
        "system:anonymous",
        r.row("anonymous-get-version"),
    ));
    rows.push(probe_row("pod-off.api-token-pods", &sa, r.row("api-token-get-pods")));

    // The vault token's refusal counts only for the token the manifest
    // asked for: audience vault, 600 s.
    let mut vault = probe_row("pod-off.vault-token", &sa, r.row("vault-token-get-pods"));
    let aud = r.facts.get("vault_aud").cloned().unwrap_or_default();
    let ttl = r.facts.get("vault_ttl").and_then(|v| v.as_i64());
    if aud != serde_json::json!(["vault"]) || ttl != Some(600) {
        vault.actual = format!("{} (but aud {aud}, ttl {ttl:?})", vault.actual);
    }
    vault.message = format!("aud {aud}, ttl {}s: {}", ttl.unwrap_or_default(), vault.message);
    rows.push(vault);
    rows
}

/// Vault's side: it sends the token it was given to TokenReview, as a
/// reviewer bound to system:auth-delegator, naming its own audience.
async fn vault_reviews(cx: &RunContext, run: &LabRun) -> Result<Vec<Row>, Error> {
    let pod = &run.pod;
    // The same kind of token the Pod holds: audience vault, 600 s, bound
    // to the Pod.
    let vault_token = cx
        .token(
            PRODUCTION,
            &service_account_of(run),
            TokenRequestSpec {
                audiences: Some(vec!["vault".into()]),
                expiration_seconds: Some(600),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod.name_any()),
                    uid: pod.uid(),
                }),
                ..Default::default()
            },
        )
        .await?;
    let reviewer_token = cx
        .token(
            PRODUCTION,
            "vault-reviewer",
            TokenRequestSpec {
                expiration_seconds: Some(600),
                ..Default::default()
            },
        )
        .await?;
    let review = kit::attrs("create", "authentication.k8s.io", "tokenreviews", "");
    cx.wait_authorizer(PRODUCTION, "vault-reviewer", &review, true).await?;
    let reviews: Api<TokenReview> = Api::all(cx.client_with_token(&reviewer_token)?);
    let mut rows = Vec::new();
    for (id, audiences) in [
        ("vault.review-api-audience", None),
        ("vault.review-vault-audience", Some(vec!["vault".to_string()])),
    ] {
        let asked = TokenReview {
            spec: TokenReviewSpec {
                token: vault_token.clone(),
                audiences: audiences.clone(),
            },
            ..Default::default()
        };
        let res = reviews.create(&PostParams::default(), &asked).await;
        let mut r = kit::api_row(id, "vault-reviewer", &res);
        r.verb = "create".into();
        r.group = "authentication.k8s.io".into();
        r.resource = "tokenreviews".into();
        if let Ok(done) = res {
            let st = done.status.unwrap_or_default();
            let user = st.user.and_then(|u| u.username).unwrap_or_default();
            if st.authenticated == Some(true) {
                r.actual = "authenticated".into();
                r.message = format!("authenticated as {user}, audiences {:?}", st.audiences.unwrap_or_default());
            } else {
                r.actual = "not authenticated".into();
                r.message = st.error.unwrap_or_default();
            }
        }
        rows.push(r);
    }
    Ok(rows)
}
