//! Locating (and, when missing, building) the pinned Kubernetes binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::paths;

/// Every binary the local provider runs.
pub const REQUIRED: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// The learner's client, built beside them. No cluster runs it, so the tour
/// (and its cold first run) does without; `sa-lab up` and the chapters'
/// own clusters, which the learner goes on to use, build it when missing.
pub const KUBECTL: &str = "kubectl";

/// Why the Kubernetes binaries cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A directory named by the user lacks some binaries.
    #[error(
        "{var}={dir} lacks {missing}; point it at a directory holding {all}, \
         or unset it to use sa-lab's own build"
    )]
    IncompleteDir {
        var: &'static str,
        dir: PathBuf,
        missing: String,
        all: String,
    },
    /// Nothing is built and Go is not installed to build it.
    #[error(
        "the Kubernetes binaries are not built ({dir} lacks {missing}) and Go is not \
         installed to build them; install Go >= 1.26 and run scripts/install-k8s.sh, \
         or set SA_LAB_K8S_BIN to a directory holding {all}"
    )]
    NoGo {
        dir: PathBuf,
        missing: String,
        all: String,
    },
    /// Nothing is built and auto-build is off.
    #[error(
        "the Kubernetes binaries are not built ({dir} lacks {missing}); run \
         scripts/install-k8s.sh (a cold build takes about 7 min on 2 cores), or set \
         SA_LAB_K8S_BIN to a directory holding {all}"
    )]
    NotBuilt {
        dir: PathBuf,
        missing: String,
        all: String,
    },
    /// The build script failed.
    #[error(
        "building the Kubernetes binaries failed (scripts/install-k8s.sh exited with {0}); see its output above"
    )]
    BuildFailed(String),
    /// The build script could not be started.
    #[error("could not run {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
}

/// The cache directory the build script fills for the pinned versions.
pub fn cache_bin_dir() -> PathBuf {
    paths::cache()
        .join("k8s")
        .join(format!(
            "{}-etcd{}",
            crate::KUBERNETES_VERSION,
            crate::ETCD_VERSION
        ))
        .join("bin")
}

fn missing_in(dir: &Path) -> Vec<&'static str> {
    REQUIRED
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect()
}

fn all() -> String {
    REQUIRED.join(", ")
}

/// Finds the directory holding every required binary, without building:
/// `$SA_LAB_K8S_BIN`, then `$KUBEBUILDER_ASSETS` if it holds all of them,
/// then the build cache.
pub fn find() -> Result<PathBuf, Error> {
    if let Some(d) = paths::non_empty_env("SA_LAB_K8S_BIN") {
        let dir = PathBuf::from(d);
        let missing = missing_in(&dir);
        if !missing.is_empty() {
            return Err(Error::IncompleteDir {
                var: "SA_LAB_K8S_BIN",
                dir,
                missing: missing.join(", "),
                all: all(),
            });
        }
        return Ok(dir);
    }
    if let Some(d) = paths::non_empty_env("KUBEBUILDER_ASSETS") {
        let dir = PathBuf::from(d);
        if missing_in(&dir).is_empty() {
            return Ok(dir);
        }
        // envtest's assets have no kube-controller-manager: fall through.
    }
    let dir = cache_bin_dir();
    let missing = missing_in(&dir);
    if missing.is_empty() {
        return Ok(dir);
    }
    Err(Error::NotBuilt {
        dir,
        missing: missing.join(", "),
        all: all(),
    })
}

/// Like [`find`], but builds what is missing with `scripts/install-k8s.sh`
/// when Go and the script are available (its progress goes to stderr).
/// With `kubectl`, kubectl too, when the directory is sa-lab's own build (a
/// directory named by `$SA_LAB_K8S_BIN` may leave it out: the learner's own
/// kubectl is used then).
pub fn ensure(kubectl: bool) -> Result<PathBuf, Error> {
    let dir = match find() {
        Ok(d) if !kubectl || d != cache_bin_dir() || d.join(KUBECTL).is_file() => return Ok(d),
        Ok(d) => d,
        Err(Error::NotBuilt { dir, .. }) => dir,
        Err(e) => return Err(e),
    };
    let mut missing = missing_in(&dir);
    if kubectl && !dir.join(KUBECTL).is_file() {
        missing.push(KUBECTL);
    }
    build(kubectl, dir, missing.join(", "))?;
    find()
}

/// Runs `scripts/install-k8s.sh` (without kubectl unless asked) to fill
/// sa-lab's cache `dir`, or says why it cannot.
fn build(kubectl: bool, dir: PathBuf, missing: String) -> Result<(), Error> {
    let all = all();
    let script = paths::repo_root().join("scripts/install-k8s.sh");
    if !script.is_file() || std::env::var("SA_LAB_NO_BUILD").is_ok_and(|v| v == "1") {
        return Err(Error::NotBuilt { dir, missing, all });
    }
    if Command::new("go").arg("version").output().is_err() {
        return Err(Error::NoGo { dir, missing, all });
    }
    eprintln!(" • Kubernetes binaries missing ({missing}); building them from Go modules");
    let mut cmd = Command::new("bash");
    cmd.arg(&script);
    if !kubectl {
        cmd.arg("--no-kubectl");
    }
    let status = cmd
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| Error::Spawn(script.clone(), e))?;
    if !status.success() {
        return Err(Error::BuildFailed(status.to_string()));
    }
    Ok(())
}
