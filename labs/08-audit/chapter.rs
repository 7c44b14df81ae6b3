//! Chapter 8, the runner's side. Plant one misconfiguration per audit rule
//! next to a clean twin; show with ci-bot's lab why "may create Pods" is
//! risky; run `sa-lab audit` (as the admin, and as the auditor its
//! ClusterRole is enough for); fix; audit again; then prevent the worst
//! case with a ValidatingAdmissionPolicy.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use kube::api::{Api, ObjectMeta, PostParams};

use crate::risks::{self as audit, Finding, Rule, Severity};
use crate::chapters::kit::{self, Error, LabRun, PRODUCTION, RunContext, api_row, probe_row, row};
use crate::chapters::Row;

kit::chapter! { 8, "08-audit", "Least privilege, audited";
    NAMESPACES = "00-namespaces.yaml",
    AUDIT_ROLE = "01-audit-clusterrole.yaml",
    AUDITOR = "02-auditor.yaml",
    SERVICEACCOUNTS = "03-serviceaccounts.yaml",
    ROLES = "04-roles.yaml",
    PLANTED = "05-planted.yaml",
    TWINS = "06-twins.yaml",
    POD_CI_BOT = "07-pod-ci-bot.yaml",
    ADMISSION_POLICY = "08-admission-policy.yaml";
    exercises:
    CLEAN_AUDIT = "08-clean-audit" => ["rbac.yaml", "serviceaccounts.yaml"],
    AUDITOR_ROLE = "08-auditor-role" => ["rbac.yaml", "serviceaccount.yaml"],
    PREDICT = "08-predict" => ["predictions.yaml"],
}

const RBAC: &str = "rbac.authorization.k8s.io";
/// How long the admission policy may take to be enforced.
const POLICY_TIMEOUT: Duration = Duration::from_secs(20);

/// Each rule, what is planted for it and its clean twin, as the audit's
/// evidence names them.
const CASES: [(Rule, &str, &str); 11] = [
    (Rule::DefaultServiceAccount, "serviceaccount production/default", "serviceaccount production/web-reader"),
    (Rule::CrowdBinding, "group system:serviceaccounts:staging", "serviceaccount staging/app-reader"),
    (Rule::ReadSecrets, "serviceaccount production/secret-reader", "serviceaccount production/config-reader"),
    (Rule::CreateWorkloads, "serviceaccount production/ci-bot", "serviceaccount production/web-reader"),
    (Rule::MintTokens, "serviceaccount production/token-minter", "serviceaccount production/sa-viewer"),
    (Rule::ExecPods, "serviceaccount production/debugger", "serviceaccount production/log-reader"),
    (Rule::NodesProxy, "serviceaccount production/node-prober", "serviceaccount production/node-viewer"),
    (Rule::Escalate, "serviceaccount production/rbac-manager", "serviceaccount production/role-viewer"),
    (Rule::Wildcard, "serviceaccount production/wildcard", "serviceaccount production/config-reader"),
    (Rule::UnusedToken, "Pod production/web", "Pod production/quiet"),
    (Rule::LegacyToken, "Secret production/web-legacy-token", "Secret production/web-config"),
];

async fn run(cx: &RunContext) -> Result<Vec<Row>, Error> {
    use manifests::*;
    let mut rows = Vec::new();
    cx.apply(&[NAMESPACES, AUDIT_ROLE, AUDITOR, SERVICEACCOUNTS, ROLES, TWINS, PLANTED])
        .await?;
    cx.wait_namespace("staging", &["app-reader"]).await?;
    cx.wait_namespace(PRODUCTION, &["auditor", "ci-bot", "secret-reader"]).await?;
    let create_pods = kit::attrs("create", "", "pods", PRODUCTION);
    let list_secrets = kit::attrs("list", "", "secrets", PRODUCTION);
    cx.wait_authorizer(PRODUCTION, "ci-bot", &create_pods, true).await?;
    cx.wait_authorizer(PRODUCTION, "secret-reader", &list_secrets, true).await?;

    // ci-bot may create Pods: it runs one as secret-reader.
    let runs = cx.run_pods(&[POD_CI_BOT]).await?;
    let r = &runs[0].report;
    rows.push(probe_row("steal.list-secrets", "ci-bot", r.row("list-secrets")));
    rows.push(probe_row("steal.create-pod", "ci-bot", r.row("create-pod")));
    let stolen = stolen_pod(cx).await?;
    let stolen_row = stolen.as_ref().and_then(|s| s.report.row("list-secrets"));
    rows.push(probe_row("steal.stolen-list-secrets", "secret-reader", stolen_row));

    // The audit, planted.
    let before = audit_as_admin(cx).await?;
    for (rule, planted, twin) in CASES {
        let id = rule.id();
        rows.push(case_row(&format!("audit.{id}.planted"), &before, Some(rule), planted));
        rows.push(case_row(&format!("audit.{id}.twin"), &before, None, twin));
    }
    rows.push(builtin_row(&before));
    rows.push(confirmed_row(&before));
    rows.extend(auditor_rows(cx).await?);

    // The fix: every planted object goes, and the Pod ci-bot made.
    cx.remove(&[PLANTED]).await?;
    cx.delete_pod(PRODUCTION, "stolen").await?;
    cx.wait_authorizer(PRODUCTION, "ci-bot", &create_pods, false).await?;
    let runs = cx.run_pods(&[POD_CI_BOT]).await?;
    rows.push(probe_row("fixed.create-pod", "ci-bot", runs[0].report.row("create-pod")));
    let after = audit_as_admin(cx).await?;
    for (rule, planted, _) in CASES {
        rows.push(case_row(&format!("audit.{}.fixed", rule.id()), &after, Some(rule), planted));
    }

    // Prevention: the admission policy refuses the worst bindings. The
    // chapter takes it away again, and waits until it is no longer
    // enforced, so a later chapter (4 binds `default` on purpose) or a
    // rerun finds the cluster as it was.
    cx.apply(&[ADMISSION_POLICY]).await?;
    rows.extend(admission_rows(cx).await?);
    cx.remove(&[ADMISSION_POLICY]).await?;
    policy_enforced(cx, false).await?;
    Ok(rows)
}

/// Wait until a dry-run binding to `default` is refused (`enforced`) or
/// admitted (not): the API server loads and drops admission policies a
/// moment after they are written, and that cannot be watched.
async fn policy_enforced(cx: &RunContext, enforced: bool) -> Result<(), Error> {
    let _t = cx.timings.step("admission policy settle");
    let rbs: Api<RoleBinding> = Api::namespaced(cx.client.clone(), PRODUCTION);
    let probe = role_binding("ServiceAccount", "default");
    let deadline = tokio::time::Instant::now() + POLICY_TIMEOUT;
    while rbs.create(&dry_run(), &probe).await.is_ok() == enforced {
        if tokio::time::Instant::now() > deadline {
            let what = if enforced { "enforced" } else { "lifted" };
            return Err(Error::Timeout {
                what: format!("the ValidatingAdmissionPolicy was not {what}"),
                seconds: POLICY_TIMEOUT.as_secs(),
                hint: " (is the ValidatingAdmissionPolicy API served?)".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The report of the Pod ci-bot's lab created, once it finished (`None`
/// if it was never created).
async fn stolen_pod(cx: &RunContext) -> Result<Option<LabRun>, Error> {
    let pods: Api<Pod> = Api::namespaced(cx.client.clone(), PRODUCTION);
    let Some(pod) = pods.get_opt("stolen").await.map_err(|source| Error::Api {
        action: "reading Pod production/stolen".into(),
        source,
    })?
    else {
        return Ok(None);
    };
    cx.wait_report(&pod).await.map(Some)
}

async fn audit_as_admin(cx: &RunContext) -> Result<audit::Report, Error> {
    let _t = cx.timings.step("sa-lab audit");
    audit::run(&cx.client)
        .await
        .map_err(|e| Error::Unexpected(format!("the audit failed: {}", crate::ui::error_chain(&e))))
}

/// Findings of `rule` (any rule if `None`) whose subject or object is
/// `what`.
fn findings<'a>(r: &'a audit::Report, rule: Option<Rule>, what: &str) -> Vec<&'a Finding> {
    r.findings
        .iter()
        .filter(|f| rule.is_none_or(|x| f.rule == x))
        .filter(|f| f.evidence.subject == what || f.evidence.object == what)
        .collect()
}

/// The most severe matching finding's severity, or `not flagged`.
fn case_row(id: &str, r: &audit::Report, rule: Option<Rule>, what: &str) -> Row {
    let found = findings(r, rule, what);
    match found.first() {
        Some(f) => {
            let e = &f.evidence;
            let chain: Vec<&str> = [e.binding.as_str(), &e.role, &e.rule]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect();
            let message = format!("{} {}: {what} → {}", f.rule.id(), f.name, chain.join(" → "));
            row(id, "sa-lab audit", f.severity.as_str(), message)
        }
        None => row(id, "sa-lab audit", "not flagged", format!("no finding names {what}")),
    }
}

/// Kubernetes' own bindings: nothing at high or above.
fn builtin_row(r: &audit::Report) -> Row {
    let own = |f: &&Finding| {
        f.scope == "kube-system"
            || f.evidence.binding.contains(" system:")
            || f.evidence.role.contains(" system:")
    };
    let high: Vec<&Finding> = r
        .findings
        .iter()
        .filter(own)
        .filter(|f| f.severity >= Severity::High)
        .collect();
    let info = r.findings.iter().filter(own).filter(|f| f.severity == Severity::Info).count();
    let actual = if high.is_empty() {
        "none".to_string()
    } else {
        format!("{} ({})", high.len(), high[0].evidence.binding)
    };
    row("audit.builtin", "sa-lab audit", actual, format!("{info} findings at info (bootstrap policy)"))
}

/// Every planted finding that names a permission was confirmed by a
/// SubjectAccessReview.
fn confirmed_row(r: &audit::Report) -> Row {
    let planted: Vec<&Finding> = CASES
        .iter()
        .flat_map(|(rule, what, _)| findings(r, Some(*rule), what))
        .filter(|f| f.ask.is_some())
        .collect();
    let unconfirmed: Vec<String> = planted
        .iter()
        .filter(|f| f.confirmed != Some(true))
        .map(|f| format!("{} {}", f.rule.id(), f.evidence.subject))
        .collect();
    let actual = if unconfirmed.is_empty() && !planted.is_empty() { "all" } else { "not all" };
    let message = if unconfirmed.is_empty() {
        format!("{} planted findings asked", planted.len())
    } else {
        format!("not confirmed: {}", unconfirmed.join(", "))
    };
    row("audit.confirmed", "authorizer", actual, message)
}

/// The audit as `auditor` (ClusterRole sa-lab-audit): it runs, and it may
/// not write.
async fn auditor_rows(cx: &RunContext) -> Result<Vec<Row>, Error> {
    let list_bindings = kit::attrs("list", RBAC, "clusterrolebindings", "");
    cx.wait_authorizer(PRODUCTION, "auditor", &list_bindings, true).await?;
    let token = cx
        .token(PRODUCTION, "auditor", k8s_openapi::api::authentication::v1::TokenRequestSpec {
            expiration_seconds: Some(600),
            ..Default::default()
        })
        .await?;
    let client = cx.client_with_token(&token)?;
    let mut rows = Vec::new();
    let res = audit::run(&client).await;
    let message = match &res {
        Ok(r) => format!("{} findings; {}", r.findings.len(), r.notes.join("; ")),
        Err(e) => crate::ui::error_chain(e),
    };
    let actual = if res.is_ok() { "allowed" } else { "error" };
    rows.push(row("audit.auditor-runs", "auditor", actual, message));
    let rbs: Api<RoleBinding> = Api::namespaced(client, PRODUCTION);
    let res = rbs.create(&dry_run(), &role_binding("ServiceAccount", "web-reader")).await;
    rows.push(Row {
        verb: "create".into(),
        group: RBAC.into(),
        resource: "rolebindings".into(),
        namespace: PRODUCTION.into(),
        ..api_row("audit.auditor-write", "auditor", &res)
    });
    Ok(rows)
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..PostParams::default()
    }
}

/// A RoleBinding (in production) of pod-viewer to one subject.
fn role_binding(kind: &str, name: &str) -> RoleBinding {
    let subject = subject(kind, name);
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": "sa-lab-dry-run", "namespace": PRODUCTION },
        "roleRef": { "apiGroup": RBAC, "kind": "Role", "name": "pod-viewer" },
        "subjects": [subject],
    }))
    .expect("a valid RoleBinding")
}

fn subject(kind: &str, name: &str) -> serde_json::Value {
    match kind {
        "ServiceAccount" => serde_json::json!({ "kind": kind, "name": name, "namespace": PRODUCTION }),
        _ => serde_json::json!({ "kind": kind, "name": name, "apiGroup": RBAC }),
    }
}

/// Dry-run bindings the admission policy must refuse, and their twins.
async fn admission_rows(cx: &RunContext) -> Result<Vec<Row>, Error> {
    let rbs: Api<RoleBinding> = Api::namespaced(cx.client.clone(), PRODUCTION);
    let crbs: Api<ClusterRoleBinding> = Api::all(cx.client.clone());
    policy_enforced(cx, true).await?;
    let mut rows = Vec::new();
    let cases = [
        ("admission.default-sa", "ServiceAccount", "default"),
        ("admission.default-user", "User", "system:serviceaccount:production:default"),
        ("admission.sa-group", "Group", "system:serviceaccounts:production"),
        ("admission.named-sa", "ServiceAccount", "web-reader"),
    ];
    for (id, kind, name) in cases {
        let res = rbs.create(&dry_run(), &role_binding(kind, name)).await;
        rows.push(Row {
            verb: "create".into(),
            group: RBAC.into(),
            resource: "rolebindings".into(),
            namespace: PRODUCTION.into(),
            ..api_row(id, "admin", &res)
        });
    }
    for (id, kind, name) in [
        ("admission.crb-all-sas", "Group", "system:serviceaccounts"),
        ("admission.crb-named-sa", "ServiceAccount", "web-reader"),
    ] {
        let crb: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": ObjectMeta { name: Some("sa-lab-dry-run".into()), ..Default::default() },
            "roleRef": { "apiGroup": RBAC, "kind": "ClusterRole", "name": "view" },
            "subjects": [subject(kind, name)],
        }))
        .expect("a valid ClusterRoleBinding");
        let res = crbs.create(&dry_run(), &crb).await;
        rows.push(Row {
            verb: "create".into(),
            group: RBAC.into(),
            resource: "clusterrolebindings".into(),
            ..api_row(id, "admin", &res)
        });
    }
    Ok(rows)
}
