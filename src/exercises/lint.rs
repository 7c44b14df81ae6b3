//! Reading the learner's objects: the least-privilege check (wildcards,
//! built-in ClusterRoles, grants to groups or users), and what a failed row
//! usually means ("your Role names `pod`: resources are plural, `pods`").
//! Pure functions of the objects and the rows: no cluster.

use serde_json::Value;

use super::def::{LEAST_PRIVILEGE_ROWS, NONE_FOUND, Observe, RowSpec};
use super::input::LearnerObject;
use crate::chapters::Row;
use crate::chapters::kit::row;

/// Verbs that are as good as a wildcard: they let a subject grant or
/// become more than it holds.
const ESCALATING_VERBS: [&str; 3] = ["escalate", "bind", "impersonate"];

/// One rule of a learner's Role or ClusterRole.
struct Rule<'a> {
    role: &'a LearnerObject,
    groups: Vec<&'a str>,
    resources: Vec<&'a str>,
    verbs: Vec<&'a str>,
    urls: Vec<&'a str>,
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn rules(objects: &[LearnerObject]) -> Vec<Rule<'_>> {
    objects
        .iter()
        .filter(|o| matches!(o.kind(), "Role" | "ClusterRole"))
        .flat_map(|o| {
            o.obj["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |r| Rule {
                    role: o,
                    groups: strings(&r["apiGroups"]),
                    resources: strings(&r["resources"]),
                    verbs: strings(&r["verbs"]),
                    urls: strings(&r["nonResourceURLs"]),
                })
        })
        .collect()
}

fn bindings(objects: &[LearnerObject]) -> impl Iterator<Item = &LearnerObject> {
    objects
        .iter()
        .filter(|o| matches!(o.kind(), "RoleBinding" | "ClusterRoleBinding"))
}

fn role_name(o: &LearnerObject) -> String {
    format!("{} `{}`", o.kind(), o.name())
}

/// What the least-privilege check found, one list per row of
/// [`LEAST_PRIVILEGE_ROWS`].
pub fn least_privilege(objects: &[LearnerObject], allowed_roles: &[String]) -> [Vec<String>; 3] {
    let mut wild = Vec::new();
    for r in rules(objects) {
        for (field, values) in [
            ("apiGroups", &r.groups),
            ("resources", &r.resources),
            ("verbs", &r.verbs),
            ("nonResourceURLs", &r.urls),
        ] {
            if values.iter().any(|v| *v == "*" || v.ends_with("/*")) {
                wild.push(format!("{} has `*` in {field}", role_name(r.role)));
            }
        }
        for v in r.verbs.iter().filter(|v| ESCALATING_VERBS.contains(v)) {
            wild.push(format!("{} allows `{v}`", role_name(r.role)));
        }
    }
    let defined: Vec<&str> = objects
        .iter()
        .filter(|o| o.kind() == "ClusterRole")
        .map(LearnerObject::name)
        .collect();
    let mut built_in = Vec::new();
    let mut groups = Vec::new();
    for b in bindings(objects) {
        let rr = &b.obj["roleRef"];
        let name = rr["name"].as_str().unwrap_or_default();
        if rr["kind"] == "ClusterRole"
            && !defined.contains(&name)
            && !allowed_roles.iter().any(|a| a == name)
        {
            built_in.push(format!(
                "{} binds ClusterRole `{name}`, which your files do not define",
                role_name(b)
            ));
        }
        for s in b.obj["subjects"].as_array().into_iter().flatten() {
            let kind = s["kind"].as_str().unwrap_or_default();
            if matches!(kind, "Group" | "User") {
                let who = s["name"].as_str().unwrap_or_default();
                groups.push(format!("{} grants to {kind} `{who}`", role_name(b)));
            }
        }
    }
    [wild, built_in, groups]
}

/// The least-privilege rows: `none` when nothing was found.
pub fn least_privilege_rows(objects: &[LearnerObject], allowed_roles: &[String]) -> Vec<Row> {
    let found = least_privilege(objects, allowed_roles);
    LEAST_PRIVILEGE_ROWS
        .iter()
        .zip(found)
        .map(|((id, _), found)| {
            let actual = match found.as_slice() {
                [] => NONE_FOUND.to_string(),
                [one] => one.clone(),
                [first, rest @ ..] => format!("{first} (and {} more)", rest.len()),
            };
            let message = if found.len() > 1 {
                found.join("; ")
            } else {
                String::new()
            };
            row(*id, "your files", actual, message)
        })
        .collect()
}

/// The Pod's ServiceAccount, as `(namespace, name)`.
pub type Account<'a> = (&'a str, &'a str);

/// What a failed row usually means, from the row and the learner's
/// objects (`None` when nothing specific can be said). `sa` is who the
/// Pod ran as.
pub fn advise(
    spec: &RowSpec,
    observed: &Row,
    sa: Option<Account<'_>>,
    objects: &[LearnerObject],
) -> Option<String> {
    if observed.actual == "Pod refused" {
        return observed
            .message
            .contains("error looking up service account")
            .then(|| {
                "the Pod names a ServiceAccount that does not exist in its namespace: \
                 spec.serviceAccountName must be the metadata.name of a ServiceAccount there"
                    .to_string()
            });
    }
    match spec.observe() {
        Observe::Request(_) => request_advice(spec, observed, sa, objects),
        Observe::Whoami if observed.actual.starts_with("error") => Some(no_token()),
        Observe::Whoami => Some(format!(
            "the Pod runs as `{}`: a Pod's identity is its spec.serviceAccountName \
             (`default` when it names none)",
            observed.actual
        )),
        Observe::File(path) if path.starts_with(lab_kit::SA_DIR) => {
            Some(if spec.expect == "absent" {
                "the token is still mounted: set automountServiceAccountToken: false on the \
             ServiceAccount (for all its Pods) or on the Pod (the Pod's setting wins)"
                    .into()
            } else {
                "nothing is mounted there: automount is off for this Pod (its own setting, or its \
             ServiceAccount's when the Pod says nothing), or no volume is mounted at that path"
                    .into()
            })
        }
        _ => None,
    }
}

fn no_token() -> String {
    "there is no token in the Pod: automount is off for it (or its ServiceAccount), and no \
     projected token is mounted where in-cluster config looks"
        .into()
}

fn request_advice(
    spec: &RowSpec,
    observed: &Row,
    sa: Option<Account<'_>>,
    objects: &[LearnerObject],
) -> Option<String> {
    match observed.actual.as_str() {
        "unauthorized" => {
            return Some(
                "401: the API server did not accept the credential at all (not a token for \
                 it: another audience, expired, or not a token); no RoleBinding changes a 401"
                    .into(),
            );
        }
        "error" if observed.message.starts_with("no credentials") => return Some(no_token()),
        "allowed" => {
            return Some(
                "this must stay refused: grant only what the task asks, to the ServiceAccount \
                 that needs it"
                    .into(),
            );
        }
        "forbidden" if spec.expect == "allowed" => {}
        _ => return None,
    }
    let (verb, group, resource, sub) = (
        observed.verb.as_str(),
        observed.group.as_str(),
        observed.resource.as_str(),
        observed.subresource.as_str(),
    );
    let rules = rules(objects);
    let names = |r: &Rule, res: &str| r.resources.contains(&res);
    for r in &rules {
        if let Some(single) = r.resources.iter().find(|x| format!("{x}s") == resource) {
            return Some(format!(
                "your {} names `{single}`: resources are plural, `{resource}`",
                role_name(r.role)
            ));
        }
    }
    if !sub.is_empty() {
        let full = format!("{resource}/{sub}");
        if let Some(r) = rules
            .iter()
            .find(|r| names(r, resource) && !names(r, &full))
        {
            return Some(format!(
                "`{full}` is a subresource with rules of its own: your {} names `{resource}`, \
                 which does not include `{full}`; add `{full}` to resources",
                role_name(r.role)
            ));
        }
    }
    let wanted = if sub.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}/{sub}")
    };
    if let Some(r) = rules
        .iter()
        .find(|r| names(r, &wanted) && !r.groups.contains(&group) && !r.groups.contains(&"*"))
    {
        return Some(if group.is_empty() {
            format!(
                "your {} lists apiGroups {:?}: the core API group (pods, secrets, \
                 serviceaccounts...) is written `\"\"`",
                role_name(r.role),
                r.groups
            )
        } else {
            format!(
                "`{resource}` is in API group `{group}`: your {} lists apiGroups {:?}",
                role_name(r.role),
                r.groups
            )
        });
    }
    if let Some(r) = rules
        .iter()
        .find(|r| names(r, &wanted) && !r.verbs.contains(&verb) && !r.verbs.contains(&"*"))
    {
        return Some(format!(
            "your {} allows {:?} on `{wanted}`, not `{verb}`",
            role_name(r.role),
            r.verbs
        ));
    }
    binding_advice(observed, sa, objects)
}

fn binding_advice(
    observed: &Row,
    sa: Option<Account<'_>>,
    objects: &[LearnerObject],
) -> Option<String> {
    let defined = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|o| o.kind() == kind && o.name() == name)
    };
    for b in bindings(objects) {
        let rr = &b.obj["roleRef"];
        let (kind, name) = (
            rr["kind"].as_str().unwrap_or_default(),
            rr["name"].as_str().unwrap_or_default(),
        );
        let other = if kind == "Role" {
            "ClusterRole"
        } else {
            "Role"
        };
        if defined(kind, name).is_none() && defined(other, name).is_some() {
            return Some(format!(
                "your {} points at {kind} `{name}`, but `{name}` is a {other}: \
                 roleRef.kind must be {other}",
                role_name(b)
            ));
        }
        if kind == "Role" && defined(kind, name).is_none() {
            return Some(format!(
                "your {} points at Role `{name}`, which none of your files defines \
                 (a binding to a missing role grants nothing, and the API server accepts it)",
                role_name(b)
            ));
        }
    }
    let (ns, name) = sa?;
    let mut names_sa = false;
    for b in bindings(objects) {
        for s in b.obj["subjects"].as_array().into_iter().flatten() {
            if s["kind"] != "ServiceAccount" || s["name"] != name {
                continue;
            }
            let own = b.namespace().unwrap_or_default();
            match s["namespace"].as_str() {
                None | Some("") if b.kind() == "RoleBinding" && own != ns => {
                    return Some(format!(
                        "your {} names ServiceAccount `{name}` without a namespace: in a \
                         RoleBinding that means its own namespace ({own}), but the Pod runs \
                         as {ns}/{name}; write `namespace: {ns}` in the subject",
                        role_name(b)
                    ));
                }
                Some(other) if other != ns => {
                    return Some(format!(
                        "your {} names ServiceAccount {other}/{name}, but the Pod runs as \
                         {ns}/{name}: a subject's namespace is part of who it is",
                        role_name(b)
                    ));
                }
                _ => names_sa = true,
            }
            if b.kind() == "RoleBinding"
                && !observed.namespace.is_empty()
                && own != observed.namespace
            {
                return Some(format!(
                    "your {} is in namespace {own}: a RoleBinding grants only in its own \
                     namespace, and this request is in {}",
                    role_name(b),
                    observed.namespace
                ));
            }
        }
    }
    (!names_sa).then(|| {
        format!(
            "nothing binds a role to ServiceAccount {ns}/{name} (who the Pod runs as): a \
             RoleBinding's subjects must name it"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(file: &str, yaml: &str) -> LearnerObject {
        LearnerObject {
            file: file.into(),
            obj: serde_saphyr::from_str(yaml).unwrap(),
        }
    }

    fn role(rules: &str) -> LearnerObject {
        obj(
            "role.yaml",
            &format!(
                "{{apiVersion: rbac.authorization.k8s.io/v1, kind: Role, metadata: {{name: reader, namespace: shop}}, rules: {rules}}}"
            ),
        )
    }

    fn binding(kind: &str, role_kind: &str, role: &str, subjects: &str) -> LearnerObject {
        obj(
            "rb.yaml",
            &format!(
                "{{apiVersion: rbac.authorization.k8s.io/v1, kind: {kind}, metadata: {{name: b, namespace: shop}}, \
                 roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: {role_kind}, name: {role}}}, subjects: {subjects}}}"
            ),
        )
    }

    const REPORTER: &str = "[{kind: ServiceAccount, name: reporter, namespace: shop}]";

    fn spec(expect: &str) -> RowSpec {
        serde_saphyr::from_str(&format!(
            "{{id: a, check: c, request: {{verb: get, resource: pods, subresource: log}}, expect: {expect}}}"
        ))
        .unwrap()
    }

    fn forbidden(verb: &str, group: &str, resource: &str, sub: &str) -> Row {
        Row {
            actual: "forbidden".into(),
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: "shop".into(),
            ..Row::default()
        }
    }

    fn advice(objects: &[LearnerObject], row: &Row) -> String {
        advise(&spec("allowed"), row, Some(("shop", "reporter")), objects).unwrap_or_default()
    }

    #[test]
    fn least_privilege_finds_wildcards_built_in_roles_and_groups() {
        let objects = vec![
            role("[{apiGroups: ['*'], resources: [pods], verbs: [get, bind]}]"),
            binding("RoleBinding", "ClusterRole", "edit", REPORTER),
            binding(
                "RoleBinding",
                "Role",
                "reader",
                "[{kind: Group, name: 'system:serviceaccounts:shop', apiGroup: rbac.authorization.k8s.io}]",
            ),
        ];
        let [wild, built_in, groups] = least_privilege(&objects, &[]);
        assert_eq!(
            wild,
            [
                "Role `reader` has `*` in apiGroups",
                "Role `reader` allows `bind`"
            ]
        );
        assert_eq!(
            built_in,
            ["RoleBinding `b` binds ClusterRole `edit`, which your files do not define"]
        );
        assert_eq!(
            groups,
            ["RoleBinding `b` grants to Group `system:serviceaccounts:shop`"]
        );
        let [_, allowed, _] = least_privilege(&objects, &["edit".into()]);
        assert!(allowed.is_empty());
        let rows = least_privilege_rows(&objects, &[]);
        assert_eq!(
            rows[0].actual,
            "Role `reader` has `*` in apiGroups (and 1 more)"
        );
        let clean = least_privilege_rows(
            &[role("[{apiGroups: [''], resources: [pods], verbs: [get]}]")],
            &[],
        );
        assert!(clean.iter().all(|r| r.actual == NONE_FOUND), "{clean:?}");
    }

    #[test]
    fn advice_names_the_likely_mistake() {
        let bound = binding("RoleBinding", "Role", "reader", REPORTER);
        let a = advice(
            &[
                role("[{apiGroups: [''], resources: [pod], verbs: [list]}]"),
                bound.clone(),
            ],
            &forbidden("list", "", "pods", ""),
        );
        assert_eq!(
            a,
            "your Role `reader` names `pod`: resources are plural, `pods`"
        );

        let a = advice(
            &[
                role("[{apiGroups: [''], resources: [pods], verbs: [get]}]"),
                bound.clone(),
            ],
            &forbidden("get", "", "pods", "log"),
        );
        assert!(a.starts_with("`pods/log` is a subresource"), "{a}");

        let a = advice(
            &[
                role("[{apiGroups: [v1], resources: [pods], verbs: [get]}]"),
                bound.clone(),
            ],
            &forbidden("get", "", "pods", ""),
        );
        assert!(a.contains("the core API group"), "{a}");

        let a = advice(
            &[
                role("[{apiGroups: [''], resources: [pods], verbs: [get]}]"),
                bound.clone(),
            ],
            &forbidden("list", "", "pods", ""),
        );
        assert!(a.contains("not `list`"), "{a}");

        let rules = "[{apiGroups: [''], resources: [pods], verbs: [list]}]";
        let a = advice(
            &[
                role(rules),
                binding("RoleBinding", "ClusterRole", "reader", REPORTER),
            ],
            &forbidden("list", "", "pods", ""),
        );
        assert!(a.contains("roleRef.kind must be Role"), "{a}");

        let a = advice(
            &[
                role(rules),
                binding(
                    "RoleBinding",
                    "Role",
                    "reader",
                    "[{kind: ServiceAccount, name: reporter, namespace: ci}]",
                ),
            ],
            &forbidden("list", "", "pods", ""),
        );
        assert!(
            a.contains("names ServiceAccount ci/reporter, but the Pod runs as shop/reporter"),
            "{a}"
        );

        let a = advise(
            &spec("allowed"),
            &forbidden("list", "", "pods", ""),
            Some(("ci", "deployer")),
            &[
                role(rules),
                binding(
                    "RoleBinding",
                    "Role",
                    "reader",
                    "[{kind: ServiceAccount, name: deployer}]",
                ),
            ],
        )
        .unwrap();
        assert!(
            a.contains("without a namespace: in a RoleBinding that means its own namespace (shop)"),
            "{a}"
        );

        let a = advice(&[role(rules)], &forbidden("list", "", "pods", ""));
        assert!(
            a.starts_with("nothing binds a role to ServiceAccount shop/reporter"),
            "{a}"
        );

        let unauthorized = Row {
            actual: "unauthorized".into(),
            ..Row::default()
        };
        assert!(advice(&[], &unauthorized).starts_with("401"));
        let refused = Row {
            actual: "Pod refused".into(),
            message: "pods \"web\" is forbidden: error looking up service account shop/biling"
                .into(),
            ..Row::default()
        };
        assert!(advice(&[], &refused).contains("names a ServiceAccount that does not exist"));
    }
}
