//! Chapter 4 on a fresh local cluster: a Role bound to `default`, an
//! unrelated `web` Pod, then the fix (dedicated ServiceAccount).

mod chapter_kit;
mod common;

use chapter_kit::{all_rows_checked, expect_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chapter_04_default_sa() {
    if !common::binaries_present() {
        return;
    }
    let c = common::TestCluster::start("ch04").await;
    let r = chapter_kit::run(&c, "4").await;

    // Misconfigured: the blast radius reaches `web`.
    expect_status(&r, "misconfigured.web.list-secrets", "allowed", 200);
    expect_status(&r, "misconfigured.app.list-secrets", "forbidden", 403);
    expect_status(&r, "misconfigured.web.list-pods", "forbidden", 403);
    // Fixed: only the dedicated ServiceAccount reads Secrets.
    expect_status(&r, "fixed.web.list-secrets", "forbidden", 403);
    expect_status(&r, "fixed.app.list-secrets", "allowed", 200);
    expect_status(&r, "fixed.web.list-pods", "forbidden", 403);
    assert_eq!(r.row("fixed.web.list-secrets").unwrap().subject, "default");
    assert_eq!(r.row("fixed.app.list-secrets").unwrap().subject, "app");

    all_rows_checked(
        &r,
        &[
            "misconfigured.web.list-secrets",
            "misconfigured.app.list-secrets",
            "misconfigured.web.list-pods",
            "fixed.web.list-secrets",
            "fixed.app.list-secrets",
            "fixed.web.list-pods",
        ],
    );

    // Re-running starts from the misconfiguration again.
    let again = chapter_kit::run(&c, "default-sa").await;
    assert!(again.passed(), "{}", sa_lab::chapters::render_table(&again));
}
