//! Chapter 6 on a fresh local cluster: token-minter asks for tokens before
//! and after a Role for `serviceaccounts/token`; the admin mints tokens with
//! durations and audiences, and tokens bound to a Pod, a Secret and a Node,
//! each used before and after the object is deleted; token-reviewer checks
//! vault tokens online (TokenReview, before and after
//! `system:auth-delegator`) and offline (JWKS), also after their Pod is gone.

mod chapter_kit;
mod common;

use chapter_kit::{all_rows_checked, expect, expect_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chapter_06_token_request() {
    common::require_binaries();
    let c = common::TestCluster::start("ch06").await;
    let r = chapter_kit::run(&c, "token-request").await;

    // Minting is `create serviceaccounts/token`, scoped by resourceNames:
    // the Role opens pod-manager's tokens, not the minter's own.
    expect_status(&r, "before.mint-pod-manager", "forbidden", 403);
    expect(&r, "after.mint-pod-manager", "allowed");
    expect_status(&r, "before.mint-self", "forbidden", 403);
    expect_status(&r, "after.mint-self", "forbidden", 403);
    let msg = &r.row("after.mint-self").unwrap().message;
    assert!(msg.contains("serviceaccounts/token"), "{msg}");
    for id in [
        "before.mint-pod-manager",
        "after.mint-pod-manager",
        "after.mint-self",
    ] {
        let row = r.row(id).unwrap();
        assert_eq!(
            row.authorizer.as_deref() == Some("allowed"),
            row.actual == "allowed",
            "{id}: the authorizer disagrees: {row:#?}"
        );
    }

    // --duration: 600 s is the floor (422 below it); above the server's
    // maximum (24 h here) the token is shortened, with a warning.
    expect_status(&r, "request.duration-599s", "invalid", 422);
    let msg = &r.row("request.duration-599s").unwrap().message;
    assert!(
        msg.contains("may not specify a duration less than 10 minutes"),
        "{msg}"
    );
    expect_status(&r, "request.duration-10m", "allowed", 201);
    expect(&r, "request.duration-10m.lifetime", "600 s");
    expect(&r, "request.duration-48h.lifetime", "86400 s");
    let msg = &r.row("request.duration-48h.lifetime").unwrap().message;
    assert!(msg.contains("shortened to 86400 seconds"), "{msg}");
    expect(&r, "request.aud-default", "the issuer's URL");
    expect(&r, "request.aud-vault", "vault");

    // A bound token dies with its object.
    for what in ["pod", "secret", "node"] {
        expect(&r, &format!("bound.{what}.live"), "allowed");
        expect_status(&r, &format!("bound.{what}.deleted"), "unauthorized", 401);
    }

    // Online: the API server refuses a vault token; TokenReview needs
    // auth-delegator and the right audience.
    expect(&r, "review.api-token-api", "allowed");
    expect_status(&r, "review.vault-token-api", "unauthorized", 401);
    expect_status(&r, "review.before", "forbidden", 403);
    let msg = &r.row("review.before").unwrap().message;
    assert!(msg.contains("tokenreviews"), "{msg}");
    expect(&r, "review.vault", "authenticated");
    expect(
        &r,
        "review.vault.user",
        "system:serviceaccount:production:pod-manager",
    );
    expect(&r, "review.vault.pod", "app");
    expect(&r, "review.no-audiences", "not authenticated");
    let msg = &r.row("review.no-audiences").unwrap().message;
    assert!(msg.contains("audiences"), "{msg}");

    // Offline: discovery for ServiceAccounts, not for anonymous; the
    // signature, the audience, and the lesson.
    expect(&r, "discovery.document", "allowed");
    expect(&r, "discovery.issuer", "the tokens' iss");
    expect(&r, "discovery.jwks", "allowed");
    expect_status(&r, "discovery.jwks-anonymous", "forbidden", 403);
    expect(&r, "offline.live", "authenticated");
    expect(&r, "offline.corrupted", "not authenticated");
    assert!(
        r.row("offline.corrupted")
            .unwrap()
            .message
            .contains("InvalidSignature")
    );
    expect(&r, "offline.wrong-audience", "not authenticated");
    assert!(
        r.row("offline.wrong-audience")
            .unwrap()
            .message
            .contains("InvalidAudience")
    );
    expect(&r, "after.offline", "authenticated");
    expect(&r, "after.review", "not authenticated");
    let msg = &r.row("after.review").unwrap().message;
    assert!(msg.contains("invalidated"), "{msg}");

    all_rows_checked(
        &r,
        &[
            "before.mint-pod-manager",
            "after.mint-pod-manager",
            "before.mint-self",
            "after.mint-self",
            "request.duration-599s",
            "request.duration-10m",
            "request.duration-10m.lifetime",
            "request.duration-48h.lifetime",
            "request.aud-default",
            "request.aud-vault",
            "bound.pod.live",
            "bound.pod.deleted",
            "bound.secret.live",
            "bound.secret.deleted",
            "bound.node.live",
            "bound.node.deleted",
            "review.api-token-api",
            "review.vault-token-api",
            "review.before",
            "review.vault",
            "review.vault.user",
            "review.vault.pod",
            "review.no-audiences",
            "discovery.document",
            "discovery.issuer",
            "discovery.jwks",
            "discovery.jwks-anonymous",
            "offline.live",
            "offline.corrupted",
            "offline.wrong-audience",
            "after.offline",
            "after.review",
        ],
    );
    // The Node object made for the binding is gone; the sandbox node stays.
    let nodes = c.kubectl_ok(&["get", "nodes", "-o", "name"]);
    assert!(!nodes.contains("sa-lab-token-node"), "{nodes}");
    assert!(nodes.contains("node/"), "{nodes}");
}
