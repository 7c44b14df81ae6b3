//! Questions for the authorizer, built one way for the whole project: the
//! chapters, the preflight and the audit ask them alike.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};

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
}
