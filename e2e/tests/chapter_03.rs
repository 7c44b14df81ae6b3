//! Chapter 3 on a fresh local cluster: namespaces production and staging,
//! Role pod-editor; the lab Pod runs before and after the RoleBinding,
//! then (with Role binding-manager) tries to hand out roles.

mod chapter_kit;
mod common;

use chapter_kit::{all_rows_checked, expect, expect_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chapter_03_rolebinding() {
    if !common::binaries_present() {
        return;
    }
    let c = common::TestCluster::start("ch03").await;
    let r = chapter_kit::run(&c, "rolebinding").await;

    // Before the RoleBinding: a bare ServiceAccount can do nothing.
    expect_status(&r, "before.list-pods", "forbidden", 403);
    expect_status(&r, "before.get-own-pod", "forbidden", 403);
    expect_status(&r, "before.create-pod", "forbidden", 403);
    expect_status(&r, "before.delete-pod", "forbidden", 403);
    expect_status(&r, "before.get-pod-log", "forbidden", 403);
    expect_status(&r, "before.list-secrets", "forbidden", 403);
    expect_status(&r, "before.list-deployments", "forbidden", 403);
    expect_status(&r, "before.list-pods-staging", "forbidden", 403);
    expect_status(&r, "before.list-namespaces", "forbidden", 403);
    expect_status(&r, "before.create-rolebinding", "forbidden", 403);
    // After: exactly what pod-editor grants, in production only.
    expect_status(&r, "after.list-pods", "allowed", 200);
    expect_status(&r, "after.get-own-pod", "allowed", 200);
    expect_status(&r, "after.create-pod", "allowed", 201);
    expect_status(&r, "after.delete-pod", "allowed", 200);
    expect_status(&r, "after.get-pod-log", "forbidden", 403);
    expect_status(&r, "after.list-secrets", "forbidden", 403);
    expect_status(&r, "after.list-deployments", "forbidden", 403);
    expect_status(&r, "after.list-pods-staging", "forbidden", 403);
    expect_status(&r, "after.list-namespaces", "forbidden", 403);
    expect_status(&r, "after.create-rolebinding", "forbidden", 403);
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

    // Before and after, every live outcome agrees with the authorizer
    // (SelfSubjectAccessReview).
    let phases = r
        .rows
        .iter()
        .filter(|x| x.id.starts_with("before.") || x.id.starts_with("after."));
    for row in phases {
        let a = row.authorizer.as_deref().unwrap_or("(not asked)");
        assert_eq!(
            a == "allowed",
            row.actual == "allowed",
            "row {}: authorizer {a}",
            row.id
        );
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
    // `dry-run*` was created. (Other chapters' Pods may share `production`
    // when the tests run on one kind cluster.)
    let pods = c.kubectl_ok(&["get", "pods", "-n", "production", "-o", "name"]);
    assert!(!pods.contains("pod/dry-run-"), "{pods}");
    assert!(pods.lines().any(|l| l == "pod/rbac-probe"), "{pods}");
    let rbs = c.kubectl_ok(&["get", "rolebindings", "-n", "production", "-o", "name"]);
    assert!(!rbs.contains("/dry-run"), "{rbs}");

    // Every id of both tables was asserted above.
    let probes = [
        "list-pods",
        "get-own-pod",
        "create-pod",
        "delete-pod",
        "get-pod-log",
        "list-secrets",
        "list-deployments",
        "list-pods-staging",
        "list-namespaces",
        "create-rolebinding",
    ];
    let mut ids: Vec<String> = ["before", "after"]
        .iter()
        .flat_map(|ph| probes.iter().map(move |p| format!("{ph}.{p}")))
        .collect();
    for p in ["bind-pod-editor", "bind-edit"] {
        ids.push(format!("escalation.{p}.can-i"));
        ids.push(format!("escalation.{p}"));
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(ids.len(), 24);
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
    // After the run pod-manager may create RoleBindings, yet not `bind`
    // (the verb that would skip the escalation check).
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
        "yes"
    );
    assert_eq!(
        can_i("bind", "clusterroles.rbac.authorization.k8s.io/edit"),
        "no"
    );
}
