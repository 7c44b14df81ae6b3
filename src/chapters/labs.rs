//! What each chapter does on the cluster, and the rows it observes.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use k8s_openapi::api::authorization::v1::ResourceAttributes;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Client, ResourceExt as _};
use lab_kit::report::{ProbeRow, Report};

use super::kube_ops::{self, LabRun};
use super::manifests::manifest;
use super::{Chapter, Row, RunOptions};

const NS: &str = "production";
/// How long RBAC changes may take to reach the authorizer.
const AUTHZ_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a namespace may take to get its `default` ServiceAccount.
const NS_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn run(
    client: &Client,
    chapter: &Chapter,
    opts: &RunOptions,
) -> anyhow::Result<Vec<Row>> {
    match chapter.number {
        1 => ch01(client, opts).await,
        2 => ch02(client, opts).await,
        3 => ch03(client, opts).await,
        4 => ch04(client, opts).await,
        5 => ch05(client, opts).await,
        n => anyhow::bail!("chapter {n} has no runner"),
    }
    .with_context(|| format!("chapter {}", chapter.slug))
}

// ---------------------------------------------------------------- helpers

fn row(
    id: impl Into<String>,
    subject: &str,
    actual: impl Into<String>,
    message: impl Into<String>,
) -> Row {
    Row {
        id: id.into(),
        subject: subject.into(),
        actual: actual.into(),
        message: message.into(),
        ..Row::default()
    }
}

/// A row from a lab's probe (or "not observed" if the lab has no such row).
fn from_probe(id: impl Into<String>, subject: &str, p: Option<&ProbeRow>) -> Row {
    let Some(p) = p else {
        return row(
            id,
            subject,
            "not observed",
            "the lab reported no such probe",
        );
    };
    Row {
        verb: p.verb.clone(),
        group: p.group.clone(),
        resource: p.resource.clone(),
        subresource: p.subresource.clone(),
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        status: p.status,
        authorizer: p.authorizer.map(|a| a.to_string()),
        ..row(id, subject, p.actual.to_string(), p.message.clone())
    }
}

/// The word for an HTTP status in cluster-side checks.
fn word(code: u16) -> String {
    match code {
        200..=299 => "allowed",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not found",
        409 => "conflict",
        422 => "invalid",
        _ => "error",
    }
    .into()
}

fn api_result<T>(res: &Result<T, kube::Error>) -> (String, Option<u16>, String) {
    match res {
        Ok(_) => ("allowed".into(), None, String::new()),
        Err(kube::Error::Api(s)) => (word(s.code), Some(s.code), s.message.clone()),
        Err(e) => ("error".into(), None, e.to_string()),
    }
}

async fn apply(client: &Client, ch: u8, files: &[&str]) -> anyhow::Result<()> {
    for f in files {
        kube_ops::apply(client, &manifest(ch, f)?).await?;
    }
    Ok(())
}

async fn remove(client: &Client, ch: u8, files: &[&str]) -> anyhow::Result<()> {
    for f in files {
        kube_ops::remove(client, &manifest(ch, f)?, NS_TIMEOUT).await?;
    }
    Ok(())
}

async fn run_pods(
    client: &Client,
    ch: u8,
    files: &[&str],
    opts: &RunOptions,
) -> anyhow::Result<Vec<LabRun>> {
    let mut pods = Vec::new();
    for f in files {
        pods.push(kube_ops::pod_from_manifest(&manifest(ch, f)?, &opts.image)?);
    }
    kube_ops::run_pods(client, pods, opts.timeout).await
}

fn attrs(verb: &str, resource: &str, ns: &str) -> ResourceAttributes {
    ResourceAttributes {
        verb: Some(verb.into()),
        group: Some(String::new()),
        resource: Some(resource.into()),
        namespace: Some(ns.into()),
        ..Default::default()
    }
}

fn username(r: &Report) -> String {
    r.identity
        .as_ref()
        .map(|i| i.username.clone())
        .unwrap_or_else(|| "(no identity)".into())
}

fn subject_of(run: &LabRun) -> String {
    run.pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_default()
}

// --------------------------------------------------------------- chapter 1

async fn ch01(client: &Client, opts: &RunOptions) -> anyhow::Result<Vec<Row>> {
    apply(client, 1, &["00-namespace.yaml", "01-serviceaccount.yaml"]).await?;
    kube_ops::wait_namespace_ready(client, NS, &["pod-manager"], NS_TIMEOUT).await?;
    let runs = run_pods(client, 1, &["02-pod.yaml", "03-pod-without-sa.yaml"], opts).await?;
    let (with_sa, without_sa) = (&runs[0], &runs[1]);
    let mut rows = Vec::new();

    let r = &with_sa.report;
    let who = "pod-manager";
    rows.push(from_probe("identity.whoami", who, r.row("whoami")));
    rows.push(row("identity.username", who, username(r), ""));
    let groups = r
        .identity
        .as_ref()
        .map(|i| i.groups.clone())
        .unwrap_or_default();
    let want = kube_ops::sa_groups(NS);
    let missing: Vec<&String> = want.iter().filter(|g| !groups.contains(g)).collect();
    let actual = if missing.is_empty() {
        want.join(", ")
    } else {
        format!("missing {missing:?}")
    };
    rows.push(row("identity.groups", who, actual, groups.join(", ")));
    let pod_name = r
        .identity
        .as_ref()
        .and_then(|i| i.extra.get("authentication.kubernetes.io/pod-name"))
        .and_then(|v| v.first().cloned())
        .unwrap_or_else(|| "(none)".into());
    rows.push(row("identity.pod-name", who, pod_name, ""));

    rows.push(row(
        "no-sa.username",
        "default",
        username(&without_sa.report),
        "",
    ));
    rows.push(row(
        "no-sa.spec",
        "default",
        subject_of(without_sa),
        "spec.serviceAccountName as stored",
    ));

    // A Pod naming a ServiceAccount that does not exist.
    let mut ghost = kube_ops::pod_from_manifest(&manifest(1, "02-pod.yaml")?, &opts.image)?;
    ghost.metadata.name = Some("missing-sa".into());
    if let Some(spec) = ghost.spec.as_mut() {
        spec.service_account_name = Some("does-not-exist".into());
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let res = pods.create(&PostParams::default(), &ghost).await;
    if res.is_ok() {
        let _ = pods.delete("missing-sa", &DeleteParams::default()).await;
    }
    let (mut actual, status, message) = api_result(&res);
    if actual == "forbidden" && !message.contains("error looking up service account") {
        actual = "forbidden (for another reason)".into();
    }
    rows.push(Row {
        verb: "create".into(),
        resource: "pods".into(),
        namespace: NS.into(),
        name: "missing-sa".into(),
        status,
        ..row("missing-sa.create", "admin", actual, message)
    });

    // serviceAccountName is immutable.
    let patch = serde_json::json!({ "spec": { "serviceAccountName": "default" } });
    let pp = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    let res = pods.patch("identity", &pp, &Patch::Merge(&patch)).await;
    let (actual, status, message) = api_result(&res);
    rows.push(Row {
        verb: "patch".into(),
        resource: "pods".into(),
        namespace: NS.into(),
        name: "identity".into(),
        status,
        ..row("change-sa.patch", "admin", actual, message)
    });

    // The ServiceAccount controller re-creates `default`.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    let old = sas.get("default").await?.uid().unwrap_or_default();
    sas.delete("default", &DeleteParams::default()).await?;
    let back = tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(sas.clone(), "default", |sa: Option<&ServiceAccount>| {
            sa.is_some_and(|sa| sa.uid().is_some_and(|u| u != old))
        }),
    )
    .await;
    let (actual, message) = match back {
        Ok(Ok(Some(_))) => ("recreated", "a new `default` (new uid) appeared"),
        _ => (
            "not back after 30s",
            "is kube-controller-manager's serviceaccount controller running?",
        ),
    };
    rows.push(Row {
        verb: "delete".into(),
        resource: "serviceaccounts".into(),
        namespace: NS.into(),
        name: "default".into(),
        ..row("default-sa.recreated", "admin", actual, message)
    });
    Ok(rows)
}

// --------------------------------------------------------------- chapter 2

async fn ch02(client: &Client, opts: &RunOptions) -> anyhow::Result<Vec<Row>> {
    apply(client, 2, &["00-namespace.yaml", "01-serviceaccount.yaml"]).await?;
    kube_ops::wait_namespace_ready(client, NS, &["pod-manager"], NS_TIMEOUT).await?;
    let runs = run_pods(client, 2, &["02-pod.yaml"], opts).await?;
    let run = &runs[0];
    let r = &run.report;
    let who = "pod-manager";
    let fact = |k: &str| r.facts.get(k).cloned().unwrap_or_default();
    let text = |v: serde_json::Value| match v {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => "(missing)".into(),
        v => v.to_string(),
    };
    let mut rows = Vec::new();

    let files: Vec<String> = serde_json::from_value(fact("files")).unwrap_or_default();
    rows.push(row("mount.files", who, files.join(", "), lab_kit::SA_DIR));

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
    rows.push(row("mount.namespace", who, text(fact("namespace")), ""));
    rows.push(row("claims.sub", who, text(fact("sub")), ""));
    rows.push(row("claims.pod", who, text(fact("pod")), ""));

    // A token bound to the Pod, requested as the node would (TokenRequest
    // with boundObjectRef). Its default audience is the API server's.
    let pod_uid = run.pod.uid().unwrap_or_default();
    let token = bound_token(client, "pod-manager", "token-mount", &pod_uid).await?;
    let api_aud = lab_kit::jwt::decode_payload(&token)?["aud"].clone();
    let api_aud: Vec<String> = serde_json::from_value(api_aud).unwrap_or_default();
    let aud: Vec<String> = serde_json::from_value(fact("aud")).unwrap_or_default();
    let actual = if aud.iter().any(|a| api_aud.contains(a)) {
        "contains the API server audience".to_string()
    } else {
        format!("{aud:?}")
    };
    rows.push(row(
        "claims.aud",
        who,
        actual,
        format!("aud {aud:?}; API audiences {api_aud:?}"),
    ));
    rows.push(row(
        "claims.warnafter",
        who,
        text(fact("warnafter_minus_iat")),
        "",
    ));
    let exp = fact("exp_minus_iat").as_i64().unwrap_or_default();
    let actual = if (364 * 86400..=366 * 86400).contains(&exp) {
        "1 year".to_string()
    } else {
        format!("{exp} s")
    };
    rows.push(row("claims.exp", who, actual, format!("{exp} s")));

    rows.push(from_probe("raw-get-pods", who, r.row("raw-get-pods")));
    rows.push(from_probe(
        "raw-get-pods-corrupted",
        who,
        r.row("raw-get-pods-corrupted"),
    ));
    rows.push(from_probe("kube-whoami", who, r.row("kube-whoami")));
    rows.push(row("kube-whoami.username", who, username(r), ""));

    // The bound token works while its Pod exists...
    let (actual, status, message) = use_token(client, opts, &token).await;
    rows.push(Row {
        status,
        ..row("bound-token.live", who, actual, message)
    });
    // ...and is rejected once the Pod is gone.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    kube_ops::delete_and_wait(&pods, "token-mount", opts.timeout).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let (actual, status, message) = loop {
        let got = use_token(client, opts, &token).await;
        if got.0 == "unauthorized" || tokio::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    rows.push(Row {
        status,
        ..row("bound-token.deleted", who, actual, message)
    });
    Ok(rows)
}

async fn bound_token(client: &Client, sa: &str, pod: &str, uid: &str) -> anyhow::Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                uid: Some(uid.into()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let tr: TokenRequest = api
        .create_subresource("token", sa, &PostParams::default(), &req)
        .await
        .context("TokenRequest bound to the lab Pod")?;
    tr.status
        .and_then(|s| s.token)
        .context("TokenRequest returned no token")
}

/// Use `token`: a SelfSubjectReview sent with it (if we know how to reach
/// the API server), else the authenticator's verdict via TokenReview.
async fn use_token(
    client: &Client,
    opts: &RunOptions,
    token: &str,
) -> (String, Option<u16>, String) {
    if let Some(base) = &opts.config {
        let mut cfg = base.clone();
        cfg.auth_info = Default::default();
        let value = match format!("Bearer {token}").parse() {
            Ok(v) => v,
            Err(e) => return ("error".into(), None, format!("{e}")),
        };
        cfg.headers.push((http::header::AUTHORIZATION, value));
        let c = match Client::try_from(cfg) {
            Ok(c) => c,
            Err(e) => return ("error".into(), None, e.to_string()),
        };
        let res = lab_kit::identity::whoami(&c).await;
        let (a, s, m) = api_result(&res);
        let m = match res {
            Ok(i) => format!("SelfSubjectReview: {}", i.username),
            Err(_) => m,
        };
        return (a, s, m);
    }
    let api: Api<TokenReview> = Api::all(client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.into(),
            audiences: None,
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &review).await {
        Ok(r) => {
            let st = r.status.unwrap_or_default();
            if st.authenticated == Some(true) {
                let u = st.user.and_then(|u| u.username).unwrap_or_default();
                (
                    "allowed".into(),
                    None,
                    format!("TokenReview: authenticated as {u}"),
                )
            } else {
                (
                    "unauthorized".into(),
                    None,
                    format!("TokenReview: {}", st.error.unwrap_or_default()),
                )
            }
        }
        Err(e) => ("error".into(), None, e.to_string()),
    }
}

// --------------------------------------------------------------- chapter 3

async fn ch03(client: &Client, opts: &RunOptions) -> anyhow::Result<Vec<Row>> {
    let list_pods = attrs("list", "pods", NS);
    let create_bindings = ResourceAttributes {
        group: Some("rbac.authorization.k8s.io".into()),
        ..attrs("create", "rolebindings", NS)
    };
    let mut rows = Vec::new();

    // Before: everything but the RoleBindings (removed if a previous run
    // left them).
    apply(
        client,
        3,
        &[
            "00-namespaces.yaml",
            "01-serviceaccount.yaml",
            "02-role.yaml",
        ],
    )
    .await?;
    remove(
        client,
        3,
        &["03-rolebinding.yaml", "06-rolebinding-binds.yaml"],
    )
    .await?;
    for ns in [NS, "staging"] {
        kube_ops::wait_namespace_ready(client, ns, &[], NS_TIMEOUT).await?;
    }
    kube_ops::wait_namespace_ready(client, NS, &["pod-manager"], NS_TIMEOUT).await?;
    kube_ops::wait_authorizer(client, NS, "pod-manager", &list_pods, false, AUTHZ_TIMEOUT).await?;
    kube_ops::wait_authorizer(
        client,
        NS,
        "pod-manager",
        &create_bindings,
        false,
        AUTHZ_TIMEOUT,
    )
    .await?;
    let before = run_pods(client, 3, &["04-pod.yaml"], opts).await?;
    for p in &before[0].report.rows {
        rows.push(from_probe(
            format!("before.{}", p.id),
            "pod-manager",
            Some(p),
        ));
    }

    // After: bind the Role.
    apply(client, 3, &["03-rolebinding.yaml"]).await?;
    kube_ops::wait_authorizer(client, NS, "pod-manager", &list_pods, true, AUTHZ_TIMEOUT).await?;
    let after = run_pods(client, 3, &["04-pod.yaml"], opts).await?;
    for p in &after[0].report.rows {
        rows.push(from_probe(
            format!("after.{}", p.id),
            "pod-manager",
            Some(p),
        ));
    }

    // Escalation: pod-manager may also create RoleBindings now, and tries
    // to hand out a role it holds and one it does not.
    apply(
        client,
        3,
        &["05-role-binding-manager.yaml", "06-rolebinding-binds.yaml"],
    )
    .await?;
    kube_ops::wait_authorizer(
        client,
        NS,
        "pod-manager",
        &create_bindings,
        true,
        AUTHZ_TIMEOUT,
    )
    .await?;
    let esc = run_pods(client, 3, &["07-pod-escalation.yaml"], opts).await?;
    for p in &esc[0].report.rows {
        let mut r = from_probe(format!("escalation.{}", p.id), "pod-manager", Some(p));
        // Forbidden, yes, but by the escalation check (not the authorizer)?
        let held = "attempting to grant RBAC permissions not currently held";
        if r.actual == "forbidden" && !r.message.contains(held) {
            r.actual = "forbidden (not by the escalation check)".into();
        }
        rows.push(r);
    }
    Ok(rows)
}

// --------------------------------------------------------------- chapter 4

async fn ch04(client: &Client, opts: &RunOptions) -> anyhow::Result<Vec<Row>> {
    let secrets = attrs("list", "secrets", NS);
    let pods = ["03-web-pod.yaml", "06-app-pod.yaml"];
    let mut rows = Vec::new();

    // Misconfigured: secret-reader bound to `default`.
    let files = [
        "00-namespace.yaml",
        "01-role.yaml",
        "02-default-binding.yaml",
        "04-app-serviceaccount.yaml",
    ];
    apply(client, 4, &files).await?;
    remove(client, 4, &["05-app-binding.yaml"]).await?;
    kube_ops::wait_namespace_ready(client, NS, &["app"], NS_TIMEOUT).await?;
    kube_ops::wait_authorizer(client, NS, "default", &secrets, true, AUTHZ_TIMEOUT).await?;
    kube_ops::wait_authorizer(client, NS, "app", &secrets, false, AUTHZ_TIMEOUT).await?;
    let runs = run_pods(client, 4, &pods, opts).await?;
    rows.extend(ch04_rows("misconfigured", &runs));

    // Fixed: bound to the dedicated ServiceAccount, `default` binding gone.
    apply(client, 4, &["05-app-binding.yaml"]).await?;
    remove(client, 4, &["02-default-binding.yaml"]).await?;
    kube_ops::wait_authorizer(client, NS, "default", &secrets, false, AUTHZ_TIMEOUT).await?;
    kube_ops::wait_authorizer(client, NS, "app", &secrets, true, AUTHZ_TIMEOUT).await?;
    let runs = run_pods(client, 4, &pods, opts).await?;
    rows.extend(ch04_rows("fixed", &runs));
    Ok(rows)
}

fn ch04_rows(phase: &str, runs: &[LabRun]) -> Vec<Row> {
    let mut rows = Vec::new();
    for run in runs {
        let pod = run.pod.name_any();
        let subject = subject_of(run);
        for p in &run.report.rows {
            rows.push(from_probe(
                format!("{phase}.{pod}.{}", p.id),
                &subject,
                Some(p),
            ));
        }
    }
    rows
}

// --------------------------------------------------------------- chapter 5

async fn ch05(client: &Client, opts: &RunOptions) -> anyhow::Result<Vec<Row>> {
    apply(client, 5, &["00-namespace.yaml", "01-serviceaccounts.yaml"]).await?;
    kube_ops::wait_namespace_ready(
        client,
        NS,
        &["mounts-by-default", "no-automount"],
        NS_TIMEOUT,
    )
    .await?;
    let files = [
        "02-pod-default.yaml",
        "03-pod-off.yaml",
        "04-pod-sa-off.yaml",
        "05-pod-opts-in.yaml",
    ];
    let runs = run_pods(client, 5, &files, opts).await?;
    let mut rows = Vec::new();
    for run in &runs {
        let pod = run.pod.name_any();
        let sa = subject_of(run);
        let r = &run.report;
        let files: Vec<String> =
            serde_json::from_value(r.facts.get("files").cloned().unwrap_or_default())
                .unwrap_or_default();
        let in_spec = run
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .is_some_and(|vs| vs.iter().any(|v| v.name.starts_with("kube-api-access-")));
        let mounted = if files.iter().any(|f| f == "token") {
            "yes"
        } else {
            "no"
        };
        let msg = format!(
            "files: [{}]; kube-api-access volume in spec: {in_spec}",
            files.join(", ")
        );
        rows.push(row(format!("{pod}.token"), &sa, mounted, msg));

        let mut ic = from_probe(format!("{pod}.incluster"), &sa, r.row("incluster"));
        if ic.actual == "error" && ic.message.contains("no token") {
            ic.actual = "fails: no token".into();
        }
        rows.push(ic);

        if pod == "mount-pod-off" {
            let none = if files.is_empty() {
                "none".to_string()
            } else {
                files.join(", ")
            };
            rows.push(row("pod-off.files", &sa, none, lab_kit::SA_DIR));
            let set = r
                .facts
                .get("kubernetes_service_host_set")
                .and_then(|v| v.as_bool())
                == Some(true);
            rows.push(row(
                "pod-off.service-env",
                &sa,
                if set { "set" } else { "unset" },
                "",
            ));
            let mut anon = from_probe(
                "pod-off.anonymous-pods",
                "system:anonymous",
                r.row("anonymous-get-pods"),
            );
            if anon.actual == "forbidden" && !anon.message.contains("system:anonymous") {
                anon.actual = "forbidden (not as system:anonymous)".into();
            }
            rows.push(anon);
            rows.push(from_probe(
                "pod-off.anonymous-version",
                "system:anonymous",
                r.row("anonymous-get-version"),
            ));
            let mut vault = from_probe("pod-off.vault-token", &sa, r.row("vault-token-get-pods"));
            let aud = r
                .facts
                .get("vault_aud")
                .map(|v| v.to_string())
                .unwrap_or_default();
            let ttl = r
                .facts
                .get("vault_ttl")
                .map(|v| v.to_string())
                .unwrap_or_default();
            vault.message = format!("aud {aud}, ttl {ttl}s: {}", vault.message);
            rows.push(vault);
        }
    }
    Ok(rows)
}
