//! The kind/current preflight, against a real API server (the local
//! provider's): it passes on a fresh cluster, names the ClusterRoleBinding
//! once a `default` ServiceAccount is bound to cluster-admin, and passes
//! again once the binding is deleted.
//!
//! What it does to its (own, fresh) cluster: creates a namespace, then two
//! ClusterRoleBindings to cluster-admin, one at a time, deleting each.

mod common;

use std::time::Duration;

use k8s_openapi::api::{core::v1::Namespace, rbac::v1::ClusterRoleBinding};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use sa_lab::provider::{PreflightError, Problem, preflight};
use serde_json::json;

fn admin_binding(name: &str, namespace: &str) -> ClusterRoleBinding {
    serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": name,
            "labels": { "app.kubernetes.io/part-of": "sa-lab" },
        },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "cluster-admin",
        },
        "subjects": [
            { "kind": "ServiceAccount", "name": "default", "namespace": namespace },
        ],
    }))
    .expect("a valid ClusterRoleBinding")
}

fn refused(result: Result<(), PreflightError>) -> Vec<Problem> {
    match result {
        Err(e @ PreflightError::NotEnforced { .. }) => e.problems().to_vec(),
        Err(e) => panic!("preflight could not check the cluster: {e:?}"),
        Ok(()) => Vec::new(),
    }
}

async fn wait_until_passes(client: &Client, what: &str) {
    common::eventually(30, what, || {
        let client = client.clone();
        async move { preflight(&client).await.is_ok() }
    })
    .await;
}

#[tokio::test]
async fn preflight_refuses_default_bound_to_cluster_admin() {
    common::require_binaries();
    let c = common::TestCluster::start("preflight").await;
    let client = c.client().await;
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());

    // A fresh cluster enforces RBAC: nothing to report.
    if let Err(e) = preflight(&client).await {
        panic!("preflight refused a fresh local cluster: {e}");
    }

    // Bind `default` of a scratch namespace to cluster-admin. The preflight
    // reads the bindings, so it names this one at once.
    let ns = common::unique_ns("preflight");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": ns, "labels": { "app.kubernetes.io/part-of": "sa-lab" } },
    }))
    .unwrap();
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let name = format!("{ns}-default-is-admin");
    bindings
        .create(&PostParams::default(), &admin_binding(&name, &ns))
        .await
        .unwrap();

    let err = preflight(&client)
        .await
        .expect_err("preflight must refuse now");
    let msg = err.to_string();
    assert!(
        msg.starts_with("refusing to teach on this cluster"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("clusterrolebinding {name} grants cluster-admin")),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("serviceaccount {ns}/default")),
        "{msg}"
    );
    assert_eq!(
        err.problems(),
        [Problem::BroadBinding {
            binding: name.clone(),
            role: "cluster-admin".into(),
            subject: format!("serviceaccount {ns}/default"),
        }],
        "only the binding is wrong: default of namespace default still may not list secrets"
    );

    // Gone again: the preflight passes again.
    bindings
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    if let Err(e) = preflight(&client).await {
        panic!("preflight still refuses after the binding was deleted: {e}");
    }

    // Now `default` of namespace `default`: the binding is named, and once
    // the RBAC authorizer has seen it, the SubjectAccessReview for
    // system:serviceaccount:default:default says "allowed" too.
    let name = format!("{ns}-default-default-is-admin");
    bindings
        .create(&PostParams::default(), &admin_binding(&name, "default"))
        .await
        .unwrap();
    let mut problems = Vec::new();
    for _ in 0..300 {
        problems = refused(preflight(&client).await);
        let sar = problems.iter().any(|p| {
            matches!(p, Problem::Allowed { user, action, .. }
                if *user == "system:serviceaccount:default:default"
                    && *action == "list secrets in namespace default")
        });
        if sar {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        problems.contains(&Problem::BroadBinding {
            binding: name.clone(),
            role: "cluster-admin".into(),
            subject: "serviceaccount default/default".into(),
        }),
        "{problems:#?}"
    );
    let wanted =
        "system:serviceaccount:default:default is allowed to list secrets in namespace default";
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, Problem::Allowed { .. }) && p.to_string().starts_with(wanted)),
        "expected {wanted:?} among {problems:#?}"
    );

    bindings
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    wait_until_passes(
        &client,
        "the preflight to pass once the second binding is gone",
    )
    .await;
}
