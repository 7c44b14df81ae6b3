//! Which binding allowed a call, from the API server's own audit log.
//!
//! On a fresh local cluster: a namespace with ServiceAccount `robot`, a Role
//! and RoleBinding that let it list Pods, then a broader ClusterRoleBinding
//! added and removed again; requests are sent with robot's token and
//! explained through their `Audit-Id`.

mod common;

use std::time::Duration;

use common::{TestCluster, sa_lab, stdout, unique_ns};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, PostParams};
use lab_kit::probe::{Outcome, Probe};
use lab_kit::report::ProbeRow;
use sa_lab::audit::{AuditLog, Explanation};
use serde_json::json;

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

/// A client that authenticates with `token` only.
async fn token_client(c: &TestCluster, token: &str) -> kube::Client {
    let mut cfg = c.info.connect().await.unwrap().config;
    cfg.auth_info = Default::default();
    cfg.headers.push((
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    ));
    kube::Client::try_from(cfg).unwrap()
}

/// What the audit log says about the request behind `row`.
async fn explain(log: &AuditLog, row: &ProbeRow) -> Explanation {
    let id = row
        .audit_id
        .clone()
        .expect("the response carried an Audit-Id");
    let found = log
        .find(std::slice::from_ref(&id), Duration::from_secs(10))
        .await
        .unwrap();
    found
        .get(&id)
        .unwrap_or_else(|| panic!("no audit event {id}"))
        .explanation()
}

/// Sends `probe` until the reason for it contains `want` (the authorizer's
/// RBAC cache takes RBAC changes asynchronously, and a cache cannot be
/// watched), at most 20 s.
async fn reason_until(log: &AuditLog, client: &kube::Client, probe: &Probe, want: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let row = probe.run(client).await;
        let reason = explain(log, &row).await.reason.unwrap_or_default();
        if reason.contains(want) {
            return reason;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reason never named {want}; last: {reason}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn every_allowed_call_names_the_binding_the_authorizer_used() {
    let c = TestCluster::start("trace").await;
    let admin = c.client().await;
    let log = AuditLog::of_cluster(&c.info.dir);
    let ns = unique_ns("trace");
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": ns}})),
        )
        .await
        .unwrap();
    let pp = PostParams::default();
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(&pp, &obj(json!({"metadata": {"name": "robot"}})))
        .await
        .unwrap();
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(
            &pp,
            &obj(json!({
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
            })),
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&pp, &obj(json!({
            "metadata": {"name": "robot-reads-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": ns}]
        })))
        .await
        .unwrap();
    let tr: TokenRequest = Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create_subresource("token", "robot", &pp, &TokenRequest::default())
        .await
        .unwrap();
    let token = tr.status.and_then(|s| s.token).expect("a token");
    let robot = token_client(&c, &token).await;
    let list_pods = Probe::new("list-pods", "list", "pods").ns(&ns);
    let list_secrets = Probe::new("list-secrets", "list", "secrets").ns(&ns);

    // Allowed, and the reason names the RoleBinding and its Role.
    let reason = reason_until(&log, &robot, &list_pods, "robot-reads-pods").await;
    assert!(reason.contains("of Role \"pod-reader\""), "{reason}");
    assert!(reason.contains("to ServiceAccount \"robot/"), "{reason}");
    // Its twin, refused: no binding allowed it.
    let row = list_secrets.run(&robot).await;
    assert_eq!(row.actual, Outcome::Forbidden);
    let x = explain(&log, &row).await;
    assert_eq!(x.decision.as_deref(), Some("forbid"));
    assert!(!x.reason.unwrap_or_default().contains("allowed by"));

    // A broader grant, evaluated first: a ClusterRoleBinding to `view`.
    let crb_name = format!("{ns}-broad");
    let crbs: Api<ClusterRoleBinding> = Api::all(admin.clone());
    crbs.create(&pp, &obj(json!({
        "metadata": {"name": crb_name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": ns}]
    })))
    .await
    .unwrap();
    let reason = reason_until(&log, &robot, &list_pods, &crb_name).await;
    assert!(
        reason.contains("ClusterRoleBinding") && reason.contains("\"view\""),
        "{reason}"
    );
    // Removed again: the RoleBinding is named once more.
    crbs.delete(&crb_name, &DeleteParams::default())
        .await
        .unwrap();
    reason_until(&log, &robot, &list_pods, "robot-reads-pods").await;

    // A broken token never reaches the authorizer.
    let bad = token_client(&c, &lab_kit::jwt::corrupt(&token)).await;
    let row = list_pods.run(&bad).await;
    assert_eq!(row.actual, Outcome::Unauthorized);
    let x = explain(&log, &row).await;
    assert_eq!(x.decision, None);
    assert_eq!(x.short(401), "before authorization (401)");

    // `sa-lab trace` lists robot's calls with their decisions.
    let out = sa_lab(
        &[
            "trace",
            &format!("{ns}:robot"),
            "--name",
            &c.info.name,
            "-o",
            "json",
        ],
        &[],
    )
    .success();
    let calls: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(
        calls.iter().any(|c| c["verb"] == "list"
            && c["resource"] == "pods"
            && c["decision"] == "allow"
            && c["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("robot-reads-pods")),
        "{calls:#?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c["resource"] == "secrets" && c["decision"] == "forbid" && c["code"] == 403),
        "{calls:#?}"
    );
    // Another ServiceAccount's calls are not robot's.
    assert!(
        calls
            .iter()
            .all(|c| c["object"].as_str().unwrap_or_default().starts_with(&ns))
    );
    sa_lab(
        &["trace", "not-a-service-account", "--name", &c.info.name],
        &[],
    )
    .code(2);
}

/// A JWT (three base64url parts) or a PEM private key in `text`.
fn secrets_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c))) {
        let parts: Vec<&str> = word.split('.').collect();
        if word.starts_with("eyJ") && parts.len() == 3 && parts.iter().all(|p| p.len() >= 8) {
            found.push(format!("{}…", &word[..16]));
        }
    }
    if text.contains("PRIVATE KEY-----") {
        found.push("a PEM private key".into());
    }
    found
}

#[tokio::test]
async fn the_audit_log_holds_no_token_or_secret() {
    // The scanner finds what it looks for (so a clean verdict means
    // something).
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let fake = format!(
        "{}.{}.{}",
        base64::Engine::encode(&engine, br#"{"alg":"ES256"}"#),
        base64::Engine::encode(&engine, br#"{"sub":"x"}"#),
        "c2lnbmF0dXJlLWJ5dGVz"
    );
    assert_eq!(secrets_in(&format!("token={fake}\n")).len(), 1);
    assert_eq!(secrets_in("-----BEGIN EC PRIVATE KEY-----").len(), 1);

    // Chapter 2 mints and sends tokens; chapter 5 reviews one; chapter 4
    // reads Secrets.
    let c = TestCluster::start("auditscan").await;
    for chapter in ["02", "04", "05"] {
        sa_lab(&["run", chapter, "--name", &c.info.name], &[]).success();
    }
    let log = AuditLog::of_cluster(&c.info.dir);
    let text = std::fs::read_to_string(&log.path).unwrap();
    assert!(
        text.lines().count() > 100,
        "the log has the chapters' calls"
    );
    assert!(text.contains("\"auditID\""));
    let found = secrets_in(&text);
    assert!(found.is_empty(), "secrets in the audit log: {found:?}");
    for path in [&log.path, &sa_lab::audit::policy_path(&c.info.dir)] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
}
