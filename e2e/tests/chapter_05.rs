//! Chapter 5 on a fresh local cluster: ServiceAccounts with and without
//! automount and four Pods covering the Pod/ServiceAccount matrix.

mod chapter_kit;
mod common;

use chapter_kit::{all_rows_checked, expect, expect_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chapter_05_automount() {
    if !common::binaries_present() {
        return;
    }
    let c = common::TestCluster::start("ch05").await;
    let r = chapter_kit::run(&c, "05-automount").await;

    // The matrix: the Pod's setting wins, then the ServiceAccount's.
    expect(&r, "mount-default.token", "yes");
    expect(&r, "mount-pod-off.token", "no");
    expect(&r, "mount-sa-off.token", "no");
    expect(&r, "mount-pod-wins.token", "yes");
    expect(&r, "mount-default.incluster", "allowed");
    expect(&r, "mount-pod-off.incluster", "fails: no token");
    expect(&r, "mount-sa-off.incluster", "fails: no token");
    expect(&r, "mount-pod-wins.incluster", "allowed");
    // The Pod with automount off.
    expect(&r, "pod-off.files", "none");
    expect(&r, "pod-off.service-env", "set");
    expect_status(&r, "pod-off.anonymous-pods", "forbidden", 403);
    expect_status(&r, "pod-off.anonymous-version", "allowed", 200);
    expect_status(&r, "pod-off.vault-token", "unauthorized", 401);

    all_rows_checked(
        &r,
        &[
            "mount-default.token",
            "mount-pod-off.token",
            "mount-sa-off.token",
            "mount-pod-wins.token",
            "mount-default.incluster",
            "mount-pod-off.incluster",
            "mount-sa-off.incluster",
            "mount-pod-wins.incluster",
            "pod-off.files",
            "pod-off.service-env",
            "pod-off.anonymous-pods",
            "pod-off.anonymous-version",
            "pod-off.vault-token",
        ],
    );
}
