//! Cluster providers: who runs the control plane and the lab Pods.
//!
//! | provider  | cluster                                  | Pods run by                  |
//! |-----------|------------------------------------------|------------------------------|
//! | `local`   | local processes ([`crate::local`])       | the sandbox node             |
//! | `kind`    | a kind cluster (`scripts/kind-up.sh`)    | the kubelet and containerd   |
//! | `current` | the current kubeconfig context           | its kubelets                 |
//!
//! The labs, manifests and expected tables are the same on every provider.
//! This module holds what differs, one job per file:
//!
//! - here, which provider to use ([`select`]: the `--provider` flag, else
//!   `SA_LAB_PROVIDER`, else `local`), which image lab Pods run
//!   ([`select_image`]), and the kind cluster's name and kubeconfig;
//! - [`connect`](mod@connect): reaching the chosen cluster as its admin
//!   (one config and client whatever the provider), and `up`/`down`;
//! - [`preflight`](mod@preflight): refusing a cluster that does not enforce
//!   RBAC, because every lesson is "the API server said no".

pub mod connect;
pub mod preflight;

pub use connect::{ConnectError, ConnectOptions, Connection, Started, UpArgs, connect, down, up};
pub use preflight::{
    AccessCheck, PreflightError, Problem, access_checks, broad_bindings, preflight,
};

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
