//! Where sa-lab keeps things: cluster state, caches, and its own binaries.

use std::path::{Path, PathBuf};

/// Root of all cluster state: `$SA_LAB_HOME`, else `$XDG_STATE_HOME/sa-lab`,
/// else `~/.local/state/sa-lab`.
pub fn home() -> PathBuf {
    if let Some(h) = non_empty_env("SA_LAB_HOME") {
        return PathBuf::from(h);
    }
    if let Some(x) = non_empty_env("XDG_STATE_HOME") {
        return PathBuf::from(x).join("sa-lab");
    }
    user_home().join(".local/state/sa-lab")
}

/// Directory holding one named cluster's state (PKI, data, logs, kubeconfig).
pub fn cluster_dir(name: &str) -> PathBuf {
    home().join("clusters").join(name)
}

/// Cache root: `$SA_LAB_CACHE`, else `$XDG_CACHE_HOME/sa-lab`, else
/// `~/.cache/sa-lab` (same rule as `scripts/install-k8s.sh`).
pub fn cache() -> PathBuf {
    if let Some(c) = non_empty_env("SA_LAB_CACHE") {
        return PathBuf::from(c);
    }
    if let Some(x) = non_empty_env("XDG_CACHE_HOME") {
        return PathBuf::from(x).join("sa-lab");
    }
    user_home().join(".cache/sa-lab")
}

/// The `sa-lab` executable. The CLI itself, or (from tests and other
/// binaries in `target/<profile>/`) the one cargo built beside them.
/// `$SA_LAB_BIN` overrides.
pub fn self_binary() -> PathBuf {
    if let Some(b) = non_empty_env("SA_LAB_BIN") {
        return PathBuf::from(b);
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("sa-lab"));
    if exe.file_name().is_some_and(|n| n == "sa-lab") {
        return exe;
    }
    // target/debug/deps/<test>-<hash> -> target/debug/sa-lab
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("sa-lab");
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from("sa-lab")
}

/// Where the lab binaries are: `$SA_LAB_LABS_DIR`, else beside the `sa-lab`
/// executable (cargo puts every workspace binary in one directory).
pub fn labs_dir() -> PathBuf {
    if let Some(d) = non_empty_env("SA_LAB_LABS_DIR") {
        return PathBuf::from(d);
    }
    self_binary()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The repository root when running from a checkout (used to find lab
/// manifests): `$SA_LAB_REPO`, else the compile-time manifest directory.
pub fn repo_root() -> PathBuf {
    if let Some(r) = non_empty_env("SA_LAB_REPO") {
        return PathBuf::from(r);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn user_home() -> PathBuf {
    non_empty_env("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

pub(crate) fn non_empty_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}
