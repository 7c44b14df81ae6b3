//! Chapter 1 on a fresh local cluster: creates namespace `production`, a
//! ServiceAccount and lab Pods, deletes and watches `default` come back.

mod chapter_kit;
mod common;

use chapter_kit::{all_rows_checked, expect, expect_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chapter_01_identity() {
    if !common::binaries_present() {
        return;
    }
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
    expect(
        &r,
        "no-sa.username",
        "system:serviceaccount:production:default",
    );
    expect(&r, "no-sa.spec", "default");
    expect_status(&r, "missing-sa.create", "forbidden", 403);
    let msg = &r.row("missing-sa.create").unwrap().message;
    assert!(msg.contains("error looking up service account"), "{msg}");
    expect_status(&r, "change-sa.patch", "invalid", 422);
    expect(&r, "default-sa.recreated", "recreated");

    all_rows_checked(
        &r,
        &[
            "identity.whoami",
            "identity.username",
            "identity.groups",
            "identity.pod-name",
            "no-sa.username",
            "no-sa.spec",
            "missing-sa.create",
            "change-sa.patch",
            "default-sa.recreated",
        ],
    );

    // Re-running is safe (old Pods are replaced).
    let again = chapter_kit::run(&c, "1").await;
    assert!(again.passed(), "{}", sa_lab::chapters::render_table(&again));
}
