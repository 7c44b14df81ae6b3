//! Questions for the authorizer, built one way for the whole project: the
//! chapters, the preflight and the audit ask them alike; and the one reading
//! of RBAC objects the preflight and the audit share: who a binding subject
//! stands for, and what a rule grants.

use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Subject};

/// The user name and groups the API server gives ServiceAccount `ns/name`.
pub fn sa_user(ns: &str, name: &str) -> (String, Vec<String>) {
    (
        format!("system:serviceaccount:{ns}:{name}"),
        vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
    )
}

/// The RBAC attributes `verb` `group`/`resource` in namespace `ns` (`""`
/// for cluster scope or every namespace).
pub fn attrs(verb: &str, group: &str, resource: &str, ns: &str) -> ResourceAttributes {
    ResourceAttributes {
        verb: Some(verb.into()),
        group: Some(group.into()),
        resource: Some(resource.into()),
        namespace: (!ns.is_empty()).then(|| ns.into()),
        ..Default::default()
    }
}

/// The SubjectAccessReview that asks whether `user` (in `groups`) may do
/// `attrs`: what `kubectl auth can-i --as` sends.
pub fn access_review(
    user: &str,
    groups: &[String],
    attrs: ResourceAttributes,
) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(groups.to_vec()),
            resource_attributes: Some(attrs),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Who a binding's subject stands for, as far as ServiceAccounts go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// One ServiceAccount (`kind: ServiceAccount`, or the user
    /// `system:serviceaccount:<ns>:<name>`).
    ServiceAccount {
        /// Its namespace (a RoleBinding's own when the subject names none).
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A group or user that every ServiceAccount (or everyone) is in:
    /// `system:serviceaccounts`, `system:serviceaccounts:<ns>`,
    /// `system:authenticated`, `system:unauthenticated`, `system:anonymous`.
    Crowd(String),
    /// Anyone else (a person, another group).
    Other,
}

impl Reach {
    /// How a message names it: `serviceaccount team-a/default`, `group
    /// system:serviceaccounts`.
    pub fn describe(&self) -> String {
        match self {
            Reach::ServiceAccount { namespace, name } => {
                format!("serviceaccount {namespace}/{name}")
            }
            Reach::Crowd(who) if who == "system:anonymous" => format!("user {who}"),
            Reach::Crowd(who) => format!("group {who}"),
            Reach::Other => "someone else".into(),
        }
    }

    /// A `default` ServiceAccount: every Pod that names none runs as it.
    pub fn is_default_service_account(&self) -> bool {
        matches!(self, Reach::ServiceAccount { name, .. } if name == "default")
    }
}

/// Who `subject` stands for; `binding_ns` is the namespace of the
/// RoleBinding it is in (`None` for a ClusterRoleBinding).
pub fn reach(subject: &Subject, binding_ns: Option<&str>) -> Reach {
    let name = subject.name.as_str();
    match subject.kind.as_str() {
        "ServiceAccount" => Reach::ServiceAccount {
            namespace: subject
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .or_else(|| binding_ns.map(str::to_owned))
                .unwrap_or_default(),
            name: name.to_owned(),
        },
        "Group"
            if matches!(
                name,
                "system:serviceaccounts" | "system:authenticated" | "system:unauthenticated"
            ) || name.starts_with("system:serviceaccounts:") =>
        {
            Reach::Crowd(name.to_owned())
        }
        "User" if name == "system:anonymous" => Reach::Crowd(name.to_owned()),
        "User" => match name
            .strip_prefix("system:serviceaccount:")
            .and_then(|r| r.split_once(':'))
        {
            Some((ns, sa)) => Reach::ServiceAccount {
                namespace: ns.to_owned(),
                name: sa.to_owned(),
            },
            None => Reach::Other,
        },
        _ => Reach::Other,
    }
}

fn star_or(list: &[String], want: &str) -> bool {
    list.iter().any(|v| v == "*" || v == want)
}

/// Does `rule` grant `verb` on `group`/`resource` (`pods`, `pods/exec`)?
/// `*` in the rule matches anything; resourceNames are ignored (see
/// [`rule_names_objects`]).
pub fn rule_allows(rule: &PolicyRule, verb: &str, group: &str, resource: &str) -> bool {
    let groups = rule.api_groups.as_deref().unwrap_or_default();
    let resources = rule.resources.as_deref().unwrap_or_default();
    star_or(&rule.verbs, verb)
        && star_or(groups, group)
        && (star_or(resources, resource)
            || resource
                .split_once('/')
                .is_some_and(|(r, _)| resources.iter().any(|x| x == &format!("{r}/*"))))
}

/// A rule narrowed to named objects (`resourceNames`).
pub fn rule_names_objects(rule: &PolicyRule) -> bool {
    rule.resource_names.as_ref().is_some_and(|n| !n.is_empty())
}

/// A rule with `*` among its verbs or resources.
pub fn rule_is_wildcard(rule: &PolicyRule) -> bool {
    let star = |v: &[String]| v.iter().any(|s| s == "*");
    star(&rule.verbs) || rule.resources.as_deref().is_some_and(star)
}

/// A rule that grants nothing but what every authenticated caller may do
/// anyway: API discovery (`get` on non-resource URLs) and the self reviews
/// (`create` selfsubjectreviews, -accessreviews, -rulesreviews).
pub fn rule_is_discovery_only(rule: &PolicyRule) -> bool {
    let resources = rule.resources.as_deref().unwrap_or_default();
    let urls = rule.non_resource_urls.as_deref().unwrap_or_default();
    let only_get = rule.verbs.iter().all(|v| v == "get" || v == "head");
    let self_reviews = !resources.is_empty()
        && rule.verbs.iter().all(|v| v == "create")
        && resources.iter().all(|r| {
            matches!(
                r.as_str(),
                "selfsubjectreviews" | "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
            )
        });
    (resources.is_empty() && !urls.is_empty() && only_get) || self_reviews
}

/// `cluster-admin`, or a ClusterRole (among `roles`) with a wildcard rule.
pub fn is_broad_cluster_role(name: &str, roles: &[ClusterRole]) -> bool {
    name == "cluster-admin"
        || roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(name))
            .is_some_and(|r| r.rules.iter().flatten().any(rule_is_wildcard))
}

/// A rule as one line: `list,watch secrets`, `get nodes/proxy`,
/// `* *.apps`, `get /api/*`.
pub fn describe_rule(rule: &PolicyRule) -> String {
    let verbs = rule.verbs.join(",");
    let groups = rule.api_groups.as_deref().unwrap_or_default();
    let mut what: Vec<String> = Vec::new();
    for r in rule.resources.iter().flatten() {
        if groups.is_empty() || groups.iter().all(|g| g.is_empty()) {
            what.push(r.clone());
        } else {
            for g in groups.iter() {
                what.push(if g.is_empty() {
                    r.clone()
                } else {
                    format!("{r}.{g}")
                });
            }
        }
    }
    what.extend(rule.non_resource_urls.iter().flatten().cloned());
    let mut s = format!("{verbs} {}", what.join(","));
    if let Some(names) = rule.resource_names.as_ref().filter(|n| !n.is_empty()) {
        s.push_str(&format!(" (only {})", names.join(",")));
    }
    s
}

/// The SubjectAccessReview that asks whether `user` in `groups` holds the
/// first verb, group and resource (or URL) of `rule` in namespace `ns`.
pub fn review_of_rule(
    user: &str,
    groups: &[String],
    rule: &PolicyRule,
    ns: &str,
) -> SubjectAccessReview {
    let first = |v: Option<&Vec<String>>| v.and_then(|v| v.first().cloned()).unwrap_or_default();
    let verb = rule.verbs.first().cloned().unwrap_or_default();
    let mut review = access_review(user, groups, attrs(&verb, "", "", ns));
    if rule.resources.as_ref().is_some_and(|r| !r.is_empty()) {
        let resource = first(rule.resources.as_ref());
        let (resource, sub) = match resource.split_once('/') {
            Some((r, s)) => (r.to_owned(), Some(s.to_owned())),
            None => (resource, None),
        };
        let mut a = attrs(&verb, &first(rule.api_groups.as_ref()), &resource, ns);
        a.subresource = sub;
        a.name = rule
            .resource_names
            .as_ref()
            .and_then(|n| n.first().cloned());
        review.spec.resource_attributes = Some(a);
    } else {
        review.spec.resource_attributes = None;
        review.spec.non_resource_attributes = Some(NonResourceAttributes {
            path: Some(first(rule.non_resource_urls.as_ref())),
            verb: Some(verb),
        });
    }
    review
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_identity_and_attributes() {
        let (user, groups) = sa_user("production", "pod-manager");
        assert_eq!(user, "system:serviceaccount:production:pod-manager");
        assert_eq!(
            groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:production",
                "system:authenticated"
            ]
        );
        let a = attrs("list", "", "namespaces", "");
        assert_eq!(a.namespace, None);
        assert_eq!(a.group.as_deref(), Some(""));
        let r = access_review(&user, &groups, attrs("get", "apps", "deployments", "p"));
        let ra = r.spec.resource_attributes.unwrap();
        assert_eq!(ra.namespace.as_deref(), Some("p"));
        assert_eq!(r.spec.user.as_deref(), Some(user.as_str()));
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

    #[test]
    fn who_a_subject_stands_for() {
        let s = |kind: &str, name: &str, ns: Option<&str>| Subject {
            kind: kind.into(),
            name: name.into(),
            namespace: ns.map(Into::into),
            ..Default::default()
        };
        let sa = |ns: &str, name: &str| Reach::ServiceAccount {
            namespace: ns.into(),
            name: name.into(),
        };
        assert_eq!(
            reach(&s("ServiceAccount", "app", None), Some("staging")),
            sa("staging", "app")
        );
        assert_eq!(
            reach(&s("ServiceAccount", "app", Some("prod")), Some("x")),
            sa("prod", "app")
        );
        assert_eq!(
            reach(&s("User", "system:serviceaccount:p:default", None), None),
            sa("p", "default")
        );
        assert!(
            reach(&s("User", "system:serviceaccount:p:default", None), None)
                .is_default_service_account()
        );
        for g in [
            "system:serviceaccounts",
            "system:serviceaccounts:p",
            "system:authenticated",
            "system:unauthenticated",
        ] {
            assert_eq!(
                reach(&s("Group", g, None), None),
                Reach::Crowd(g.into()),
                "{g}"
            );
        }
        assert_eq!(
            reach(&s("User", "system:anonymous", None), None).describe(),
            "user system:anonymous"
        );
        assert_eq!(
            reach(&s("Group", "system:masters", None), None),
            Reach::Other
        );
        assert_eq!(reach(&s("User", "alice", None), None), Reach::Other);
    }

    #[test]
    fn what_a_rule_grants() {
        let secrets = rule(&[""], &["secrets"], &["get", "list"]);
        assert!(rule_allows(&secrets, "list", "", "secrets"));
        assert!(!rule_allows(&secrets, "list", "apps", "secrets"));
        assert!(!rule_allows(&secrets, "create", "", "secrets"));
        let all = rule(&["*"], &["*"], &["*"]);
        assert!(rule_allows(&all, "create", "apps", "deployments"));
        assert!(rule_is_wildcard(&all) && !rule_is_wildcard(&secrets));
        let sub = rule(&[""], &["pods/*"], &["create"]);
        assert!(rule_allows(&sub, "create", "", "pods/exec"));
        assert!(!rule_allows(&sub, "create", "", "pods"));
        assert_eq!(describe_rule(&secrets), "get,list secrets");
        assert_eq!(
            describe_rule(&rule(&["apps"], &["deployments"], &["create"])),
            "create deployments.apps"
        );
        let discovery = PolicyRule {
            non_resource_urls: Some(vec!["/api".into(), "/api/*".into()]),
            verbs: vec!["get".into()],
            ..Default::default()
        };
        assert!(rule_is_discovery_only(&discovery));
        let selfreview = rule(
            &["authorization.k8s.io"],
            &["selfsubjectaccessreviews"],
            &["create"],
        );
        assert!(rule_is_discovery_only(&selfreview));
        assert!(!rule_is_discovery_only(&secrets));
        let review = review_of_rule("u", &[], &rule(&[""], &["pods/exec"], &["create"]), "p");
        let a = review.spec.resource_attributes.unwrap();
        assert_eq!(
            (a.resource.as_deref(), a.subresource.as_deref()),
            (Some("pods"), Some("exec"))
        );
        let review = review_of_rule("u", &[], &discovery, "");
        assert_eq!(
            review.spec.non_resource_attributes.unwrap().path.as_deref(),
            Some("/api")
        );
    }
}
