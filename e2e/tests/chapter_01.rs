//! Chapter 1 on a fresh local cluster: creates namespace `production`, a
//! ServiceAccount and lab Pods, deletes and watches `default` come back.

mod chapter_kit;
mod common;

use chapter_kit::{all_rows_checked, expect, expect_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chapter_01_identity() {
    common::require_binaries();
    let c = common::TestCluster::start("ch01").await;
    let r = chapter_kit::run(&c, "01-identity").await;

    expect(&r, "identity.whoami", "allowed");
    expect(
        &r,
        "identity.username",
        "system:serviceaccount:production:pod-manager",
    );
    expect(
        &r,
        "identity.groups",
        "system:serviceaccounts, system:serviceaccounts:production, system:authenticated",
    );
    expect(&r, "identity.pod-name", "identity");
    // What the SelfSubjectReview really returned in `extra`: the token's
    // id, the node it was issued for, and the Pod.
    expect(
        &r,
        "identity.extra-keys",
        "credential-id, node-name, node-uid, pod-name, pod-uid",
    );
    let extra = &r.row("identity.extra-keys").unwrap().message;
    assert!(
        extra.starts_with("under authentication.kubernetes.io/: credential-id=JTI="),
        "{extra}"
    );
    expect(
        &r,
        "no-sa.username",
        "system:serviceaccount:production:default",
    );
    expect(&r, "no-sa.spec", "default");
    expect_status(&r, "missing-sa.create", "forbidden", 403);
    let msg = &r.row("missing-sa.create").unwrap().message;
    assert!(msg.contains("error looking up service account"), "{msg}");
    expect(&r, "existing-sa.create", "allowed");
    expect_status(&r, "change-sa.patch", "invalid", 422);
    let msg = &r.row("change-sa.patch").unwrap().message;
    assert!(
        msg.contains("spec: Forbidden: pod updates may not change fields"),
        "{msg}"
    );
    expect(&r, "change-label.patch", "allowed");
    expect(&r, "default-sa.recreated", "recreated");

    all_rows_checked(
        &r,
        &[
            "identity.whoami",
            "identity.username",
            "identity.groups",
            "identity.pod-name",
            "identity.extra-keys",
            "no-sa.username",
            "no-sa.spec",
            "missing-sa.create",
            "existing-sa.create",
            "change-sa.patch",
            "change-label.patch",
            "default-sa.recreated",
        ],
    );

    // Dry runs stored nothing.
    let pods = c.kubectl_ok(&["get", "pods", "-n", "production", "-o", "name"]);
    assert!(!pods.contains("-sa-create"), "{pods}");
    let labels = c.kubectl_ok(&[
        "get",
        "pod",
        "identity",
        "-n",
        "production",
        "--show-labels",
    ]);
    assert!(!labels.contains("tier=demo"), "{labels}");

    // Re-running is safe (old Pods are replaced).
    let again = chapter_kit::run(&c, "1").await;
    assert!(again.passed(), "{}", sa_lab::chapters::render_table(&again));
}
