//! Chapter 1, the runner's side: apply the namespace and `pod-manager`,
//! run the lab in a Pod with and without `serviceAccountName`, then ask the
//! API server about ServiceAccounts that do not exist, an immutable field
//! and a deleted `default`.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::ResourceExt as _;

use crate::chapters::kit::{
    self, Error, PRODUCTION, RunContext, api_row, probe_row, row, service_account_of, username,
};
use crate::chapters::Row;

kit::chapter! { 1, "01-identity", "Why Pods need their own identity";
    NAMESPACE = "00-namespace.yaml",
    SERVICEACCOUNT = "01-serviceaccount.yaml",
    POD = "02-pod.yaml",
    POD_WITHOUT_SA = "03-pod-without-sa.yaml";
    exercises:
    OWN_IDENTITY = "01-own-identity" => ["pod.yaml", "serviceaccount.yaml"],
    FIX_MISSING_ACCOUNT = "01-fix-missing-account" => ["pod.yaml", "serviceaccount.yaml"],
    PREDICT = "01-predict" => ["predictions.yaml"],
}

const EXTRA_PREFIX: &str = "authentication.kubernetes.io/";

async fn run(cx: &RunContext) -> Result<Vec<Row>, Error> {
    use manifests::*;
    cx.apply(&[NAMESPACE, SERVICEACCOUNT]).await?;
    cx.wait_namespace(PRODUCTION, &["pod-manager"]).await?;
    let runs = cx.run_pods(&[POD, POD_WITHOUT_SA]).await?;
    let (with_sa, without_sa) = (&runs[0], &runs[1]);
    let mut rows = Vec::new();

    let r = &with_sa.report;
    let who = "pod-manager";
    rows.push(probe_row("identity.whoami", who, r.row("whoami")));
    rows.push(row("identity.username", who, username(r), ""));
    let identity = r.identity.clone().unwrap_or_default();
    let (_, want) = kit::sa_user(PRODUCTION, who);
    let missing: Vec<&String> = want.iter().filter(|g| !identity.groups.contains(g)).collect();
    let actual = if missing.is_empty() {
        want.join(", ")
    } else {
        format!("missing {missing:?}")
    };
    rows.push(row("identity.groups", who, actual, identity.groups.join(", ")));
    let pod_name = identity
        .extra
        .get("authentication.kubernetes.io/pod-name")
        .and_then(|v| v.first().cloned())
        .unwrap_or_else(|| "(none)".into());
    rows.push(row("identity.pod-name", who, pod_name, ""));
    // Every key of `extra`, as the API server returned them.
    let keys: Vec<&str> = identity
        .extra
        .keys()
        .map(|k| k.strip_prefix(EXTRA_PREFIX).unwrap_or(k))
        .collect();
    let shown: Vec<String> = identity
        .extra
        .iter()
        .map(|(k, v)| {
            let k = k.strip_prefix(EXTRA_PREFIX).unwrap_or(k);
            format!("{k}={}", v.join(","))
        })
        .collect();
    let message = format!("under {EXTRA_PREFIX}: {}", shown.join("; "));
    rows.push(row("identity.extra-keys", who, keys.join(", "), message));

    rows.push(row("no-sa.username", "default", username(&without_sa.report), ""));
    rows.push(row(
        "no-sa.spec",
        "default",
        service_account_of(without_sa),
        "spec.serviceAccountName as stored",
    ));

    // A Pod naming a ServiceAccount that does not exist, and its twin
    // naming one that does. Dry runs: admission runs, nothing is stored.
    let pods: Api<Pod> = Api::namespaced(cx.client.clone(), PRODUCTION);
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    for (id, sa) in [("missing-sa.create", "does-not-exist"), ("existing-sa.create", who)] {
        let mut pod = cx.pod(&POD)?;
        pod.metadata.name = Some(id.replace('.', "-"));
        if let Some(spec) = pod.spec.as_mut() {
            spec.service_account_name = Some(sa.into());
        }
        let res = pods.create(&dry, &pod).await;
        let mut r = api_row(id, "admin", &res);
        // Forbidden, yes, but by ServiceAccount admission?
        if r.actual == "forbidden" && !r.message.contains("error looking up service account") {
            r.actual = "forbidden (for another reason)".into();
        }
        rows.push(Row {
            verb: "create".into(),
            resource: "pods".into(),
            namespace: PRODUCTION.into(),
            name: pod.name_any(),
            ..r
        });
    }

    // serviceAccountName is immutable; a label is not.
    let pp = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    let patches = [
        ("change-sa.patch", serde_json::json!({ "spec": { "serviceAccountName": "default" } })),
        ("change-label.patch", serde_json::json!({ "metadata": { "labels": { "tier": "demo" } } })),
    ];
    for (id, patch) in patches {
        let res = pods.patch("identity", &pp, &Patch::Merge(&patch)).await;
        rows.push(Row {
            verb: "patch".into(),
            resource: "pods".into(),
            namespace: PRODUCTION.into(),
            name: "identity".into(),
            ..api_row(id, "admin", &res)
        });
    }

    // The ServiceAccount controller re-creates `default`.
    rows.push(default_recreated(cx).await?);
    Ok(rows)
}

async fn default_recreated(cx: &RunContext) -> Result<Row, Error> {
    let sas: Api<ServiceAccount> = Api::namespaced(cx.client.clone(), PRODUCTION);
    let api_err = |action: &str| {
        let action = action.to_string();
        move |source| Error::Api { action, source }
    };
    let old = sas
        .get("default")
        .await
        .map_err(api_err("reading ServiceAccount production/default"))?
        .uid()
        .unwrap_or_default();
    sas.delete("default", &DeleteParams::default())
        .await
        .map_err(api_err("deleting ServiceAccount production/default"))?;
    let back = tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(sas.clone(), "default", |sa: Option<&ServiceAccount>| {
            sa.is_some_and(|sa| sa.uid().is_some_and(|u| u != old))
        }),
    )
    .await;
    let (actual, message) = match back {
        Ok(Ok(Some(_))) => ("recreated", "a new `default` (new uid) appeared"),
        _ => (
            "not back after 30s",
            "is kube-controller-manager's serviceaccount controller running?",
        ),
    };
    Ok(Row {
        verb: "delete".into(),
        resource: "serviceaccounts".into(),
        namespace: PRODUCTION.into(),
        name: "default".into(),
        ..row("default-sa.recreated", "admin", actual, message)
    })
}
