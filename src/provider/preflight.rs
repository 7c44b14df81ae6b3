//! The RBAC preflight: sa-lab refuses to teach on a cluster that does not
//! enforce RBAC, naming what is wrong.

use std::fmt;

use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Subject};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};

/// What makes a cluster unfit to teach ServiceAccounts on: something every
/// ServiceAccount (or everyone) may do that RBAC should refuse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A SubjectAccessReview said "allowed" for an identity that holds no
    /// permission on a cluster that enforces RBAC.
    Allowed {
        /// The user asked about, e.g. `system:serviceaccount:default:default`.
        user: String,
        /// What was asked, e.g. `list secrets in namespace default`.
        action: String,
        /// The authorizer's reason, if it gave one.
        reason: Option<String>,
    },
    /// A ClusterRoleBinding grants cluster-admin, or a role with wildcard
    /// rules, to a subject that every ServiceAccount (or everyone) matches,
    /// or to a `default` ServiceAccount.
    BroadBinding {
        /// The ClusterRoleBinding's name.
        binding: String,
        /// The ClusterRole it grants.
        role: String,
        /// The subject, e.g. `serviceaccount team-a/default`.
        subject: String,
    },
    /// The RBAC API (`rbac.authorization.k8s.io/v1`) is not served.
    RbacNotServed,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Allowed { user, action, reason } => {
                write!(f, "{user} is allowed to {action}")?;
                match reason.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
                    Some(r) => write!(f, " ({r})"),
                    None => f.write_str(" (no reason given: is the authorization mode AlwaysAllow?)"),
                }
            }
            Problem::BroadBinding { binding, role, subject } => {
                let what = if role == "cluster-admin" { "" } else { ", a role with wildcard rules," };
                write!(f, "clusterrolebinding {binding} grants {role}{what} to {subject}")
            }
            Problem::RbacNotServed => f.write_str(
                "the rbac.authorization.k8s.io API is not served: the API server does not run the RBAC authorizer",
            ),
        }
    }
}

/// Why the preflight refused a cluster, or could not check it.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// A request the preflight needs failed: usually the credentials are not
    /// a cluster admin's (it creates SubjectAccessReviews and lists
    /// ClusterRoles and ClusterRoleBindings), or the API server is down.
    #[error("preflight could not {action}: {said}")]
    Api {
        /// What it tried, e.g. `list clusterrolebindings`.
        action: String,
        /// What the API server said (`403 ... is forbidden: User ...`), or
        /// the client's error when there was no answer. Kept as text: kube's
        /// own Display of an API error repeats the status in Debug form.
        said: String,
    },
    /// The cluster does not enforce RBAC the way the course needs; every
    /// problem names what is wrong.
    #[error(
        "refusing to teach on this cluster, it does not enforce RBAC: {}",
        join(problems)
    )]
    NotEnforced {
        /// Everything found, bindings first.
        problems: Vec<Problem>,
    },
}

impl PreflightError {
    /// The problems found, empty for [`PreflightError::Api`].
    pub fn problems(&self) -> &[Problem] {
        match self {
            PreflightError::NotEnforced { problems } => problems,
            PreflightError::Api { .. } => &[],
        }
    }
}

fn join(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One question for the authorizer whose answer must be "no".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessCheck {
    /// The user, as the API server would see a ServiceAccount token.
    pub user: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// Verb, API group, resource; namespace `None` means every namespace.
    pub verb: String,
    /// The API group (`""` for the core group, `*` for all).
    pub group: String,
    /// The resource (`*` for all).
    pub resource: String,
    /// The namespace, `None` for all namespaces.
    pub namespace: Option<String>,
}

impl AccessCheck {
    /// How [`Problem::Allowed`] names the action.
    pub fn action(&self) -> String {
        let what = match (
            self.verb.as_str(),
            self.resource.as_str(),
            self.group.as_str(),
        ) {
            ("*", "*", "*") => "do anything to anything".to_owned(),
            (verb, resource, "") => format!("{verb} {resource}"),
            (verb, resource, group) => format!("{verb} {resource}.{group}"),
        };
        match &self.namespace {
            Some(ns) => format!("{what} in namespace {ns}"),
            None => format!("{what} in every namespace"),
        }
    }
}

/// The namespace of the scratch ServiceAccount the preflight asks about. It
/// need not exist: a SubjectAccessReview only evaluates the rules.
pub const SCRATCH_NAMESPACE: &str = "sa-lab-preflight";

/// The questions the preflight asks; each must be answered "no".
pub fn access_checks() -> Vec<AccessCheck> {
    let (default_user, default_groups) = crate::rbac::sa_user("default", "default");
    let (scratch_user, scratch_groups) = crate::rbac::sa_user(SCRATCH_NAMESPACE, "unprivileged");
    let check = |user: &str,
                 groups: &[String],
                 verb: &str,
                 group: &str,
                 resource: &str,
                 ns: Option<&str>| {
        AccessCheck {
            user: user.to_owned(),
            groups: groups.to_vec(),
            verb: verb.to_owned(),
            group: group.to_owned(),
            resource: resource.to_owned(),
            namespace: ns.map(str::to_owned),
        }
    };
    vec![
        check(
            &default_user,
            &default_groups,
            "list",
            "",
            "secrets",
            Some("default"),
        ),
        check(&scratch_user, &scratch_groups, "list", "", "secrets", None),
        check(&scratch_user, &scratch_groups, "*", "*", "*", None),
        check(
            "system:anonymous",
            &["system:unauthenticated".to_owned()],
            "list",
            "",
            "secrets",
            None,
        ),
    ]
}

/// Refuses to teach on a cluster that does not enforce RBAC, naming what is
/// wrong. As the cluster's admin it
///
/// 1. lists ClusterRoleBindings and ClusterRoles and flags every binding that
///    grants `cluster-admin` (or a role with wildcard rules) to the groups
///    `system:serviceaccounts`, `system:serviceaccounts:<ns>`,
///    `system:authenticated`, `system:unauthenticated`, to
///    `system:anonymous`, or to any `default` ServiceAccount;
/// 2. asks the authorizer, with SubjectAccessReviews, whether
///    `system:serviceaccount:default:default` may list secrets in `default`,
///    whether an unprivileged scratch ServiceAccount may list secrets
///    anywhere or do `*` on `*`, and whether an anonymous user may list
///    secrets: every answer must be "no".
///
/// It creates nothing but the (never stored) SubjectAccessReviews. All
/// problems are collected, so one run names everything that is wrong.
pub async fn preflight(client: &Client) -> Result<(), PreflightError> {
    let mut problems = Vec::new();

    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    match bindings.list(&ListParams::default()).await {
        Ok(crbs) => {
            let roles: Api<ClusterRole> = Api::all(client.clone());
            let roles = roles
                .list(&ListParams::default())
                .await
                .map_err(|source| api_error("list clusterroles", source))?;
            problems.extend(broad_bindings(&crbs.items, &roles.items));
        }
        Err(kube::Error::Api(s)) if s.code == 404 => problems.push(Problem::RbacNotServed),
        Err(source) => return Err(api_error("list clusterrolebindings", source)),
    }

    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    for check in access_checks() {
        let review = reviews
            .create(&PostParams::default(), &subject_access_review(&check))
            .await
            .map_err(|source| api_error("create a subjectaccessreview", source))?;
        let status = review.status.unwrap_or_default();
        if status.allowed {
            problems.push(Problem::Allowed {
                user: check.user.clone(),
                action: check.action(),
                reason: status.reason,
            });
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::NotEnforced { problems })
    }
}

fn api_error(action: &str, source: kube::Error) -> PreflightError {
    let (action, said) = match &source {
        kube::Error::Api(s) if s.code == 401 || s.code == 403 => (
            format!("{action}: it needs a cluster admin's credentials"),
            format!("the API server answered {} {}", s.code, s.message),
        ),
        kube::Error::Api(s) => (
            action.to_owned(),
            format!("the API server answered {} {}", s.code, s.message),
        ),
        other => (action.to_owned(), other.to_string()),
    };
    PreflightError::Api { action, said }
}

/// The SubjectAccessReview that asks `check`.
pub fn subject_access_review(check: &AccessCheck) -> SubjectAccessReview {
    crate::rbac::access_review(
        &check.user,
        &check.groups,
        crate::rbac::attrs(
            &check.verb,
            &check.group,
            &check.resource,
            check.namespace.as_deref().unwrap_or_default(),
        ),
    )
}

/// Every ClusterRoleBinding that grants `cluster-admin`, or a ClusterRole
/// with a wildcard verb or resource, to a subject every ServiceAccount (or
/// everyone) matches, or to a `default` ServiceAccount. Sorted by binding,
/// then subject. Pure: the preflight feeds it what it listed.
pub fn broad_bindings(bindings: &[ClusterRoleBinding], roles: &[ClusterRole]) -> Vec<Problem> {
    let mut found = Vec::new();
    for crb in bindings {
        let role = &crb.role_ref.name;
        if crb.role_ref.kind != "ClusterRole" || !crate::rbac::is_broad_cluster_role(role, roles) {
            continue;
        }
        for subject in crb.subjects.iter().flatten() {
            if let Some(subject) = risky_subject(subject) {
                found.push(Problem::BroadBinding {
                    binding: crb.metadata.name.clone().unwrap_or_default(),
                    role: role.clone(),
                    subject,
                });
            }
        }
    }
    found.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    found
}

/// How a subject is named in a problem, if it is one that must never hold
/// broad rights: one every ServiceAccount (or everyone) matches, or a
/// `default` ServiceAccount.
fn risky_subject(subject: &Subject) -> Option<String> {
    match crate::rbac::reach(subject, None) {
        r @ crate::rbac::Reach::Crowd(_) => Some(r.describe()),
        r if r.is_default_service_account() => Some(match subject.kind.as_str() {
            "User" => format!("user {}", subject.name),
            _ => format!(
                "serviceaccount {}/default",
                subject.namespace.as_deref().unwrap_or("?")
            ),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn crb(name: &str, role: &str, subjects: &[(&str, &str, Option<&str>)]) -> ClusterRoleBinding {
        ClusterRoleBinding {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: role.into(),
            },
            subjects: Some(
                subjects
                    .iter()
                    .map(|(kind, name, ns)| Subject {
                        kind: (*kind).into(),
                        name: (*name).into(),
                        namespace: ns.map(Into::into),
                        ..Subject::default()
                    })
                    .collect(),
            ),
        }
    }

    fn role(name: &str, verbs: &[&str], resources: &[&str]) -> ClusterRole {
        ClusterRole {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec!["".into()]),
                verbs: verbs.iter().map(|v| (*v).into()).collect(),
                resources: Some(resources.iter().map(|r| (*r).into()).collect()),
                ..PolicyRule::default()
            }]),
            ..ClusterRole::default()
        }
    }

    #[test]
    fn default_bindings_of_a_fresh_cluster_are_fine() {
        let roles = [
            role("cluster-admin", &["*"], &["*"]),
            role(
                "system:basic-user",
                &["create"],
                &["selfsubjectaccessreviews"],
            ),
            role(
                "system:controller:namespace-controller",
                &["delete", "list"],
                &["*"],
            ),
        ];
        let crbs = [
            crb(
                "cluster-admin",
                "cluster-admin",
                &[("Group", "system:masters", None)],
            ),
            crb(
                "system:basic-user",
                "system:basic-user",
                &[("Group", "system:authenticated", None)],
            ),
            crb(
                "system:controller:namespace-controller",
                "system:controller:namespace-controller",
                &[(
                    "ServiceAccount",
                    "namespace-controller",
                    Some("kube-system"),
                )],
            ),
            crb(
                "kubeadm:cluster-admins",
                "cluster-admin",
                &[("Group", "kubeadm:cluster-admins", None)],
            ),
        ];
        assert_eq!(broad_bindings(&crbs, &roles), vec![]);
    }

    #[test]
    fn broad_bindings_are_named() {
        let roles = [
            role("everything", &["*"], &["pods"]),
            role("reader", &["get"], &["pods"]),
        ];
        let crbs = [
            crb(
                "oops",
                "cluster-admin",
                &[("ServiceAccount", "default", Some("team-a"))],
            ),
            crb(
                "all-sas",
                "everything",
                &[("Group", "system:serviceaccounts", None)],
            ),
            crb(
                "ns-sas",
                "cluster-admin",
                &[("Group", "system:serviceaccounts:team-b", None)],
            ),
            crb(
                "anon",
                "cluster-admin",
                &[("User", "system:anonymous", None)],
            ),
            crb(
                "everyone",
                "cluster-admin",
                &[("Group", "system:authenticated", None)],
            ),
            crb(
                "harmless",
                "reader",
                &[("Group", "system:serviceaccounts", None)],
            ),
            crb(
                "named-sa",
                "cluster-admin",
                &[("ServiceAccount", "deployer", Some("ci"))],
            ),
            crb(
                "missing-role",
                "gone",
                &[("Group", "system:unauthenticated", None)],
            ),
        ];
        let found = broad_bindings(&crbs, &roles);
        let names: Vec<_> = found
            .iter()
            .map(|p| match p {
                Problem::BroadBinding { binding, .. } => binding.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["all-sas", "anon", "everyone", "ns-sas", "oops"]);
        let oops = found
            .iter()
            .find(|p| p.to_string().contains("oops"))
            .unwrap();
        assert_eq!(
            oops.to_string(),
            "clusterrolebinding oops grants cluster-admin to serviceaccount team-a/default"
        );
        let all = found
            .iter()
            .find(|p| p.to_string().contains("all-sas"))
            .unwrap();
        assert_eq!(
            all.to_string(),
            "clusterrolebinding all-sas grants everything, a role with wildcard rules, to group system:serviceaccounts"
        );
    }

    #[test]
    fn preflight_error_names_every_problem() {
        let err = PreflightError::NotEnforced {
            problems: vec![
                Problem::BroadBinding {
                    binding: "oops".into(),
                    role: "cluster-admin".into(),
                    subject: "serviceaccount a/default".into(),
                },
                Problem::Allowed {
                    user: "system:serviceaccount:default:default".into(),
                    action: "list secrets in namespace default".into(),
                    reason: None,
                },
                Problem::RbacNotServed,
            ],
        };
        let msg = err.to_string();
        assert!(
            msg.starts_with("refusing to teach on this cluster"),
            "{msg}"
        );
        assert!(
            msg.contains("clusterrolebinding oops grants cluster-admin"),
            "{msg}"
        );
        assert!(
            msg.contains("system:serviceaccount:default:default is allowed to list secrets"),
            "{msg}"
        );
        assert!(msg.contains("AlwaysAllow"), "{msg}");
        assert!(
            msg.contains("rbac.authorization.k8s.io API is not served"),
            "{msg}"
        );
        assert_eq!(err.problems().len(), 3);
    }

    #[test]
    fn access_checks_ask_as_service_accounts_would_be_seen() {
        let checks = access_checks();
        let first = &checks[0];
        assert_eq!(first.user, "system:serviceaccount:default:default");
        assert_eq!(
            first.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:default",
                "system:authenticated"
            ]
        );
        assert_eq!(first.action(), "list secrets in namespace default");
        let star = checks.iter().find(|c| c.verb == "*").unwrap();
        assert_eq!(star.action(), "do anything to anything in every namespace");
        assert!(
            star.groups
                .contains(&format!("system:serviceaccounts:{SCRATCH_NAMESPACE}"))
        );

        let sar = serde_json::to_value(subject_access_review(first)).unwrap();
        assert_eq!(sar["apiVersion"], "authorization.k8s.io/v1");
        assert_eq!(sar["kind"], "SubjectAccessReview");
        assert_eq!(sar["spec"]["user"], "system:serviceaccount:default:default");
        assert_eq!(sar["spec"]["resourceAttributes"]["verb"], "list");
        assert_eq!(sar["spec"]["resourceAttributes"]["resource"], "secrets");
        assert_eq!(sar["spec"]["resourceAttributes"]["namespace"], "default");
    }
}
