//! Chapter 3: what may pod-manager do? The lab tries each request and
//! asks the authorizer (SelfSubjectAccessReview, what `kubectl auth can-i`
//! does) about the same attributes.

use lab_kit::probe::{Outcome, Probe};
use lab_kit::report::{ProbeRow, Report};
use serde_json::json;

// ANCHOR: probes
/// The chapter's probes. Mutating ones are sent with `dryRun=All`.
fn probes(me: &str) -> Vec<Probe> {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "generateName": "dry-run-" },
        "spec": { "containers": [{ "name": "c", "image": lab_kit::LAB_IMAGE }] }
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": { "name": "dry-run" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io",
                     "kind": "Role", "name": "pod-editor" },
        "subjects": [{ "kind": "ServiceAccount", "name": "pod-manager",
                       "namespace": "production" }]
    });
    let prod = "production";
    vec![
        Probe::new("list-pods", "list", "pods").ns(prod),
        Probe::new("get-own-pod", "get", "pods").ns(prod).name(me),
        Probe::new("create-pod", "create", "pods")
            .ns(prod)
            .body(pod),
        Probe::new("delete-pod", "delete", "pods").ns(prod).name(me),
        Probe::new("get-pod-log", "get", "pods")
            .ns(prod)
            .name(me)
            .subresource("log"),
        Probe::new("list-secrets", "list", "secrets").ns(prod),
        Probe::new("list-deployments", "list", "deployments")
            .group("apps", "v1")
            .ns(prod),
        Probe::new("list-pods-staging", "list", "pods").ns("staging"),
        Probe::new("list-namespaces", "list", "namespaces"),
        Probe::new("create-rolebinding", "create", "rolebindings")
            .group("rbac.authorization.k8s.io", "v1")
            .ns(prod)
            .body(binding),
    ]
}
// ANCHOR_END: probes

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut report = Report::new("03", "lab-03-rolebinding");

    // ANCHOR: client
    let client = match kube::Config::incluster() {
        Ok(config) => kube::Client::try_from(config)?,
        Err(e) => {
            let msg = format!("no in-cluster config: {e}");
            let row = ProbeRow::simple("client", Outcome::Error, None, &msg);
            report.rows.push(row);
            report.finish();
            return Ok(());
        }
    };
    // ANCHOR_END: client

    report.identity = lab_kit::identity::whoami(&client).await.ok();
    let me = lab_kit::pod_name().unwrap_or_else(|| "rbac-probe".into());
    // ANCHOR: run
    for probe in probes(&me) {
        // The request itself, then `can-i` for the same attributes.
        report.rows.push(probe.run_and_ask(&client).await);
    }
    // ANCHOR_END: run

    report.finish();
    Ok(())
}
