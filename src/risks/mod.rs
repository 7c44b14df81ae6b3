//! `sa-lab audit` (the module is `risks`: [`crate::audit`] reads the API
//! server's audit log): what every ServiceAccount of a cluster may do that it
//! should not, on any cluster. Read-only: it lists ServiceAccounts, Pods,
//! Roles, ClusterRoles and their bindings (and, when allowed, the metadata
//! of legacy token Secrets), runs the [`rules`], and asks the authorizer
//! (SubjectAccessReview) to confirm each finding. It never writes.
//!
//! The ClusterRole that is enough to run it, [`AUDIT_ROLE`], is
//! `labs/08-audit/manifests/01-audit-clusterrole.yaml`.

pub mod rules;

use std::time::Instant;

use futures::StreamExt as _;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, Resource};
use serde::Serialize;

pub use rules::{Finding, Rule, Severity, Snapshot, about_namespace, analyse};

/// The ClusterRole enough to run the audit (everything but the legacy
/// token rule, which needs `list secrets`).
pub const AUDIT_ROLE: &str =
    include_str!("../../labs/08-audit/manifests/01-audit-clusterrole.yaml");

/// How many SubjectAccessReviews are in flight at once.
const CONFIRM_CONCURRENCY: usize = 16;

/// Which cluster to audit.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// `--kubeconfig`: this file.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// `--context`: this context (of `--kubeconfig`, else of `$KUBECONFIG`
    /// or `~/.kube/config`).
    pub context: Option<String>,
    /// `--name`: this local cluster (else `$SA_LAB_CLUSTER`, else `sa-lab`),
    /// when neither of the above is given.
    pub name: Option<String>,
}

/// Reach the cluster `target` names: a kubeconfig when one (or a context)
/// is given, else the local cluster, which must be running (the audit
/// starts nothing). Returns the client and how to name the cluster.
pub async fn connect(target: &Target) -> Result<(Client, String), AuditError> {
    use crate::kubeconfig::{self, Source};
    if target.kubeconfig.is_some() || target.context.is_some() {
        let source = match &target.kubeconfig {
            Some(p) => Source::File(p),
            None => Source::Default,
        };
        let loaded = kubeconfig::connect(source, target.context.as_deref()).await?;
        let what = format!("context {:?} of {}", loaded.context, source.describe());
        return Ok((loaded.client, what));
    }
    let name = crate::provider::connect::local_name(target.name.as_deref());
    if crate::local::running_pid(&name).is_none() {
        return Err(AuditError::NoCluster { name });
    }
    let info = crate::local::load(&name)?;
    let loaded = info.connect().await?;
    Ok((
        loaded.client,
        format!("local cluster {name:?} ({})", info.server),
    ))
}

/// Why the audit could not run.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// No kubeconfig was named and the local cluster is not running.
    #[error(
        "no local cluster {name:?} is running: start it with `sa-lab up`, or audit another \
         cluster with --kubeconfig FILE and/or --context NAME"
    )]
    NoCluster {
        /// The local cluster's name.
        name: String,
    },
    /// The local cluster's state could not be read.
    #[error(transparent)]
    Local(#[from] crate::local::Error),
    /// The kubeconfig gave no client.
    #[error(transparent)]
    Kubeconfig(#[from] crate::kubeconfig::LoadError),
    /// A list the audit needs was refused or failed.
    #[error("cannot list {what}{hint}")]
    List {
        /// e.g. `clusterrolebindings`.
        what: String,
        /// What to do about it (starts with a separator, may be empty).
        hint: String,
        /// What kube said.
        #[source]
        source: kube::Error,
    },
}

/// The audit's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every finding, most severe first.
    pub findings: Vec<Finding>,
    /// Counts per severity.
    pub counts: std::collections::BTreeMap<String, usize>,
    /// What was read: ServiceAccounts, bindings, Pods.
    pub scanned: Scanned,
    /// What could not be checked, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Wall time of the audit, seconds (not in transcripts: the table
    /// does not show it).
    pub seconds: f64,
}

/// How much was read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scanned {
    /// ServiceAccounts.
    pub service_accounts: usize,
    /// RoleBindings and ClusterRoleBindings.
    pub bindings: usize,
    /// Roles and ClusterRoles.
    pub roles: usize,
    /// Pods.
    pub pods: usize,
}

impl Report {
    /// Findings at `level` or worse (info never counts).
    pub fn at_least(&self, level: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity >= level && f.severity > Severity::Info)
            .count()
    }
}

async fn list<K>(client: &Client, lp: &ListParams) -> Result<Vec<K>, AuditError>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::all(client.clone());
    api.list(lp).await.map(|l| l.items).map_err(|source| {
        let what = K::plural(&()).to_string();
        let hint = match &source {
            kube::Error::Api(s) if s.code == 403 => {
                "; the audit needs get/list on it: bind the ClusterRole sa-lab-audit (sa-lab audit --print-role)".into()
            }
            _ => String::new(),
        };
        AuditError::List { what, hint, source }
    })
}

/// Read everything the rules need. Legacy token Secrets are listed as
/// metadata only; a refusal there is a note, not an error.
pub async fn collect(client: &Client) -> Result<(Snapshot, Vec<String>), AuditError> {
    let lp = ListParams::default();
    let (service_accounts, pods, roles, cluster_roles, role_bindings, cluster_role_bindings) = futures::try_join!(
        list::<ServiceAccount>(client, &lp),
        list::<Pod>(client, &lp),
        list::<Role>(client, &lp),
        list::<ClusterRole>(client, &lp),
        list::<RoleBinding>(client, &lp),
        list::<ClusterRoleBinding>(client, &lp),
    )?;
    let mut notes = Vec::new();
    let secrets: Api<Secret> = Api::all(client.clone());
    let legacy = ListParams::default().fields("type=kubernetes.io/service-account-token");
    let legacy_tokens = match secrets.list_metadata(&legacy).await {
        Ok(l) => Some(l.items.into_iter().map(|p| p.metadata).collect()),
        Err(kube::Error::Api(s)) if s.code == 403 => {
            notes.push(format!(
                "{} not checked: these credentials may not list Secrets (the check reads their metadata only; \
                 bind ClusterRole sa-lab-audit-legacy-tokens to run it)",
                Rule::LegacyToken.id()
            ));
            None
        }
        Err(source) => {
            return Err(AuditError::List {
                what: "secrets".into(),
                hint: String::new(),
                source,
            });
        }
    };
    Ok((
        Snapshot {
            service_accounts,
            pods,
            roles,
            cluster_roles,
            role_bindings,
            cluster_role_bindings,
            legacy_tokens,
        },
        notes,
    ))
}

/// Ask the authorizer about every finding that claims a permission: does
/// the subject hold the evidence's rule where the finding says? A refusal
/// to answer (no `create subjectaccessreviews`) leaves it unconfirmed and
/// adds a note.
pub async fn confirm(client: &Client, findings: &mut [Finding]) -> Vec<String> {
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let asks: Vec<(usize, SubjectAccessReview)> = findings
        .iter()
        .enumerate()
        .filter(|(_, f)| f.severity > Severity::Info)
        .filter_map(|(i, f)| {
            let (user, groups, rule, ns) = f.ask.as_ref()?;
            Some((i, crate::rbac::review_of_rule(user, groups, rule, ns)))
        })
        .collect();
    let answers: Vec<(usize, Result<bool, kube::Error>)> = futures::stream::iter(asks)
        .map(|(i, review)| {
            let api = api.clone();
            async move {
                let r = api.create(&PostParams::default(), &review).await;
                (i, r.map(|r| r.status.is_some_and(|s| s.allowed)))
            }
        })
        .buffer_unordered(CONFIRM_CONCURRENCY)
        .collect()
        .await;
    let mut notes = Vec::new();
    for (i, answer) in answers {
        match answer {
            Ok(allowed) => findings[i].confirmed = Some(allowed),
            Err(e) => {
                if notes.is_empty() {
                    notes.push(format!(
                        "findings not confirmed by the authorizer: {}",
                        crate::ui::error_chain(&e)
                    ));
                }
            }
        }
    }
    notes
}

/// The whole audit on the cluster `client` reaches.
pub async fn run(client: &Client) -> Result<Report, AuditError> {
    let start = Instant::now();
    let (snapshot, mut notes) = collect(client).await?;
    let mut findings = analyse(&snapshot);
    notes.extend(confirm(client, &mut findings).await);
    let mut counts = std::collections::BTreeMap::new();
    for f in &findings {
        *counts.entry(f.severity.as_str().to_string()).or_insert(0) += 1;
    }
    Ok(Report {
        counts,
        scanned: Scanned {
            service_accounts: snapshot.service_accounts.len(),
            bindings: snapshot.role_bindings.len() + snapshot.cluster_role_bindings.len(),
            roles: snapshot.roles.len() + snapshot.cluster_roles.len(),
            pods: snapshot.pods.len(),
        },
        findings,
        notes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The report for a person: a table that fits `width`, then each finding's
/// evidence and fix in full. Info findings (the bootstrap policy) are
/// counted, listed only with `all`.
pub fn render(report: &Report, width: u16, all: bool) -> String {
    use comfy_table::{ContentArrangement, Table};
    let shown: Vec<&Finding> = report
        .findings
        .iter()
        .filter(|f| all || f.severity > Severity::Info)
        .collect();
    let mut out = String::new();
    if !shown.is_empty() {
        let mut t = Table::new();
        t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_width(width)
            .set_header(["#", "severity", "rule", "subject", "where"]);
        for (i, f) in shown.iter().enumerate() {
            let subject = if f.evidence.object.is_empty() {
                f.evidence.subject.clone()
            } else {
                f.evidence.object.clone()
            };
            let scope = if f.scope == "*" {
                "cluster-wide"
            } else {
                f.scope.as_str()
            };
            t.add_row([
                (i + 1).to_string(),
                f.severity.to_string(),
                format!("{} {}", f.rule.id(), f.name),
                subject,
                scope.to_string(),
            ]);
        }
        out.push_str(&format!("{t}\n"));
        for (i, f) in shown.iter().enumerate() {
            let e = &f.evidence;
            let chain: Vec<&str> = [e.subject.as_str(), &e.object, &e.binding, &e.role, &e.rule]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect();
            let confirmed = match f.confirmed {
                Some(true) => " (the authorizer agrees)",
                Some(false) => " (the authorizer does NOT agree)",
                None => "",
            };
            let text = format!("{}{confirmed}. Fix: {}.", chain.join(" → "), f.fix);
            out.push_str(&crate::chapters::render::wrap(
                &format!("{:>3}. ", i + 1),
                &text,
                usize::from(width),
            ));
        }
    }
    let order = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Info,
    ];
    let counts: Vec<String> = order
        .iter()
        .filter_map(|s| report.counts.get(s.as_str()).map(|n| format!("{n} {s}")))
        .collect();
    let s = &report.scanned;
    out.push_str(&format!(
        "{} findings{}; scanned {} ServiceAccounts, {} bindings, {} roles, {} Pods\n",
        report.findings.len(),
        if counts.is_empty() {
            String::new()
        } else {
            format!(" ({})", counts.join(", "))
        },
        s.service_accounts,
        s.bindings,
        s.roles,
        s.pods
    ));
    let hidden = report.findings.len() - shown.len();
    if hidden > 0 {
        out.push_str(&format!(
            "{hidden} info findings (the bootstrap policy: Kubernetes' and kubeadm's) not listed: --all lists them\n"
        ));
    }
    for n in &report.notes {
        out.push_str(&crate::chapters::render::wrap(
            "note: ",
            n,
            usize::from(width),
        ));
    }
    out
}
