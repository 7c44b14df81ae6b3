//! Cluster providers: who runs the control plane and the lab Pods.
//!
//! | provider  | cluster                                  | Pods run by                  |
//! |-----------|------------------------------------------|------------------------------|
//! | `local`   | local processes ([`crate::local`])       | the sandbox node             |
//! | `kind`    | a kind cluster (`scripts/kind-up.sh`)    | the kubelet and containerd   |
//! | `current` | the current kubeconfig context           | its kubelets                 |
//!
//! The labs, manifests and expected tables are the same on every provider.
//! This module holds what differs:
//!
//! - which provider to use: [`select`] (the `--provider` flag, else
//!   `SA_LAB_PROVIDER`, else `local`), and which image lab Pods run:
//!   [`select_image`] (the `--image` flag, else `SA_LAB_IMAGE`, else
//!   [`LAB_IMAGE`]), with [`retarget_lab_image`] to apply it to a manifest;
//! - how to reach a `kind` or `current` cluster as its admin: [`client`];
//! - the [`preflight`] that refuses a cluster which does not enforce RBAC,
//!   because every lesson is "the API server said no".
//!
//! The `local` provider's clusters are started and reached through
//! [`crate::local`]; nothing here starts a cluster.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
    rbac::v1::{ClusterRole, ClusterRoleBinding, Subject},
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig, KubeconfigError},
};
use serde_json::Value;

use crate::LAB_IMAGE;

/// The environment variable that picks the provider when `--provider` is not
/// given (the e2e suite reads it too).
pub const PROVIDER_ENV: &str = "SA_LAB_PROVIDER";
/// The environment variable that overrides the lab image when `--image` is
/// not given (for a registry reachable from a `current` cluster).
pub const IMAGE_ENV: &str = "SA_LAB_IMAGE";
/// The environment variable that names the kind cluster when `--name` is not
/// given; `scripts/kind-up.sh` and `scripts/kind-down.sh` read it too.
pub const KIND_CLUSTER_ENV: &str = "SA_LAB_KIND_CLUSTER";
/// The kind cluster's default name. Not `sa-lab`, so a kind cluster never
/// shares its state directory with a local cluster of the default name.
pub const DEFAULT_KIND_CLUSTER: &str = "sa-lab-kind";

/// Who runs the cluster and its Pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Provider {
    /// Real control-plane processes on this machine; lab Pods run on the
    /// sandbox node. Needs no Docker.
    #[default]
    Local,
    /// A kind cluster made by `scripts/kind-up.sh`; the lab image is
    /// `kind load`ed into it.
    Kind,
    /// Whatever cluster the current kubeconfig context points at; the lab
    /// image must be pullable there.
    Current,
}

impl Provider {
    /// Every provider, in the order the CLI lists them.
    pub const ALL: [Provider; 3] = [Provider::Local, Provider::Kind, Provider::Current];

    /// The name used by `--provider` and `SA_LAB_PROVIDER`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Local => "local",
            Provider::Kind => "kind",
            Provider::Current => "current",
        }
    }

    /// Whether sa-lab must check the cluster with [`preflight`] before
    /// teaching on it: a cluster sa-lab did not configure itself.
    pub fn needs_preflight(self) -> bool {
        !matches!(self, Provider::Local)
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider name that is not `local`, `kind` or `current`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider {value:?}: expected local, kind or current")]
pub struct ParseProviderError {
    /// What was given.
    pub value: String,
}

impl FromStr for Provider {
    type Err = ParseProviderError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| ParseProviderError {
                value: s.to_owned(),
            })
    }
}

/// Why the provider or image could not be chosen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// `SA_LAB_PROVIDER` is set to something that is not a provider.
    #[error(
        "environment variable {PROVIDER_ENV}={value:?} names no provider: expected local, kind or current"
    )]
    ProviderEnv {
        /// The variable's value.
        value: String,
    },
    /// The image reference is empty or has white space in it.
    #[error("image {image:?} is not an image reference")]
    ImageInvalid {
        /// The reference given.
        image: String,
    },
    /// The image has no tag or digest: a runtime reads that as `:latest`.
    #[error(
        "image {image:?} has no tag: an untagged image means :latest; name a version, e.g. <registry>/{LAB_IMAGE}"
    )]
    ImageUntagged {
        /// The reference given.
        image: String,
    },
    /// The image is tagged `:latest`, which no lab Pod may use.
    #[error("image {image:?} is tagged :latest: name a version, e.g. <registry>/{LAB_IMAGE}")]
    ImageLatest {
        /// The reference given.
        image: String,
    },
    /// An image override was given for the local provider, whose sandbox
    /// node runs only the lab binaries cargo built.
    #[error(
        "image {image:?} cannot run on the local provider: its sandbox node runs only {LAB_IMAGE} (the lab binaries cargo built); --image is for kind and current"
    )]
    ImageOnLocal {
        /// The reference given.
        image: String,
    },
}

/// Picks the provider: the `--provider` flag, else the value of
/// `SA_LAB_PROVIDER` (`env`; empty counts as unset), else [`Provider::Local`].
///
/// Pure over its inputs; [`select_from_env`] reads the real environment.
pub fn select(flag: Option<Provider>, env: Option<&str>) -> Result<Provider, SelectError> {
    if let Some(p) = flag {
        return Ok(p);
    }
    match env.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(Provider::Local),
        Some(v) => v.parse().map_err(|_| SelectError::ProviderEnv {
            value: v.to_owned(),
        }),
    }
}

/// [`select`] with `SA_LAB_PROVIDER` read from the process environment.
pub fn select_from_env(flag: Option<Provider>) -> Result<Provider, SelectError> {
    select(flag, std::env::var(PROVIDER_ENV).ok().as_deref())
}

/// Picks the image lab Pods run: the `--image` flag, else `SA_LAB_IMAGE`
/// (`env`; empty counts as unset), else [`LAB_IMAGE`]. An override must name
/// a tag or digest other than `:latest`, and is refused on the local
/// provider (unless it is [`LAB_IMAGE`] itself).
pub fn select_image(
    provider: Provider,
    flag: Option<&str>,
    env: Option<&str>,
) -> Result<String, SelectError> {
    let chosen = flag
        .or(env)
        .map(str::trim)
        .filter(|v| !v.is_empty() || flag.is_some());
    let Some(image) = chosen else {
        return Ok(LAB_IMAGE.to_owned());
    };
    check_image_ref(image)?;
    if provider == Provider::Local && image != LAB_IMAGE {
        return Err(SelectError::ImageOnLocal {
            image: image.to_owned(),
        });
    }
    Ok(image.to_owned())
}

/// [`select_image`] with `SA_LAB_IMAGE` read from the process environment.
pub fn select_image_from_env(
    provider: Provider,
    flag: Option<&str>,
) -> Result<String, SelectError> {
    select_image(provider, flag, std::env::var(IMAGE_ENV).ok().as_deref())
}

/// Checks an image reference the way the course wants it: a tag or a digest,
/// never `:latest` (with `imagePullPolicy: IfNotPresent`, `:latest` silently
/// runs whatever was there before).
pub fn check_image_ref(image: &str) -> Result<(), SelectError> {
    let owned = || image.to_owned();
    if image.is_empty() || image.chars().any(char::is_whitespace) {
        return Err(SelectError::ImageInvalid { image: owned() });
    }
    if image.contains('@') {
        return Ok(());
    }
    // The tag is after the last ':' of the last path component (a ':' before
    // it is a registry port).
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        None => Err(SelectError::ImageUntagged { image: owned() }),
        Some((_, "")) => Err(SelectError::ImageInvalid { image: owned() }),
        Some((_, "latest")) => Err(SelectError::ImageLatest { image: owned() }),
        Some(_) => Ok(()),
    }
}

/// Picks the kind cluster's name: `--name`, else `SA_LAB_KIND_CLUSTER`
/// (empty counts as unset), else [`DEFAULT_KIND_CLUSTER`].
pub fn kind_cluster_name(flag: Option<&str>, env: Option<&str>) -> String {
    flag.or(env)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or(DEFAULT_KIND_CLUSTER)
        .to_owned()
}

/// Where `scripts/kind-up.sh` writes the kubeconfig of kind cluster `name`:
/// `<state dir>/clusters/<name>/kubeconfig`, the state dir being
/// [`crate::paths::home`] (`SA_LAB_HOME`, else `$XDG_STATE_HOME/sa-lab`, else
/// `~/.local/state/sa-lab`; the script computes the same path).
pub fn kind_kubeconfig_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("clusters").join(name).join("kubeconfig")
}

/// The kubeconfig context kind gives cluster `name`.
pub fn kind_context(name: &str) -> String {
    format!("kind-{name}")
}

/// Why no client could be built for a kind or current cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kind cluster's kubeconfig is not in the sa-lab state dir: the
    /// cluster was never created by `scripts/kind-up.sh`, or was deleted.
    #[error("no kind cluster {name:?}: {} does not exist; create it with scripts/kind-up.sh --name {name}", path.display())]
    KindMissing {
        /// The cluster name.
        name: String,
        /// The kubeconfig path that was looked for.
        path: PathBuf,
    },
    /// A kubeconfig could not be read, or has no such context.
    #[error("cannot load the kubeconfig {what}")]
    Kubeconfig {
        /// Which kubeconfig and context.
        what: String,
        /// What kube said.
        #[source]
        source: KubeconfigError,
    },
    /// The kubeconfig was read but no client could be built from it.
    #[error("cannot build a client for {what}")]
    Client {
        /// Which kubeconfig and context.
        what: String,
        /// What kube said.
        #[source]
        source: kube::Error,
    },
    /// The local provider's clients come from its cluster info.
    #[error(
        "the local provider's clusters are reached through sa_lab::local::load(name)?.client()"
    )]
    Local,
}

/// How to reach a kind or current cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientOptions {
    /// The kind cluster's name ([`kind_cluster_name`]); ignored for `current`.
    pub kind_cluster: String,
    /// The sa-lab state directory ([`crate::paths::home`]); ignored for
    /// `current`.
    pub state_dir: PathBuf,
    /// For `current`: a context other than the kubeconfig's current one.
    pub context: Option<String>,
}

impl ClientOptions {
    /// Options for kind cluster `name` in the sa-lab state dir, or for the
    /// current context (`name` unused).
    pub fn new(kind_cluster: &str) -> ClientOptions {
        ClientOptions {
            kind_cluster: kind_cluster.to_owned(),
            state_dir: crate::paths::home(),
            context: None,
        }
    }
}

/// A client and where it came from, for the CLI to say which cluster it is on.
#[derive(Clone)]
pub struct Connection {
    /// The cluster's admin (for `current`: whoever the context names).
    pub client: Client,
    /// The kubeconfig context used.
    pub context: String,
    /// The kubeconfig file, when there is exactly one (kind), else a
    /// description (`$KUBECONFIG` or `~/.kube/config`).
    pub kubeconfig: String,
}

/// Builds a client for a kind cluster (its kubeconfig in the sa-lab state
/// dir, context `kind-<name>`) or for the current kubeconfig context
/// (`$KUBECONFIG`, else `~/.kube/config`; `options.context` overrides the
/// current context). The local provider is refused: see [`crate::local`].
pub async fn client(
    provider: Provider,
    options: &ClientOptions,
) -> Result<Connection, ClientError> {
    match provider {
        Provider::Local => Err(ClientError::Local),
        Provider::Kind => {
            let name = &options.kind_cluster;
            let path = kind_kubeconfig_path(&options.state_dir, name);
            if !path.is_file() {
                return Err(ClientError::KindMissing {
                    name: name.clone(),
                    path,
                });
            }
            let context = kind_context(name);
            let what = format!("{} (context {context})", path.display());
            let kubeconfig =
                Kubeconfig::read_from(&path).map_err(|source| ClientError::Kubeconfig {
                    what: what.clone(),
                    source,
                })?;
            connect(kubeconfig, context, path.display().to_string(), what).await
        }
        Provider::Current => {
            let kubeconfig = Kubeconfig::read().map_err(|source| ClientError::Kubeconfig {
                what: "of the current context ($KUBECONFIG or ~/.kube/config)".into(),
                source,
            })?;
            let context = options
                .context
                .clone()
                .or_else(|| kubeconfig.current_context.clone())
                .unwrap_or_default();
            let file = match std::env::var("KUBECONFIG") {
                Ok(v) if !v.is_empty() => v,
                _ => "~/.kube/config".to_owned(),
            };
            let what = format!("{file} (context {context:?})");
            connect(kubeconfig, context, file, what).await
        }
    }
}

async fn connect(
    kubeconfig: Kubeconfig,
    context: String,
    file: String,
    what: String,
) -> Result<Connection, ClientError> {
    let options = KubeConfigOptions {
        context: (!context.is_empty()).then(|| context.clone()),
        ..KubeConfigOptions::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|source| ClientError::Kubeconfig {
            what: what.clone(),
            source,
        })?;
    let client = Client::try_from(config).map_err(|source| ClientError::Client { what, source })?;
    Ok(Connection {
        client,
        context,
        kubeconfig: file,
    })
}

// ---------------------------------------------------------------------------
// Preflight
// ---------------------------------------------------------------------------

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
    fn service_account(namespace: &str, name: &str) -> (String, Vec<String>) {
        (
            format!("system:serviceaccount:{namespace}:{name}"),
            vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ],
        )
    }

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
    let (default_user, default_groups) = AccessCheck::service_account("default", "default");
    let (scratch_user, scratch_groups) =
        AccessCheck::service_account(SCRATCH_NAMESPACE, "unprivileged");
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
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(check.user.clone()),
            groups: Some(check.groups.clone()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(check.verb.clone()),
                group: Some(check.group.clone()),
                resource: Some(check.resource.clone()),
                namespace: check.namespace.clone(),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    }
}

/// Every ClusterRoleBinding that grants `cluster-admin`, or a ClusterRole
/// with a wildcard verb or resource, to a subject every ServiceAccount (or
/// everyone) matches, or to a `default` ServiceAccount. Sorted by binding,
/// then subject. Pure: the preflight feeds it what it listed.
pub fn broad_bindings(bindings: &[ClusterRoleBinding], roles: &[ClusterRole]) -> Vec<Problem> {
    let mut found = Vec::new();
    for crb in bindings {
        let role = &crb.role_ref.name;
        if crb.role_ref.kind != "ClusterRole" || !is_broad_role(role, roles) {
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

/// `cluster-admin`, or a ClusterRole with a rule whose verbs or resources
/// hold `*`.
fn is_broad_role(name: &str, roles: &[ClusterRole]) -> bool {
    if name == "cluster-admin" {
        return true;
    }
    let Some(role) = roles
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(name))
    else {
        return false;
    };
    role.rules.iter().flatten().any(|rule| {
        let star = |v: &[String]| v.iter().any(|s| s == "*");
        star(&rule.verbs) || rule.resources.as_deref().is_some_and(star)
    })
}

/// How a subject is named in a problem, if it is one that must never hold
/// broad rights.
fn risky_subject(subject: &Subject) -> Option<String> {
    let name = subject.name.as_str();
    match subject.kind.as_str() {
        "Group"
            if matches!(
                name,
                "system:serviceaccounts" | "system:authenticated" | "system:unauthenticated"
            ) || name.starts_with("system:serviceaccounts:") =>
        {
            Some(format!("group {name}"))
        }
        "ServiceAccount" if name == "default" => Some(format!(
            "serviceaccount {}/default",
            subject.namespace.as_deref().unwrap_or("?")
        )),
        "User" if name == "system:anonymous" => Some(format!("user {name}")),
        "User" if name.starts_with("system:serviceaccount:") && name.ends_with(":default") => {
            Some(format!("user {name}"))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Lab images in manifests
// ---------------------------------------------------------------------------

/// A container of a workload in a manifest, as the image checks see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestContainer {
    /// The object, as `Kind/name`.
    pub object: String,
    /// The container's name.
    pub container: String,
    /// Its `image`, if set.
    pub image: Option<String>,
    /// Its `imagePullPolicy`, if set.
    pub pull_policy: Option<String>,
}

/// Why a manifest file could not be read as YAML.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The text is not YAML that maps to JSON values.
    #[error("invalid manifest YAML")]
    Yaml(#[source] serde_saphyr::Error),
}

/// Every object in a multi-document YAML text, empty documents skipped.
pub fn parse_manifest_docs(yaml: &str) -> Result<Vec<Value>, ManifestError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).map_err(ManifestError::Yaml)?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Every container (`initContainers`, `containers`, `ephemeralContainers`)
/// of every workload in a multi-document YAML text: Pods, Jobs, CronJobs,
/// Deployments, ReplicaSets, StatefulSets, DaemonSets, and `List`s of them.
pub fn manifest_containers(yaml: &str) -> Result<Vec<ManifestContainer>, ManifestError> {
    let mut out = Vec::new();
    for mut doc in parse_manifest_docs(yaml)? {
        let object = object_name(&doc);
        for_each_container(&mut doc, &mut |c| {
            let text = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_owned);
            out.push(ManifestContainer {
                object: object.clone(),
                container: text("name").unwrap_or_default(),
                image: text("image"),
                pull_policy: text("imagePullPolicy"),
            });
        });
    }
    Ok(out)
}

/// Points every container that runs [`LAB_IMAGE`] at `image` instead (the
/// `--image` override), in one manifest object. Returns how many changed.
pub fn retarget_lab_image(doc: &mut Value, image: &str) -> usize {
    let mut changed = 0;
    for_each_container(doc, &mut |c| {
        if c.get("image").and_then(Value::as_str) == Some(LAB_IMAGE) && image != LAB_IMAGE {
            c["image"] = Value::String(image.to_owned());
            changed += 1;
        }
    });
    changed
}

fn object_name(doc: &Value) -> String {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("?");
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    format!("{kind}/{name}")
}

fn for_each_container(doc: &mut Value, f: &mut dyn FnMut(&mut Value)) {
    if doc.get("kind").and_then(Value::as_str) == Some("List") {
        if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                for_each_container(item, f);
            }
        }
        return;
    }
    let pod_spec = match doc.get("kind").and_then(Value::as_str) {
        Some("Pod") => "/spec",
        Some("CronJob") => "/spec/jobTemplate/spec/template/spec",
        Some(
            "Job"
            | "Deployment"
            | "ReplicaSet"
            | "StatefulSet"
            | "DaemonSet"
            | "ReplicationController",
        ) => "/spec/template/spec",
        _ => return,
    };
    let Some(spec) = doc.pointer_mut(pod_spec) else {
        return;
    };
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            containers.iter_mut().for_each(&mut *f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn provider_names_round_trip() {
        for p in Provider::ALL {
            assert_eq!(p.to_string().parse::<Provider>(), Ok(p));
        }
        assert_eq!(" Kind ".parse::<Provider>(), Ok(Provider::Kind));
        assert_eq!(
            "minikube".parse::<Provider>(),
            Err(ParseProviderError {
                value: "minikube".into()
            })
        );
        assert_eq!(
            "minikube".parse::<Provider>().unwrap_err().to_string(),
            r#"unknown provider "minikube": expected local, kind or current"#
        );
    }

    #[test]
    fn provider_flag_beats_env_beats_default() {
        assert_eq!(select(None, None), Ok(Provider::Local));
        assert_eq!(select(None, Some("")), Ok(Provider::Local));
        assert_eq!(select(None, Some("  ")), Ok(Provider::Local));
        assert_eq!(select(None, Some("kind")), Ok(Provider::Kind));
        assert_eq!(select(None, Some("CURRENT")), Ok(Provider::Current));
        assert_eq!(
            select(Some(Provider::Local), Some("kind")),
            Ok(Provider::Local)
        );
        assert_eq!(select(Some(Provider::Current), None), Ok(Provider::Current));
        // A bad env value is an error, not a silent fallback to local...
        assert_eq!(
            select(None, Some("kinf")),
            Err(SelectError::ProviderEnv {
                value: "kinf".into()
            })
        );
        // ...unless the flag decides anyway.
        assert_eq!(
            select(Some(Provider::Kind), Some("kinf")),
            Ok(Provider::Kind)
        );
        let msg = select(None, Some("kinf")).unwrap_err().to_string();
        assert!(msg.contains("SA_LAB_PROVIDER=\"kinf\""), "{msg}");
    }

    #[test]
    fn only_the_local_provider_skips_preflight() {
        assert!(!Provider::Local.needs_preflight());
        assert!(Provider::Kind.needs_preflight());
        assert!(Provider::Current.needs_preflight());
        assert_eq!(Provider::default(), Provider::Local);
    }

    #[test]
    fn image_flag_beats_env_beats_lab_image() {
        let reg = "registry.example.com:5000/team/sa-lab-labs:0.1.0";
        assert_eq!(select_image(Provider::Kind, None, None).unwrap(), LAB_IMAGE);
        assert_eq!(
            select_image(Provider::Current, None, Some("")).unwrap(),
            LAB_IMAGE
        );
        assert_eq!(
            select_image(Provider::Current, None, Some(reg)).unwrap(),
            reg
        );
        assert_eq!(
            select_image(Provider::Current, Some("r.example/x:1"), Some(reg)).unwrap(),
            "r.example/x:1"
        );
        let digest = format!("r.example/sa-lab-labs@sha256:{}", "a".repeat(64));
        assert_eq!(
            select_image(Provider::Current, Some(&digest), None).unwrap(),
            digest
        );
        // The local sandbox node runs only the lab binaries cargo built.
        assert_eq!(
            select_image(Provider::Local, None, None).unwrap(),
            LAB_IMAGE
        );
        assert_eq!(
            select_image(Provider::Local, Some(LAB_IMAGE), None).unwrap(),
            LAB_IMAGE
        );
        assert!(matches!(
            select_image(Provider::Local, None, Some(reg)),
            Err(SelectError::ImageOnLocal { .. })
        ));
    }

    #[test]
    fn images_must_name_a_version() {
        use SelectError::*;
        let err = |i: &str| select_image(Provider::Current, Some(i), None).unwrap_err();
        assert!(matches!(err("sa-lab-labs"), ImageUntagged { .. }));
        assert!(matches!(
            err("registry.example.com:5000/sa-lab-labs"),
            ImageUntagged { .. }
        ));
        assert!(matches!(err("sa-lab-labs:latest"), ImageLatest { .. }));
        assert!(matches!(
            err("r.example:5000/sa-lab-labs:latest"),
            ImageLatest { .. }
        ));
        assert!(matches!(err(""), ImageInvalid { .. }));
        assert!(matches!(err("sa lab:1"), ImageInvalid { .. }));
        assert!(matches!(err("sa-lab-labs:"), ImageInvalid { .. }));
        assert!(err("sa-lab-labs:latest").to_string().contains(":latest"));
    }

    #[test]
    fn lab_image_is_the_workspace_version() {
        assert_eq!(
            LAB_IMAGE,
            concat!("sa-lab-labs:", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(check_image_ref(LAB_IMAGE), Ok(()));
    }

    #[test]
    fn kind_cluster_name_and_paths() {
        assert_eq!(kind_cluster_name(None, None), DEFAULT_KIND_CLUSTER);
        assert_eq!(kind_cluster_name(None, Some("")), DEFAULT_KIND_CLUSTER);
        assert_eq!(kind_cluster_name(None, Some("ci")), "ci");
        assert_eq!(kind_cluster_name(Some("mine"), Some("ci")), "mine");
        assert_eq!(kind_context("ci"), "kind-ci");
        assert_eq!(
            kind_kubeconfig_path(Path::new("/s"), "ci"),
            PathBuf::from("/s/clusters/ci/kubeconfig")
        );
    }

    #[tokio::test]
    async fn local_provider_has_no_kubeconfig_client() {
        let err = client(Provider::Local, &ClientOptions::default())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ClientError::Local));
    }

    #[tokio::test]
    async fn missing_kind_cluster_says_how_to_create_it() {
        let options = ClientOptions {
            kind_cluster: "nope".into(),
            state_dir: PathBuf::from("/nonexistent/sa-lab"),
            context: None,
        };
        let err = client(Provider::Kind, &options).await.err().unwrap();
        let msg = err.to_string();
        assert!(matches!(err, ClientError::KindMissing { .. }));
        assert!(
            msg.contains("/nonexistent/sa-lab/clusters/nope/kubeconfig"),
            "{msg}"
        );
        assert!(msg.contains("scripts/kind-up.sh --name nope"), "{msg}");
    }

    #[tokio::test]
    async fn kind_client_uses_the_kind_context_of_the_state_dir_kubeconfig() {
        let dir = std::env::temp_dir().join(format!("sa-lab-provider-test-{}", std::process::id()));
        let cluster = dir.join("clusters").join("t");
        std::fs::create_dir_all(&cluster).unwrap();
        // What `kind get kubeconfig --name t` writes, minus credentials.
        std::fs::write(
            cluster.join("kubeconfig"),
            "apiVersion: v1\nkind: Config\ncurrent-context: other\n\
             clusters:\n- name: kind-t\n  cluster:\n    server: https://127.0.0.1:39999\n\
             - name: other\n  cluster:\n    server: https://10.0.0.1:6443\n\
             contexts:\n- name: kind-t\n  context:\n    cluster: kind-t\n    user: kind-t\n\
             - name: other\n  context:\n    cluster: other\n    user: other\n\
             users:\n- name: kind-t\n  user:\n    token: not-a-real-token\n\
             - name: other\n  user:\n    token: nope\n",
        )
        .unwrap();
        let options = ClientOptions {
            kind_cluster: "t".into(),
            state_dir: dir.clone(),
            context: None,
        };
        let conn = client(Provider::Kind, &options).await.unwrap();
        assert_eq!(conn.context, "kind-t");
        assert_eq!(conn.client.default_namespace(), "default");
        std::fs::remove_dir_all(&dir).unwrap();
    }

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

    const JOB: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata:
  name: lab
---
apiVersion: batch/v1
kind: Job
metadata:
  name: probe
spec:
  template:
    spec:
      serviceAccountName: lab
      restartPolicy: Never
      initContainers:
        - name: init
          image: sa-lab-labs:0.1.0
          imagePullPolicy: IfNotPresent
      containers:
        - name: lab
          image: sa-lab-labs:0.1.0
          imagePullPolicy: Never
        - name: other
          image: busybox:1.36
---
# only a comment
"#;

    #[test]
    fn manifest_containers_finds_every_container() {
        let found = manifest_containers(JOB).unwrap();
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].object, "Job/probe");
        assert_eq!(found[0].container, "init");
        assert_eq!(found[1].pull_policy.as_deref(), Some("Never"));
        assert_eq!(found[2].image.as_deref(), Some("busybox:1.36"));
        assert_eq!(found[2].pull_policy, None);

        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: c, image: x:1}\n";
        assert_eq!(manifest_containers(pod).unwrap()[0].object, "Pod/p");
        assert!(manifest_containers("kind: [").is_err());
    }

    #[test]
    fn retarget_changes_only_the_lab_image() {
        let reg = "registry.example.com/sa-lab-labs:0.1.0";
        let mut docs =
            parse_manifest_docs(&JOB.replace("0.1.0", env!("CARGO_PKG_VERSION"))).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(retarget_lab_image(&mut docs[0], reg), 0);
        assert_eq!(retarget_lab_image(&mut docs[1], reg), 2);
        let spec = &docs[1]["spec"]["template"]["spec"];
        assert_eq!(spec["initContainers"][0]["image"], reg);
        assert_eq!(spec["containers"][0]["image"], reg);
        assert_eq!(spec["containers"][1]["image"], "busybox:1.36");
        assert_eq!(retarget_lab_image(&mut docs[1], LAB_IMAGE), 0);
    }
}
