//! Chapter 3 on a fresh local cluster: namespaces production and staging,
//! Role pod-editor; the lab Pod runs before and after the RoleBinding,
//! then (with Role binding-manager) tries to hand out roles, then runs with
//! view in staging and namespaces cluster-wide; last, the admin shows where
//! a ServiceAccount subject's namespace matters.

mod chapter_kit;
mod common;

use chapter_kit::{all_rows_checked, expect, expect_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chapter_03_rolebinding() {
    common::require_binaries();
    let c = common::TestCluster::start("ch03").await;
    let r = chapter_kit::run(&c, "rolebinding").await;

    // The probes, and what each phase allows: before the RoleBinding
    // nothing; after it exactly what pod-editor grants, in production only;
    // with view in staging and the namespace reader, those too. HTTP codes:
    // 200 for reads and deletes, 201 for creates, 403 for every refusal.
    let table: [(&str, [bool; 3], u16); 11] = [
        ("list-pods", [false, true, true], 200),
        ("get-own-pod", [false, true, true], 200),
        ("create-pod", [false, true, true], 201),
        ("delete-pod", [false, true, true], 200),
        ("get-pod-log", [false, false, false], 200),
        ("list-secrets", [false, false, false], 200),
        ("list-deployments", [false, false, false], 200),
        ("list-deployments-staging", [false, false, true], 200),
        ("list-pods-staging", [false, false, true], 200),
        ("list-namespaces", [false, false, true], 200),
        ("create-rolebinding", [false, false, false], 201),
    ];
    let mut ids = Vec::new();
    for (probe, allowed, code) in table {
        for (i, phase) in ["before", "after", "wider"].iter().enumerate() {
            let id = format!("{phase}.{probe}");
            if allowed[i] {
                expect_status(&r, &id, "allowed", code);
            } else {
                expect_status(&r, &id, "forbidden", 403);
            }
            ids.push(id);
        }
    }
    // Escalation: allowed to create RoleBindings, pod-manager may hand out
    // a role it holds, not one it does not. The authorizer says yes to
    // both; the refusal comes from RBAC's escalation check.
    expect(&r, "escalation.bind-pod-editor.can-i", "allowed");
    expect_status(&r, "escalation.bind-pod-editor", "allowed", 201);
    expect(&r, "escalation.bind-edit.can-i", "allowed");
    expect_status(&r, "escalation.bind-edit", "forbidden", 403);
    let msg = &r.row("escalation.bind-edit").unwrap().message;
    assert!(
        msg.contains("attempting to grant RBAC permissions not currently held"),
        "{msg}"
    );
    let why = &r.row("escalation.bind-edit.can-i").unwrap().message;
    assert!(
        why.contains("binding-manager") && why.contains("pod-manager-binds"),
        "{why}"
    );

    // In every probe phase, every live outcome agrees with the authorizer
    // (SelfSubjectAccessReview).
    let phases = r.rows.iter().filter(|x| {
        x.id.starts_with("before.") || x.id.starts_with("after.") || x.id.starts_with("wider.")
    });
    for row in phases {
        let a = row.authorizer.as_deref().unwrap_or("(not asked)");
        assert_eq!(
            a == "allowed",
            row.actual == "allowed",
            "row {}: authorizer {a}",
            row.id
        );
    }
    // Which binding allowed each call, from the audit log: the RoleBinding
    // and Role after phase 2; the ClusterRoleBinding for namespaces in
    // phase 4; before the binding, nothing allowed it.
    let reason = |id: &str| r.row(id).unwrap().reason.clone().unwrap_or_default();
    let decision = |id: &str| r.row(id).unwrap().decision.clone().unwrap_or_default();
    for id in ["after.list-pods", "after.create-pod", "wider.get-own-pod"] {
        let why = reason(id);
        assert!(
            why.contains("RoleBinding \"pod-manager-binding/production\"")
                && why.contains("Role \"pod-editor\""),
            "{id}: {why}"
        );
        assert_eq!(decision(id), "allow", "{id}");
    }
    let why = reason("wider.list-namespaces");
    assert!(
        why.contains("ClusterRoleBinding \"sa-lab-pod-manager-reads-namespaces\""),
        "{why}"
    );
    let why = reason("wider.list-pods-staging");
    assert!(
        why.contains("pod-manager-views-staging") && why.contains("\"view\""),
        "{why}"
    );
    for id in [
        "before.list-pods",
        "after.list-secrets",
        "wider.list-deployments",
    ] {
        assert_eq!(decision(id), "forbid", "{id}");
        assert!(!reason(id).contains("allowed by"), "{id}: {}", reason(id));
    }

    // The Forbidden message names user, verb, resource and namespace.
    let msg = &r.row("after.list-pods-staging").unwrap().message;
    assert!(
        msg.contains("system:serviceaccount:production:pod-manager")
            && msg.contains("list")
            && msg.contains("pods")
            && msg.contains("staging"),
        "{msg}"
    );
    // Dry runs left nothing behind: no `dry-run-*` Pod was stored, the lab
    // Pod the delete probe targeted still exists, and no RoleBinding named
    // `dry-run*` (nor the dry-run ClusterRoleBinding) was created.
    let pods = c.kubectl_ok(&["get", "pods", "-n", "production", "-o", "name"]);
    assert!(!pods.contains("pod/dry-run-"), "{pods}");
    assert!(pods.lines().any(|l| l == "pod/rbac-probe"), "{pods}");
    let rbs = c.kubectl_ok(&["get", "rolebindings", "-n", "production", "-o", "name"]);
    assert!(!rbs.contains("/dry-run"), "{rbs}");
    let crbs = c.kubectl_ok(&["get", "clusterrolebindings", "-o", "name"]);
    assert!(!crbs.contains("sa-lab-dry-run"), "{crbs}");

    // The subject's namespace: required in a ClusterRoleBinding...
    expect_status(&r, "subject-ns.crb-without", "invalid", 422);
    let msg = &r.row("subject-ns.crb-without").unwrap().message;
    assert!(
        msg.contains("subjects[0].namespace: Required value"),
        "{msg}"
    );
    expect(&r, "subject-ns.crb-with", "allowed");
    // ...optional in a RoleBinding, where it means the binding's own
    // namespace: the trap.
    expect(&r, "subject-ns.rb-stored", "accepted, no namespace");
    expect(&r, "subject-ns.staging-sa", "allowed");
    let why = &r.row("subject-ns.staging-sa").unwrap().message;
    assert!(why.contains("forgot-namespace"), "{why}");
    expect(&r, "subject-ns.production-sa", "forbidden");
    for p in ["bind-pod-editor", "bind-edit"] {
        ids.push(format!("escalation.{p}.can-i"));
        ids.push(format!("escalation.{p}"));
    }
    for id in [
        "subject-ns.crb-without",
        "subject-ns.crb-with",
        "subject-ns.rb-stored",
        "subject-ns.staging-sa",
        "subject-ns.production-sa",
    ] {
        ids.push(id.to_string());
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(ids.len(), 42);
    all_rows_checked(&r, &ids);

    // kubectl auth can-i agrees for the subresource gotcha.
    let out = c.kubectl(&[
        "auth",
        "can-i",
        "get",
        "pods",
        "--subresource=log",
        "-n",
        "production",
        "--as=system:serviceaccount:production:pod-manager",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
    // binding-manager was taken back for the last phase, and pod-manager
    // never had `bind` (the verb that would skip the escalation check).
    let can_i = |verb: &str, what: &str| {
        let out = c.kubectl(&[
            "auth",
            "can-i",
            verb,
            what,
            "-n",
            "production",
            "--as=system:serviceaccount:production:pod-manager",
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        can_i("create", "rolebindings.rbac.authorization.k8s.io"),
        "no"
    );
    assert_eq!(
        can_i("bind", "clusterroles.rbac.authorization.k8s.io/edit"),
        "no"
    );
}
