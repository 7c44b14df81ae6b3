//! Chapter 3 on a fresh local cluster: namespaces production and staging,
//! Role pod-editor; the lab Pod runs before and after the RoleBinding.

mod chapter_kit;
mod common;

use chapter_kit::{all_rows_checked, expect_status};

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

    // Every live outcome agrees with the authorizer (SelfSubjectAccessReview).
    for row in &r.rows {
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
    // `dry-run` was created. (Other chapters' Pods may share `production`
    // when the tests run on one kind cluster.)
    let pods = c.kubectl_ok(&["get", "pods", "-n", "production", "-o", "name"]);
    assert!(!pods.contains("pod/dry-run-"), "{pods}");
    assert!(pods.lines().any(|l| l == "pod/rbac-probe"), "{pods}");
    let rbs = c.kubectl_ok(&["get", "rolebindings", "-n", "production", "-o", "name"]);
    assert!(!rbs.contains("/dry-run"), "{rbs}");

    let ids: Vec<String> = r.rows.iter().map(|x| x.id.clone()).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(ids.len(), 20);
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
}
