//! Chapter 7 on a fresh local cluster: three legacy token Secrets filled by
//! the token controller; a Pod that mounts one and uses it; the last-used
//! label; a token marked invalid, then unmarked; a Secret deleted; what a
//! field selector finds; and a TokenRequest instead.

mod chapter_kit;
mod common;

use chapter_kit::{all_rows_checked, expect, expect_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chapter_07_legacy_tokens() {
    common::require_binaries();
    let c = common::TestCluster::start("ch07").await;
    let r = chapter_kit::run(&c, "legacy-tokens").await;

    expect(&r, "filled.keys", "ca.crt, namespace, token");
    expect(&r, "filled.sa-secrets", "empty");
    expect(&r, "pod.files", "ca.crt, namespace, token");
    expect(&r, "pod.iss", "kubernetes/serviceaccount");
    expect(&r, "pod.exp", "none");
    expect(&r, "pod.secret-name", "pod-manager-token");
    expect(&r, "pod.used", "allowed");
    assert_eq!(
        r.row("pod.used").unwrap().message,
        "system:serviceaccount:production:pod-manager"
    );
    expect(&r, "pod.extra-pod", "none");
    expect(&r, "tracking.last-used", "the day it was used (UTC)");
    expect_status(&r, "tracking.marked", "unauthorized", 401);
    expect(&r, "tracking.marked.why", "marked invalid");
    let why = &r.row("tracking.marked.why").unwrap().message;
    assert!(
        why.contains("kubernetes.io/legacy-token-invalid-since"),
        "{why}"
    );
    expect(&r, "tracking.unmarked", "allowed");
    expect_status(&r, "deleted.use", "unauthorized", 401);
    expect(&r, "tracking.since", "a date (YYYY-MM-DD)");
    expect(
        &r,
        "find.left",
        "pod-manager-token, pod-manager-token-marked",
    );
    expect(&r, "migrate.lifetime", "3600 s");
    expect(&r, "migrate.iss", "the issuer's URL");
    expect(&r, "migrate.use", "allowed");
    all_rows_checked(
        &r,
        &[
            "filled.keys",
            "filled.sa-secrets",
            "pod.files",
            "pod.iss",
            "pod.exp",
            "pod.secret-name",
            "pod.used",
            "pod.extra-pod",
            "tracking.last-used",
            "tracking.marked",
            "tracking.marked.why",
            "tracking.unmarked",
            "deleted.use",
            "tracking.since",
            "find.left",
            "migrate.lifetime",
            "migrate.iss",
            "migrate.use",
        ],
    );

    // What the learner would type finds the same Secrets, and the token
    // controller added none to the ServiceAccount.
    let found = c.kubectl_ok(&[
        "get",
        "secrets",
        "-A",
        "--field-selector",
        "type=kubernetes.io/service-account-token",
        "-o",
        "name",
    ]);
    assert_eq!(
        found.lines().collect::<Vec<_>>(),
        [
            "secret/pod-manager-token",
            "secret/pod-manager-token-marked"
        ],
        "{found}"
    );
}
