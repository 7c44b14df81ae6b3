//! Chapter 2 on a fresh local cluster: runs the token-mount lab Pod before
//! and after RoleBinding pod-reader, requests tokens bound to it, deletes
//! the Pod (held by a finalizer, then gone) and uses the tokens.

mod chapter_kit;
mod common;

use chapter_kit::{all_rows_checked, expect, expect_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chapter_02_token_mount() {
    common::require_binaries();
    let c = common::TestCluster::start("ch02").await;
    let r = chapter_kit::run(&c, "02").await;

    expect(&r, "mount.files", "ca.crt, namespace, token");
    expect(&r, "mount.volume", "kube-api-access-<5 chars>, read-only");
    expect(&r, "mount.namespace", "production");
    expect(
        &r,
        "claims.sub",
        "system:serviceaccount:production:pod-manager",
    );
    expect(&r, "claims.pod", "token-mount");
    expect(&r, "claims.aud", "contains the API server audience");
    expect(&r, "claims.warnafter", "3607");
    expect(&r, "claims.exp", "1 year");
    // Authenticated, not authorised: 403, never 401...
    expect_status(&r, "raw-get-pods", "forbidden", 403);
    let msg = &r.row("raw-get-pods").unwrap().message;
    assert!(
        msg.contains("system:serviceaccount:production:pod-manager"),
        "{msg}"
    );
    // The same token and GET once a binding allows it...
    expect_status(&r, "bound.raw-get-pods", "allowed", 200);
    // ...while a broken token is 401, binding or not.
    expect_status(&r, "bound.raw-get-pods-corrupted", "unauthorized", 401);
    expect(&r, "kube-whoami", "allowed");
    expect(
        &r,
        "kube-whoami.username",
        "system:serviceaccount:production:pod-manager",
    );
    expect(&r, "bound-token.live", "allowed");
    // A Pod being deleted still validates its tokens (until 60 s after its
    // deletionTimestamp); once the object is gone they are refused.
    expect(&r, "bound-token.terminating", "allowed");
    let msg = &r.row("bound-token.terminating").unwrap().message;
    assert!(msg.contains("deletionTimestamp"), "{msg}");
    expect_status(&r, "bound-token.deleted", "unauthorized", 401);

    all_rows_checked(
        &r,
        &[
            "mount.files",
            "mount.volume",
            "mount.namespace",
            "claims.sub",
            "claims.pod",
            "claims.aud",
            "claims.warnafter",
            "claims.exp",
            "raw-get-pods",
            "bound.raw-get-pods",
            "bound.raw-get-pods-corrupted",
            "kube-whoami",
            "kube-whoami.username",
            "bound-token.live",
            "bound-token.terminating",
            "bound-token.deleted",
        ],
    );
    // The finalizer was released: the lab Pod is gone.
    let pods = c.kubectl_ok(&["get", "pods", "-n", "production", "-o", "name"]);
    assert!(!pods.contains("pod/token-mount"), "{pods}");
}
