//! Chapter 3: what may pod-manager do? The lab tries each request and
//! asks the authorizer (SelfSubjectAccessReview, what `kubectl auth can-i`
//! does) about the same attributes. With `SA_LAB_PHASE=escalation` it
//! tries to hand out roles instead (phase 3).

use lab_kit::probe::{Outcome, Probe};
use lab_kit::report::{ProbeRow, Report};
use serde_json::json;

const RBAC: &str = "rbac.authorization.k8s.io";

// ANCHOR: binding
/// A RoleBinding named `name` that gives `kind`/`role` to pod-manager.
fn binding(name: &str, kind: &str, role: &str) -> serde_json::Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": { "name": name },
        "roleRef": { "apiGroup": RBAC, "kind": kind, "name": role },
        "subjects": [{ "kind": "ServiceAccount", "name": "pod-manager",
                       "namespace": "production" }]
    })
}
// ANCHOR_END: binding

// ANCHOR: probes
/// The chapter's probes. Mutating ones are sent with `dryRun=All`.
fn probes(me: &str) -> Vec<Probe> {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "generateName": "dry-run-" },
        "spec": { "containers": [{ "name": "c", "image": lab_kit::LAB_IMAGE }] }
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
        Probe::new("list-deployments-staging", "list", "deployments")
            .group("apps", "v1")
            .ns("staging"),
        Probe::new("list-pods-staging", "list", "pods").ns("staging"),
        Probe::new("list-namespaces", "list", "namespaces"),
        Probe::new("create-rolebinding", "create", "rolebindings")
            .group(RBAC, "v1")
            .ns(prod)
            .body(binding("dry-run", "Role", "pod-editor")),
    ]
}
// ANCHOR_END: probes

// ANCHOR: escalation
/// Phase 3: two RoleBindings (dry run) that differ only in the role
/// they grant: one pod-manager holds, one it does not.
fn escalation_probes() -> Vec<Probe> {
    let create = |id: &str, body| {
        Probe::new(id, "create", "rolebindings")
            .group(RBAC, "v1")
            .ns("production")
            .body(body)
    };
    vec![
        create("bind-pod-editor", binding("dry-run", "Role", "pod-editor")),
        create("bind-edit", binding("dry-run-edit", "ClusterRole", "edit")),
    ]
}
// ANCHOR_END: escalation

/// The part of a refusal that says why: RBAC's escalation check names
/// the permissions the caller does not hold, after a long preamble.
fn why_refused(message: &str) -> String {
    let tail = match message.find("is attempting to grant") {
        Some(i) => &message[i..],
        None => message,
    };
    tail.replace('\n', " ")
}

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
    if report.phase.as_deref() == Some("escalation") {
        // ANCHOR: run-escalation
        for probe in escalation_probes() {
            // The authorizer sees only "create rolebindings in
            // production", not which role the binding names.
            let (may, reason) = probe.ask_authorizer(&client).await;
            let id = format!("{}.can-i", probe.id);
            report.rows.push(ProbeRow {
                id,
                ..probe.row(may, None, &reason)
            });
            // The request itself also passes RBAC's escalation check,
            // which looks at the role.
            let mut row = probe.run(&client).await;
            row.message = why_refused(&row.message);
            report.rows.push(row);
        }
        // ANCHOR_END: run-escalation
        report.finish();
        return Ok(());
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn why_refused_keeps_the_reason() {
        let msg = "rolebindings.rbac.authorization.k8s.io \"x\" is \
                   forbidden: user \"u\" (groups=[\"g\"]) is attempting to \
                   grant RBAC permissions not currently held:\n\
                   {APIGroups:[\"\"]}";
        assert_eq!(
            why_refused(msg),
            "is attempting to grant RBAC permissions not currently held: \
             {APIGroups:[\"\"]}"
        );
        assert_eq!(why_refused("pods is forbidden"), "pods is forbidden");
    }
}
