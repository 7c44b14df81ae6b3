//! Chapter 3, the runner's side: the lab probes as pod-manager before and
//! after the RoleBinding, then with wider grants (view in staging,
//! namespaces cluster-wide); with binding-manager it tries to hand out
//! roles (escalation prevention); last, the admin shows where a
//! ServiceAccount subject's namespace matters.

use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use kube::api::{Api, PostParams};

use crate::chapters::kit::{self, Error, LabRun, PRODUCTION, RunContext, api_row, probe_row, row};
use crate::chapters::Row;

kit::chapter! { 3, "03-rolebinding", "Binding permissions";
    NAMESPACES = "00-namespaces.yaml",
    SERVICEACCOUNT = "01-serviceaccount.yaml",
    ROLE = "02-role.yaml",
    ROLEBINDING = "03-rolebinding.yaml",
    POD = "04-pod.yaml",
    BINDING_MANAGER = "05-role-binding-manager.yaml",
    BINDS = "06-rolebinding-binds.yaml",
    ESCALATION_POD = "07-pod-escalation.yaml",
    VIEW_IN_STAGING = "08-view-in-staging.yaml",
    NAMESPACE_READER = "09-namespace-reader.yaml",
    FORGOT_NAMESPACE = "10-forgot-namespace.yaml";
    exercises:
    PODS_ONLY = "03-pods-only" => ["rbac.yaml", "serviceaccount.yaml"],
    FIX_ROLEREF = "03-fix-roleref" => ["rbac.yaml", "serviceaccount.yaml"],
    FIX_SUBJECT_NAMESPACE = "03-fix-subject-namespace" => ["rbac.yaml", "serviceaccount.yaml"],
    FIX_PLURAL = "03-fix-plural" => ["rbac.yaml", "serviceaccount.yaml"],
    READ_NAMESPACES = "03-read-namespaces" => ["rbac.yaml", "serviceaccount.yaml"],
    PREDICT = "03-predict" => ["predictions.yaml"],
}

const WHO: &str = "pod-manager";
const STAGING: &str = "staging";
const RBAC: &str = "rbac.authorization.k8s.io";

async fn run(cx: &RunContext) -> Result<Vec<Row>, Error> {
    use manifests::*;
    let list_pods = kit::attrs("list", "", "pods", PRODUCTION);
    let create_bindings = kit::attrs("create", RBAC, "rolebindings", PRODUCTION);
    let list_pods_staging = kit::attrs("list", "", "pods", STAGING);
    let list_namespaces = kit::attrs("list", "", "namespaces", "");
    let mut rows = Vec::new();

    // Phase 1, before: everything but the bindings.
    cx.apply(&[NAMESPACES, SERVICEACCOUNT, ROLE]).await?;
    cx.wait_namespace(STAGING, &[]).await?;
    cx.wait_namespace(PRODUCTION, &[WHO]).await?;
    cx.wait_authorizer(PRODUCTION, WHO, &list_pods, false).await?;
    cx.wait_authorizer(PRODUCTION, WHO, &create_bindings, false).await?;
    rows.extend(phase_rows("before", &cx.run_pods(&[POD]).await?));

    // Phase 2, after: bind the Role.
    cx.apply(&[ROLEBINDING]).await?;
    cx.wait_authorizer(PRODUCTION, WHO, &list_pods, true).await?;
    rows.extend(phase_rows("after", &cx.run_pods(&[POD]).await?));

    // Phase 3, escalation: pod-manager may also create RoleBindings now,
    // and tries to hand out a role it holds and one it does not.
    cx.apply(&[BINDING_MANAGER, BINDS]).await?;
    cx.wait_authorizer(PRODUCTION, WHO, &create_bindings, true).await?;
    for r in &cx.run_pods(&[ESCALATION_POD]).await?[0].report.rows {
        let mut r = probe_row(format!("escalation.{}", r.id), WHO, Some(r));
        // Forbidden, yes, but by the escalation check (not the authorizer)?
        let held = "attempting to grant RBAC permissions not currently held";
        if r.actual == "forbidden" && !r.message.contains(held) {
            r.actual = "forbidden (not by the escalation check)".into();
        }
        rows.push(r);
    }

    // Phase 4, wider: view in staging (a RoleBinding to a ClusterRole)
    // and namespaces cluster-wide (a ClusterRoleBinding). The escalation
    // phase's binding-manager is taken back first, so these rows differ
    // from phase 2 only by the new grants.
    cx.remove(&[BINDS]).await?;
    cx.wait_authorizer(PRODUCTION, WHO, &create_bindings, false).await?;
    cx.apply(&[VIEW_IN_STAGING, NAMESPACE_READER]).await?;
    cx.wait_authorizer(PRODUCTION, WHO, &list_pods_staging, true).await?;
    cx.wait_authorizer(PRODUCTION, WHO, &list_namespaces, true).await?;
    rows.extend(phase_rows("wider", &cx.run_pods(&[POD]).await?));

    // Phase 5: the subject's namespace.
    rows.extend(subject_namespace(cx).await?);
    Ok(rows)
}

fn phase_rows(phase: &str, runs: &[LabRun]) -> Vec<Row> {
    runs[0]
        .report
        .rows
        .iter()
        .map(|p| probe_row(format!("{phase}.{}", p.id), WHO, Some(p)))
        .collect()
}

/// A ClusterRoleBinding needs its ServiceAccount subject's namespace; a
/// RoleBinding without one means its own namespace, which is the trap.
async fn subject_namespace(cx: &RunContext) -> Result<Vec<Row>, Error> {
    let mut rows = Vec::new();
    // The phase-4 ClusterRoleBinding, renamed, as a dry run with and
    // without the subject's namespace.
    let crb_doc = manifests::NAMESPACE_READER
        .objects()?
        .into_iter()
        .find(|d| d["kind"] == "ClusterRoleBinding")
        .ok_or_else(|| Error::Unexpected("09-namespace-reader.yaml has no ClusterRoleBinding".into()))?;
    let mut crb: ClusterRoleBinding = serde_json::from_value(crb_doc)
        .map_err(|e| Error::Unexpected(format!("09-namespace-reader.yaml: {e}")))?;
    crb.metadata.name = Some("sa-lab-dry-run".into());
    let crbs: Api<ClusterRoleBinding> = Api::all(cx.client.clone());
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut without = crb.clone();
    for s in without.subjects.iter_mut().flatten() {
        s.namespace = None;
    }
    for (id, obj) in [("subject-ns.crb-without", &without), ("subject-ns.crb-with", &crb)] {
        let res = crbs.create(&dry, obj).await;
        rows.push(Row {
            verb: "create".into(),
            group: RBAC.into(),
            resource: "clusterrolebindings".into(),
            name: "sa-lab-dry-run".into(),
            ..api_row(id, "admin", &res)
        });
    }

    // The trap, stored for real.
    cx.apply(&[manifests::FORGOT_NAMESPACE]).await?;
    let rbs: Api<RoleBinding> = Api::namespaced(cx.client.clone(), STAGING);
    let stored = rbs.get("forgot-namespace").await.map_err(|source| Error::Api {
        action: "reading RoleBinding staging/forgot-namespace".into(),
        source,
    })?;
    let subject_ns = stored
        .subjects
        .iter()
        .flatten()
        .map(|s| s.namespace.clone().unwrap_or_default())
        .collect::<Vec<_>>();
    let actual = if subject_ns == [""] {
        "accepted, no namespace".to_string()
    } else {
        format!("subject namespaces {subject_ns:?}")
    };
    rows.push(row(
        "subject-ns.rb-stored",
        "admin",
        actual,
        "the API server stores the subject as written; the authorizer reads a missing namespace as the binding's",
    ));
    // Who does the authorizer give it to? Wait for the binding to reach it,
    // then ask about the ServiceAccount the author meant.
    let secrets = kit::attrs("list", "", "secrets", STAGING);
    cx.wait_authorizer(STAGING, WHO, &secrets, true).await?;
    for (id, ns) in [("subject-ns.staging-sa", STAGING), ("subject-ns.production-sa", PRODUCTION)] {
        let (user, groups) = kit::sa_user(ns, WHO);
        let (allowed, reason) = cx.can_i(&user, &groups, &secrets).await?;
        let actual = if allowed { "allowed" } else { "forbidden" };
        let message = if reason.is_empty() {
            format!("can-i list secrets -n staging --as={user}: no")
        } else {
            format!("can-i --as={user}: {reason}")
        };
        rows.push(Row {
            verb: "list".into(),
            resource: "secrets".into(),
            namespace: STAGING.into(),
            ..row(id, &format!("can-i as {ns}:{WHO}"), actual, message)
        });
    }
    Ok(rows)
}
