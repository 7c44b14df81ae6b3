//! What every sa-lab lab binary shares.
//!
//! - [`probe`]: describe one API call by its RBAC attributes, run it, and
//!   classify the answer as allowed / forbidden / unauthorized / error.
//!   A 403 is the lesson, never a crash.
//! - [`report`]: the compact JSON report a lab writes to its termination
//!   message (< 4 KiB, never a full token) and the table it prints.
//! - [`jwt`]: decode a JWT payload (no verification) to look at its claims.
//! - [`https`]: a raw HTTPS GET with `ca.crt` as the only trust root and a
//!   bearer token, exactly what the book's `curl` does.
//! - [`identity`]: SelfSubjectReview ("who am I?").
//! - [`ask`]: what `sa-lab check` asks an exercise's probe Pod to observe.

pub mod ask;
pub mod https;
pub mod identity;
pub mod jwt;
pub mod probe;
pub mod report;

/// The image lab Pods name. Never `:latest`: the tag is the workspace version.
pub const LAB_IMAGE: &str = concat!("sa-lab-labs:", env!("CARGO_PKG_VERSION"));

/// Where the ServiceAccount admission plugin mounts the credential.
pub const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The mounted token (a JWT bound to the Pod).
pub const TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The cluster CA bundle (from ConfigMap `kube-root-ca.crt`).
pub const CA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// The Pod's namespace.
pub const NAMESPACE_PATH: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Env var naming the termination message file (the sandbox node and tests
/// may set it); otherwise [`DEFAULT_TERMINATION_LOG`].
pub const TERMINATION_LOG_ENV: &str = "SA_LAB_TERMINATION_LOG";
/// The Kubernetes default `terminationMessagePath`.
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";

/// The termination message path this process should write to.
pub fn termination_log_path() -> std::path::PathBuf {
    std::env::var_os(TERMINATION_LOG_ENV)
        .filter(|v| !v.is_empty())
        .map(Into::into)
        .unwrap_or_else(|| DEFAULT_TERMINATION_LOG.into())
}

/// The API server URL a Pod sees (`KUBERNETES_SERVICE_HOST`/`_PORT`), the
/// same one `Config::incluster()` uses.
pub fn apiserver_url_from_env() -> anyhow::Result<String> {
    use anyhow::Context as _;
    let host = std::env::var("KUBERNETES_SERVICE_HOST")
        .context("KUBERNETES_SERVICE_HOST is not set (not in a Pod?)")?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT")
        .context("KUBERNETES_SERVICE_PORT is not set (not in a Pod?)")?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Ok(format!("https://{host}:{port}"))
}

/// Never print a full token: the first 8 characters and an ellipsis.
pub fn redact(token: &str) -> String {
    let head: String = token.trim().chars().take(8).collect();
    format!("{head}…")
}

/// Shorten a message to at most `max` characters (adding `…`).
pub fn truncate(msg: &str, max: usize) -> String {
    if msg.chars().count() <= max {
        return msg.to_string();
    }
    let mut s: String = msg.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// The files directly under `dir`, sorted; an empty list if it is missing.
/// Kubelet-style `..data` / timestamped entries are skipped.
pub fn list_dir(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with(".."))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The Pod's own name: `POD_NAME` (downward API), else `HOSTNAME`.
pub fn pod_name() -> Option<String> {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .find(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_keeps_8_chars() {
        assert_eq!(redact("eyJhbGciOiJSUzI1NiJ9.abc.def"), "eyJhbGci…");
        assert_eq!(redact("abc"), "abc…");
    }

    #[test]
    fn truncate_counts_chars() {
        assert_eq!(truncate("hello", 10), "hello");
        assert_eq!(truncate("hello world", 6), "hello…");
        assert_eq!(truncate("ééééé", 3).chars().count(), 3);
    }
}
