//! The audit's rules: pure functions from what was listed (a [`Snapshot`])
//! to [`Finding`]s. No cluster is needed to test them.
//!
//! A binding grants its role's rules to its subjects; [`crate::rbac`] says
//! who a subject stands for and what a rule grants (the preflight reads
//! bindings the same way). Grants through Kubernetes' own bootstrap policy
//! (objects labelled `kubernetes.io/bootstrapping=rbac-defaults`: the
//! controllers' identities in kube-system, the discovery bindings) are
//! reported as `info`: they are the control plane's, and expected.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use crate::rbac::{self, Reach};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Part of Kubernetes' own bootstrap policy: expected, shown for
    /// completeness.
    Info,
    /// Worth a look.
    Low,
    /// Fix it.
    Medium,
    /// Fix it soon: a Pod that is broken into hands this over.
    High,
    /// Cluster-wide power, or power over RBAC itself.
    Critical,
}

impl Severity {
    /// The lower-case word.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    fn lower(self) -> Severity {
        match self {
            Severity::Critical => Severity::High,
            Severity::High => Severity::Medium,
            _ => Severity::Low,
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule of the audit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Hash)]
pub enum Rule {
    /// SA001: a `default` ServiceAccount holds more than discovery.
    DefaultServiceAccount,
    /// SA002: a group every ServiceAccount (or everyone) is in holds more
    /// than discovery.
    CrowdBinding,
    /// SA010: may read Secrets (get, list, watch).
    ReadSecrets,
    /// SA011: may create or change Pods or workloads, so run as any
    /// ServiceAccount of the namespace.
    CreateWorkloads,
    /// SA012: may mint tokens (`create serviceaccounts/token`).
    MintTokens,
    /// SA013: may exec or attach into Pods.
    ExecPods,
    /// SA014: may use the kubelet API through `nodes/proxy`.
    NodesProxy,
    /// SA015: may bind, escalate or impersonate.
    Escalate,
    /// SA016: holds a rule with `*` verbs or resources.
    Wildcard,
    /// SA020: a Pod mounts a token its ServiceAccount has no use for.
    UnusedToken,
    /// SA030: a legacy token Secret is still present.
    LegacyToken,
}

impl Rule {
    /// Every rule, in id order.
    pub const ALL: [Rule; 11] = [
        Rule::DefaultServiceAccount,
        Rule::CrowdBinding,
        Rule::ReadSecrets,
        Rule::CreateWorkloads,
        Rule::MintTokens,
        Rule::ExecPods,
        Rule::NodesProxy,
        Rule::Escalate,
        Rule::Wildcard,
        Rule::UnusedToken,
        Rule::LegacyToken,
    ];

    /// The stable id (`SA010`).
    pub fn id(self) -> &'static str {
        match self {
            Rule::DefaultServiceAccount => "SA001",
            Rule::CrowdBinding => "SA002",
            Rule::ReadSecrets => "SA010",
            Rule::CreateWorkloads => "SA011",
            Rule::MintTokens => "SA012",
            Rule::ExecPods => "SA013",
            Rule::NodesProxy => "SA014",
            Rule::Escalate => "SA015",
            Rule::Wildcard => "SA016",
            Rule::UnusedToken => "SA020",
            Rule::LegacyToken => "SA030",
        }
    }

    /// A short name (`read-secrets`).
    pub fn name(self) -> &'static str {
        match self {
            Rule::DefaultServiceAccount => "default-sa-rights",
            Rule::CrowdBinding => "group-binding",
            Rule::ReadSecrets => "read-secrets",
            Rule::CreateWorkloads => "create-workloads",
            Rule::MintTokens => "mint-tokens",
            Rule::ExecPods => "exec-pods",
            Rule::NodesProxy => "nodes-proxy",
            Rule::Escalate => "bind-escalate-impersonate",
            Rule::Wildcard => "wildcard",
            Rule::UnusedToken => "unused-token",
            Rule::LegacyToken => "legacy-token",
        }
    }

    /// What to do about it.
    pub fn fix(self) -> &'static str {
        match self {
            Rule::DefaultServiceAccount => {
                "bind the role to a ServiceAccount of its own and run the Pods that need it as that one"
            }
            Rule::CrowdBinding => {
                "bind named ServiceAccounts instead of the group; every Pod is in it"
            }
            Rule::ReadSecrets => {
                "drop get/list/watch on secrets, or narrow it with resourceNames to the Secrets it needs"
            }
            Rule::CreateWorkloads => {
                "let a deployment tool create workloads; a Pod that may create Pods may run as any ServiceAccount of the namespace"
            }
            Rule::MintTokens => {
                "narrow create serviceaccounts/token with resourceNames, or drop it: minting a token is acting as that account"
            }
            Rule::ExecPods => {
                "drop pods/exec and pods/attach; debug with ephemeral containers by a person"
            }
            Rule::NodesProxy => {
                "drop nodes/proxy: the kubelet API runs commands in any Pod on the node"
            }
            Rule::Escalate => {
                "drop bind, escalate and impersonate; grant roles through a reviewed process"
            }
            Rule::Wildcard => "list the verbs and resources the workload uses",
            Rule::UnusedToken => {
                "set automountServiceAccountToken: false on the Pod or its ServiceAccount"
            }
            Rule::LegacyToken => {
                "move its users to projected tokens or TokenRequest, then delete the Secret"
            }
        }
    }
}

/// Everything the audit read from the cluster.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every ServiceAccount.
    pub service_accounts: Vec<ServiceAccount>,
    /// Every Pod.
    pub pods: Vec<Pod>,
    /// Every Role.
    pub roles: Vec<Role>,
    /// Every ClusterRole.
    pub cluster_roles: Vec<ClusterRole>,
    /// Every RoleBinding.
    pub role_bindings: Vec<RoleBinding>,
    /// Every ClusterRoleBinding.
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    /// The metadata of Secrets of type `kubernetes.io/service-account-token`;
    /// `None` when they could not be listed.
    pub legacy_tokens: Option<Vec<ObjectMeta>>,
}

/// Why a finding was made: subject → binding → role → rule, or the object
/// it is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// `serviceaccount production/ci-bot`, `group system:serviceaccounts`.
    pub subject: String,
    /// `RoleBinding production/ci-bot` (empty for object findings).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub binding: String,
    /// `Role production/pod-creator`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// `create pods`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub rule: String,
    /// The object a finding is about (`Pod production/web`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub object: String,
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    /// Which rule.
    #[serde(serialize_with = "rule_id")]
    pub rule: Rule,
    /// Its short name.
    pub name: &'static str,
    /// How bad.
    pub severity: Severity,
    /// The namespace it applies in, or `*` for the whole cluster.
    pub scope: String,
    /// Why.
    pub evidence: Evidence,
    /// What to do.
    pub fix: &'static str,
    /// Did the authorizer confirm it (a SubjectAccessReview for the
    /// evidence's rule)? `None` when not asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmed: Option<bool>,
    /// The rule as the authorizer is asked about it (not serialized).
    #[serde(skip)]
    pub ask: Option<(String, Vec<String>, PolicyRule, String)>,
}

fn rule_id<S: serde::Serializer>(r: &Rule, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.id())
}

/// A binding, read once: where it applies, what it grants, to whom.
struct Grant<'a> {
    binding: String,
    role: String,
    scope: String,
    builtin: bool,
    rules: &'a [PolicyRule],
    subjects: &'a [Subject],
    namespace: Option<&'a str>,
}

/// Part of the cluster's bootstrap policy: Kubernetes' own (label
/// `kubernetes.io/bootstrapping=rbac-defaults`), or kubeadm's, which it
/// names `kubeadm:*` and makes cluster-wide or in kube-system/kube-public
/// (where only a cluster's admins write), such as anonymous `get` of the
/// one ConfigMap `cluster-info` that joining nodes read.
fn builtin(meta: &ObjectMeta) -> bool {
    let labelled = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/bootstrapping"))
        .is_some_and(|v| v == "rbac-defaults");
    let kubeadm = meta
        .name
        .as_deref()
        .is_some_and(|n| n.starts_with("kubeadm:"))
        && matches!(
            meta.namespace.as_deref(),
            None | Some("kube-system") | Some("kube-public")
        );
    labelled || kubeadm
}

fn name(meta: &ObjectMeta) -> String {
    match &meta.namespace {
        Some(ns) => format!("{ns}/{}", meta.name.as_deref().unwrap_or_default()),
        None => meta.name.clone().unwrap_or_default(),
    }
}

fn grants(s: &Snapshot) -> Vec<Grant<'_>> {
    let cluster_roles: BTreeMap<&str, &ClusterRole> = s
        .cluster_roles
        .iter()
        .filter_map(|r| Some((r.metadata.name.as_deref()?, r)))
        .collect();
    let roles: BTreeMap<(&str, &str), &Role> = s
        .roles
        .iter()
        .filter_map(|r| {
            Some((
                (
                    r.metadata.namespace.as_deref()?,
                    r.metadata.name.as_deref()?,
                ),
                r,
            ))
        })
        .collect();
    let resolve = |ns: Option<&str>, rr: &RoleRef| -> Option<(String, &[PolicyRule], bool)> {
        match (rr.kind.as_str(), ns) {
            ("ClusterRole", _) => cluster_roles.get(rr.name.as_str()).map(|r| {
                let rules = r.rules.as_deref().unwrap_or_default();
                (
                    format!("ClusterRole {}", rr.name),
                    rules,
                    builtin(&r.metadata),
                )
            }),
            ("Role", Some(ns)) => roles.get(&(ns, rr.name.as_str())).map(|r| {
                let rules = r.rules.as_deref().unwrap_or_default();
                (
                    format!("Role {ns}/{}", rr.name),
                    rules,
                    builtin(&r.metadata),
                )
            }),
            _ => None,
        }
    };
    let mut out = Vec::new();
    for b in &s.cluster_role_bindings {
        if let Some((role, rules, role_builtin)) = resolve(None, &b.role_ref) {
            out.push(Grant {
                binding: format!("ClusterRoleBinding {}", name(&b.metadata)),
                role,
                scope: "*".into(),
                builtin: builtin(&b.metadata) && role_builtin,
                rules,
                subjects: b.subjects.as_deref().unwrap_or_default(),
                namespace: None,
            });
        }
    }
    for b in &s.role_bindings {
        let ns = b.metadata.namespace.as_deref();
        if let Some((role, rules, role_builtin)) = resolve(ns, &b.role_ref) {
            out.push(Grant {
                binding: format!("RoleBinding {}", name(&b.metadata)),
                role,
                scope: ns.unwrap_or_default().to_string(),
                builtin: builtin(&b.metadata) && role_builtin,
                rules,
                subjects: b.subjects.as_deref().unwrap_or_default(),
                namespace: ns,
            });
        }
    }
    out
}

/// What a rule hands over, if anything risky: the rule id and its
/// severity at namespace scope.
fn risks(rule: &PolicyRule) -> Vec<(Rule, Severity)> {
    let any = |verbs: &[&str], group: &str, resources: &[&str]| {
        verbs.iter().any(|v| {
            resources
                .iter()
                .any(|r| rbac::rule_allows(rule, v, group, r))
        })
    };
    let mut out = Vec::new();
    if any(&["get", "list", "watch"], "", &["secrets"]) {
        out.push((Rule::ReadSecrets, Severity::High));
    }
    let write = ["create", "update", "patch"];
    if any(&write, "", &["pods", "replicationcontrollers"])
        || any(
            &write,
            "apps",
            &["deployments", "replicasets", "statefulsets", "daemonsets"],
        )
        || any(&write, "batch", &["jobs", "cronjobs"])
    {
        out.push((Rule::CreateWorkloads, Severity::High));
    }
    if any(&["create"], "", &["serviceaccounts/token"]) {
        out.push((Rule::MintTokens, Severity::High));
    }
    if any(&["create", "get"], "", &["pods/exec", "pods/attach"]) {
        out.push((Rule::ExecPods, Severity::High));
    }
    if any(&["get", "create"], "", &["nodes/proxy"]) {
        out.push((Rule::NodesProxy, Severity::Critical));
    }
    let rbac_group = "rbac.authorization.k8s.io";
    if any(
        &["bind", "escalate"],
        rbac_group,
        &["roles", "clusterroles"],
    ) || any(
        &["impersonate"],
        "",
        &["users", "groups", "serviceaccounts"],
    ) || any(
        &["impersonate"],
        "authentication.k8s.io",
        &["userextras/*", "uids"],
    ) {
        out.push((Rule::Escalate, Severity::Critical));
    }
    if rbac::rule_is_wildcard(rule) {
        out.push((Rule::Wildcard, Severity::High));
    }
    out
}

/// Every finding in `s`, most severe first.
pub fn analyse(s: &Snapshot) -> Vec<Finding> {
    let mut found: Vec<Finding> = Vec::new();
    // ServiceAccounts that hold more than discovery, directly or through
    // a group (namespace, or `*` for every ServiceAccount).
    let mut has_rights: BTreeSet<(String, String)> = BTreeSet::new();
    let mut crowd_rights: BTreeSet<String> = BTreeSet::new();
    for g in grants(s) {
        let Some(first_right) = g.rules.iter().find(|r| !rbac::rule_is_discovery_only(r)) else {
            continue;
        };
        for subject in g.subjects {
            let who = rbac::reach(subject, g.namespace);
            let evidence = |rule: &PolicyRule| Evidence {
                subject: who.describe(),
                binding: g.binding.clone(),
                role: g.role.clone(),
                rule: rbac::describe_rule(rule),
                object: String::new(),
            };
            let mut push = |rule: Rule,
                            severity: Severity,
                            r: &PolicyRule,
                            ask: Option<(String, Vec<String>)>| {
                found.push(Finding {
                    rule,
                    name: rule.name(),
                    severity: if g.builtin { Severity::Info } else { severity },
                    scope: g.scope.clone(),
                    evidence: evidence(r),
                    fix: rule.fix(),
                    confirmed: None,
                    ask: ask.map(|(u, gs)| {
                        (
                            u,
                            gs,
                            r.clone(),
                            g.namespace.unwrap_or_default().to_string(),
                        )
                    }),
                });
            };
            match &who {
                Reach::Crowd(group) => {
                    // What the bootstrap policy gives every ServiceAccount
                    // (discovery, ClusterTrustBundles) is no reason to
                    // mount a token.
                    if !g.builtin {
                        crowd_rights.insert(group.clone());
                    }
                    let broad = g.rules.iter().any(rbac::rule_is_wildcard);
                    let sev = if broad {
                        Severity::Critical
                    } else {
                        Severity::High
                    };
                    let (user, groups) = crowd_member(group);
                    push(Rule::CrowdBinding, sev, first_right, Some((user, groups)));
                }
                Reach::ServiceAccount { namespace, name } => {
                    has_rights.insert((namespace.clone(), name.clone()));
                    let user = rbac::sa_user(namespace, name);
                    if who.is_default_service_account() {
                        push(
                            Rule::DefaultServiceAccount,
                            Severity::High,
                            first_right,
                            Some(user.clone()),
                        );
                    }
                    let mut seen = BTreeSet::new();
                    for r in g.rules {
                        for (rule, sev) in risks(r) {
                            if !seen.insert(rule) {
                                continue;
                            }
                            let mut sev = if g.scope == "*" {
                                Severity::Critical
                            } else {
                                sev
                            };
                            if rbac::rule_names_objects(r) {
                                sev = sev.lower();
                            }
                            push(rule, sev, r, Some(user.clone()));
                        }
                    }
                }
                Reach::Other => {}
            }
        }
    }

    // Pods that mount an API token their ServiceAccount has no use for.
    let crowd_reaches = |ns: &str| {
        crowd_rights.iter().any(|g| {
            g == "system:serviceaccounts"
                || g == "system:authenticated"
                || *g == format!("system:serviceaccounts:{ns}")
        })
    };
    for pod in &s.pods {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let sa = spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let mounts_api_token = spec.and_then(|s| s.volumes.as_ref()).is_some_and(|vs| {
            vs.iter().any(|v| {
                v.projected.as_ref().is_some_and(|p| {
                    p.sources.iter().flatten().any(|src| {
                        src.service_account_token
                            .as_ref()
                            .is_some_and(|t| t.audience.as_deref().unwrap_or_default().is_empty())
                    })
                })
            })
        });
        if mounts_api_token
            && !has_rights.contains(&(ns.clone(), sa.clone()))
            && !crowd_reaches(&ns)
        {
            found.push(Finding {
                rule: Rule::UnusedToken,
                name: Rule::UnusedToken.name(),
                severity: Severity::Low,
                scope: ns.clone(),
                evidence: Evidence {
                    subject: format!("serviceaccount {ns}/{sa}"),
                    binding: "no binding".into(),
                    role: String::new(),
                    rule: "nothing beyond discovery".into(),
                    object: format!("Pod {}", name(&pod.metadata)),
                },
                fix: Rule::UnusedToken.fix(),
                confirmed: None,
                ask: None,
            });
        }
    }

    for meta in s.legacy_tokens.iter().flatten() {
        let ns = meta.namespace.clone().unwrap_or_default();
        let sa = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/service-account.name").cloned())
            .unwrap_or_default();
        let last_used = meta
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/legacy-token-last-used").cloned())
            .map(|d| format!("last used {d}"))
            .unwrap_or_else(|| "no use recorded".into());
        found.push(Finding {
            rule: Rule::LegacyToken,
            name: Rule::LegacyToken.name(),
            severity: Severity::Medium,
            scope: ns.clone(),
            evidence: Evidence {
                subject: format!("serviceaccount {ns}/{sa}"),
                binding: String::new(),
                role: String::new(),
                rule: last_used,
                object: format!("Secret {}", name(meta)),
            },
            fix: Rule::LegacyToken.fix(),
            confirmed: None,
            ask: None,
        });
    }
    found.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.rule.cmp(&b.rule))
            .then(a.evidence.subject.cmp(&b.evidence.subject))
            .then(a.evidence.binding.cmp(&b.evidence.binding))
            .then(a.evidence.object.cmp(&b.evidence.object))
    });
    found
}

/// The findings about namespace `ns` at `level` or worse (info never
/// counts): those in it, and cluster-wide ones whose subject is one of
/// its ServiceAccounts or the group of them all.
pub fn about_namespace<'a>(findings: &'a [Finding], ns: &str, level: Severity) -> Vec<&'a Finding> {
    let own_sa = format!("serviceaccount {ns}/");
    let own_group = format!("group system:serviceaccounts:{ns}");
    findings
        .iter()
        .filter(|f| f.severity >= level && f.severity > Severity::Info)
        .filter(|f| {
            f.scope == ns
                || f.evidence.subject.starts_with(&own_sa)
                || f.evidence.subject == own_group
        })
        .collect()
}

/// A user the API server would put in `group`, to ask the authorizer about
/// the group's rights.
fn crowd_member(group: &str) -> (String, Vec<String>) {
    match group.strip_prefix("system:serviceaccounts:") {
        Some(ns) => rbac::sa_user(ns, "sa-lab-audit-probe"),
        None if group == "system:unauthenticated" => (
            "system:anonymous".into(),
            vec!["system:unauthenticated".into()],
        ),
        None => rbac::sa_user("sa-lab-audit-probe", "sa-lab-audit-probe"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        PodSpec, ProjectedVolumeSource, ServiceAccountTokenProjection, Volume, VolumeProjection,
    };

    fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: ns.map(Into::into),
            ..Default::default()
        }
    }

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        PolicyRule {
            api_groups: Some(v(groups)),
            resources: Some(v(resources)),
            verbs: v(verbs),
            ..Default::default()
        }
    }

    fn role(ns: &str, name: &str, rules: Vec<PolicyRule>) -> Role {
        Role {
            metadata: meta(Some(ns), name),
            rules: Some(rules),
        }
    }

    fn subject(kind: &str, name: &str, ns: Option<&str>) -> Subject {
        Subject {
            kind: kind.into(),
            name: name.into(),
            namespace: ns.map(Into::into),
            ..Default::default()
        }
    }

    fn rb(ns: &str, name: &str, role: &str, subjects: Vec<Subject>) -> RoleBinding {
        RoleBinding {
            metadata: meta(Some(ns), name),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "Role".into(),
                name: role.into(),
            },
            subjects: Some(subjects),
        }
    }

    fn pod(ns: &str, name: &str, sa: &str, token: bool) -> Pod {
        let volumes = token.then(|| {
            vec![Volume {
                name: "kube-api-access-abcde".into(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(vec![VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            path: "token".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            }]
        });
        Pod {
            metadata: meta(Some(ns), name),
            spec: Some(PodSpec {
                service_account_name: Some(sa.into()),
                volumes,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn sa(ns: &str, name: &str) -> Subject {
        subject("ServiceAccount", name, Some(ns))
    }

    /// One planted case per RBAC rule, each with a clean twin that differs
    /// in the one thing the rule is about.
    fn planted() -> Snapshot {
        let p = "p";
        Snapshot {
            roles: vec![
                role(
                    p,
                    "secret-reader",
                    vec![rule(&[""], &["secrets"], &["get", "list"])],
                ),
                role(
                    p,
                    "config-reader",
                    vec![rule(&[""], &["configmaps"], &["get", "list"])],
                ),
                role(p, "pod-creator", vec![rule(&[""], &["pods"], &["create"])]),
                role(
                    p,
                    "pod-viewer",
                    vec![rule(&[""], &["pods"], &["get", "list"])],
                ),
                role(
                    p,
                    "minter",
                    vec![rule(&[""], &["serviceaccounts/token"], &["create"])],
                ),
                role(
                    p,
                    "sa-viewer",
                    vec![rule(&[""], &["serviceaccounts"], &["get"])],
                ),
                role(p, "exec", vec![rule(&[""], &["pods/exec"], &["create"])]),
                role(p, "logs", vec![rule(&[""], &["pods/log"], &["get"])]),
                role(
                    p,
                    "binder",
                    vec![rule(&["rbac.authorization.k8s.io"], &["roles"], &["bind"])],
                ),
                role(
                    p,
                    "role-viewer",
                    vec![rule(&["rbac.authorization.k8s.io"], &["roles"], &["get"])],
                ),
                role(p, "star", vec![rule(&[""], &["configmaps"], &["*"])]),
                role(
                    "s",
                    "pod-viewer",
                    vec![rule(&[""], &["pods"], &["get", "list"])],
                ),
            ],
            role_bindings: vec![
                rb(p, "a", "secret-reader", vec![sa(p, "secret-reader")]),
                rb(p, "b", "config-reader", vec![sa(p, "config-reader")]),
                rb(p, "c", "pod-creator", vec![sa(p, "ci-bot")]),
                rb(p, "d", "pod-viewer", vec![sa(p, "pod-viewer")]),
                rb(p, "e", "minter", vec![sa(p, "minter")]),
                rb(p, "f", "sa-viewer", vec![sa(p, "sa-viewer")]),
                rb(p, "g", "exec", vec![sa(p, "debugger")]),
                rb(p, "h", "logs", vec![sa(p, "log-reader")]),
                rb(p, "i", "binder", vec![sa(p, "binder")]),
                rb(p, "j", "role-viewer", vec![sa(p, "role-viewer")]),
                rb(p, "k", "star", vec![sa(p, "star")]),
                rb(p, "l", "pod-viewer", vec![sa(p, "default")]),
                // In another namespace: a group binding gives every
                // ServiceAccount of its namespace a use for its token.
                rb(
                    "s",
                    "m",
                    "pod-viewer",
                    vec![subject("Group", "system:serviceaccounts:s", None)],
                ),
            ],
            pods: vec![
                pod(p, "web", "web", true),
                pod(p, "quiet", "web", false),
                pod(p, "busy", "pod-viewer", true),
            ],
            legacy_tokens: Some(vec![meta(Some(p), "old-token")]),
            ..Default::default()
        }
    }

    fn flagged(found: &[Finding], rule: Rule, what: &str) -> Option<Severity> {
        found
            .iter()
            .find(|f| {
                f.rule == rule
                    && (f.evidence.subject.ends_with(what) || f.evidence.object.ends_with(what))
            })
            .map(|f| f.severity)
    }

    #[test]
    fn every_rule_flags_its_planted_case_and_not_its_twin() {
        let found = analyse(&planted());
        let cases = [
            (Rule::ReadSecrets, "/secret-reader", "/config-reader"),
            (Rule::CreateWorkloads, "/ci-bot", "/pod-viewer"),
            (Rule::MintTokens, "/minter", "/sa-viewer"),
            (Rule::ExecPods, "/debugger", "/log-reader"),
            (Rule::Escalate, "/binder", "/role-viewer"),
            (Rule::Wildcard, "/star", "/config-reader"),
            (Rule::DefaultServiceAccount, "p/default", "/pod-viewer"),
            (
                Rule::CrowdBinding,
                "system:serviceaccounts:s",
                "/pod-viewer",
            ),
            (Rule::UnusedToken, "Pod p/web", "Pod p/quiet"),
            (Rule::LegacyToken, "Secret p/old-token", "Secret p/other"),
        ];
        for (rule, planted, twin) in cases {
            assert!(
                flagged(&found, rule, planted).is_some(),
                "{rule:?} missed {planted}: {found:#?}"
            );
            assert!(
                flagged(&found, rule, twin).is_none(),
                "{rule:?} flagged its twin {twin}"
            );
        }
        // A Pod whose ServiceAccount has rights is not flagged for its token.
        assert!(flagged(&found, Rule::UnusedToken, "Pod p/busy").is_none());
        let secrets = found.iter().find(|f| f.rule == Rule::ReadSecrets).unwrap();
        assert_eq!(secrets.severity, Severity::High);
        assert_eq!(secrets.evidence.binding, "RoleBinding p/a");
        assert_eq!(secrets.evidence.role, "Role p/secret-reader");
        assert_eq!(secrets.evidence.rule, "get,list secrets");
        assert_eq!(secrets.scope, "p");
        // Most severe first.
        assert!(found.windows(2).all(|w| w[0].severity >= w[1].severity));
    }

    #[test]
    fn kubeadm_bootstrap_bindings_are_info_only_where_admins_write() {
        let mut m = meta(Some("kube-public"), "kubeadm:bootstrap-signer-clusterinfo");
        assert!(builtin(&m));
        m.namespace = Some("production".into());
        assert!(
            !builtin(&m),
            "a kubeadm: name in an ordinary namespace counts"
        );
        assert!(!builtin(&meta(Some("kube-system"), "my-binding")));
        assert!(builtin(&meta(None, "kubeadm:get-nodes")));
    }

    #[test]
    fn cluster_wide_is_critical_and_resource_names_lower_it() {
        let mut s = Snapshot::default();
        s.cluster_roles.push(ClusterRole {
            metadata: meta(None, "reader"),
            rules: Some(vec![rule(&[""], &["secrets"], &["list"])]),
            ..Default::default()
        });
        s.cluster_role_bindings.push(ClusterRoleBinding {
            metadata: meta(None, "everywhere"),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: "reader".into(),
            },
            subjects: Some(vec![sa("ci", "bot")]),
        });
        let mut named = rule(&[""], &["secrets"], &["get"]);
        named.resource_names = Some(vec!["one".into()]);
        s.roles.push(role("p", "one-secret", vec![named]));
        s.role_bindings
            .push(rb("p", "x", "one-secret", vec![sa("p", "app")]));
        let found = analyse(&s);
        assert_eq!(
            flagged(&found, Rule::ReadSecrets, "ci/bot"),
            Some(Severity::Critical)
        );
        assert_eq!(
            flagged(&found, Rule::ReadSecrets, "p/app"),
            Some(Severity::Medium)
        );
        assert_eq!(found[0].scope, "*");
    }

    #[test]
    fn bootstrap_policy_is_info_and_discovery_is_nothing() {
        let mut labels = BTreeMap::new();
        labels.insert(
            "kubernetes.io/bootstrapping".to_string(),
            "rbac-defaults".to_string(),
        );
        let boot = |m: ObjectMeta| ObjectMeta {
            labels: Some(labels.clone()),
            ..m
        };
        let mut s = Snapshot::default();
        s.cluster_roles.push(ClusterRole {
            metadata: boot(meta(None, "system:controller:replicaset-controller")),
            rules: Some(vec![rule(&[""], &["pods"], &["create", "delete"])]),
            ..Default::default()
        });
        s.cluster_role_bindings.push(ClusterRoleBinding {
            metadata: boot(meta(None, "system:controller:replicaset-controller")),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: "system:controller:replicaset-controller".into(),
            },
            subjects: Some(vec![sa("kube-system", "replicaset-controller")]),
        });
        s.cluster_roles.push(ClusterRole {
            metadata: boot(meta(None, "system:discovery")),
            rules: Some(vec![PolicyRule {
                non_resource_urls: Some(vec!["/api".into()]),
                verbs: vec!["get".into()],
                ..Default::default()
            }]),
            ..Default::default()
        });
        s.cluster_role_bindings.push(ClusterRoleBinding {
            metadata: boot(meta(None, "system:discovery")),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: "system:discovery".into(),
            },
            subjects: Some(vec![subject("Group", "system:authenticated", None)]),
        });
        let found = analyse(&s);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].severity, Severity::Info);
        assert_eq!(found[0].rule, Rule::CreateWorkloads);
        // A built-in role bound by a binding of one's own is not built-in.
        s.cluster_role_bindings.push(ClusterRoleBinding {
            metadata: meta(None, "mine"),
            role_ref: s.cluster_role_bindings[0].role_ref.clone(),
            subjects: Some(vec![sa("p", "app")]),
        });
        let found = analyse(&s);
        assert_eq!(
            flagged(&found, Rule::CreateWorkloads, "p/app"),
            Some(Severity::Critical)
        );
    }

    #[test]
    fn findings_about_one_namespace() {
        let s = Snapshot {
            roles: vec![
                role("shop", "cm", vec![rule(&[""], &["configmaps"], &["get"])]),
                role("other", "cm", vec![rule(&[""], &["configmaps"], &["get"])]),
            ],
            cluster_roles: vec![ClusterRole {
                metadata: meta(None, "secrets"),
                rules: Some(vec![rule(&[""], &["secrets"], &["list"])]),
                ..Default::default()
            }],
            role_bindings: vec![
                rb("shop", "a", "cm", vec![sa("shop", "default")]),
                rb("other", "b", "cm", vec![sa("other", "default")]),
            ],
            cluster_role_bindings: vec![ClusterRoleBinding {
                metadata: meta(None, "c"),
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "ClusterRole".into(),
                    name: "secrets".into(),
                },
                subjects: Some(vec![sa("shop", "backup")]),
            }],
            ..Default::default()
        };
        let found = analyse(&s);
        let shop = about_namespace(&found, "shop", Severity::High);
        let rules: BTreeSet<_> = shop.iter().map(|f| f.rule).collect();
        assert_eq!(
            rules,
            BTreeSet::from([Rule::DefaultServiceAccount, Rule::ReadSecrets]),
            "{shop:#?}"
        );
        assert!(
            about_namespace(&found, "shop", Severity::Critical)
                .iter()
                .all(|f| f.rule == Rule::ReadSecrets)
        );
        assert!(about_namespace(&found, "third", Severity::Low).is_empty());
    }

    #[test]
    fn every_rule_has_an_id_a_name_and_a_fix() {
        let ids: BTreeSet<_> = Rule::ALL.iter().map(|r| r.id()).collect();
        assert_eq!(ids.len(), Rule::ALL.len());
        for r in Rule::ALL {
            assert!(r.id().starts_with("SA") && !r.name().is_empty() && !r.fix().is_empty());
        }
    }
}
