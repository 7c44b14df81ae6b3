//! Chapter 5 on a fresh local cluster: ServiceAccounts with and without
//! automount and four Pods covering the Pod/ServiceAccount matrix; a
//! reviewer bound to system:auth-delegator checks a token for "vault".

mod chapter_kit;
mod common;

use chapter_kit::{all_rows_checked, expect, expect_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chapter_05_automount() {
    common::require_binaries();
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
    // kube's own error, not the lab's words.
    let msg = &r.row("mount-pod-off.incluster").unwrap().message;
    assert!(msg.starts_with("failed to read"), "{msg}");
    // The Pod with automount off: no directory at all, as on a kubelet.
    expect(&r, "pod-off.sa-dir", "does not exist");
    expect(&r, "pod-off.service-env", "set");
    expect_status(&r, "pod-off.anonymous-pods", "forbidden", 403);
    expect_status(&r, "pod-off.anonymous-version", "allowed", 200);
    expect_status(&r, "pod-off.api-token-pods", "allowed", 200);
    expect_status(&r, "pod-off.vault-token", "unauthorized", 401);
    let msg = &r.row("pod-off.vault-token").unwrap().message;
    assert!(msg.starts_with("aud [\"vault\"], ttl 600s"), "{msg}");
    // Vault's TokenReview: the audience decides.
    expect(&r, "vault.review-api-audience", "not authenticated");
    expect(&r, "vault.review-vault-audience", "authenticated");
    let msg = &r.row("vault.review-vault-audience").unwrap().message;
    assert!(
        msg.contains("system:serviceaccount:production:mounts-by-default"),
        "{msg}"
    );

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
            "pod-off.sa-dir",
            "pod-off.service-env",
            "pod-off.anonymous-pods",
            "pod-off.anonymous-version",
            "pod-off.api-token-pods",
            "pod-off.vault-token",
            "vault.review-api-audience",
            "vault.review-vault-audience",
        ],
    );
}
