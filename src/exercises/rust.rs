//! Building a Rust exercise: the learner's crate, with cargo, into the
//! directory the local sandbox node runs programs from.
//!
//! The crate depends on the repository's `labs/lab-kit` by path and starts
//! from the repository's `Cargo.lock` and profile, so when the node's
//! programs directory is a cargo target directory (`target/debug`, the
//! usual case) the build shares it: kube and every other dependency are
//! already compiled there, only the learner's crate is, and the binary
//! lands where the node looks. Otherwise it builds in the workspace's own
//! `target/` and copies the binary over.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::Exercise;

/// What cargo made of the learner's crate.
#[derive(Debug)]
pub enum Build {
    /// It built; the node can run it.
    Built,
    /// It did not: cargo's diagnostics, for the learner.
    Failed(String),
}

/// cargo could not be run, or the binary not put in place.
#[derive(Debug, thiserror::Error)]
pub enum RustError {
    /// cargo is not installed, or could not start.
    #[error("running cargo (Rust exercises need Rust's cargo on PATH)")]
    Cargo(#[source] std::io::Error),
    /// The binary could not be copied where the node finds it.
    #[error("copying the program to {}", to.display())]
    Copy {
        /// Where to.
        to: PathBuf,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
}

/// The cargo target directory `labs_dir` (`<target>/debug`) is in, if it
/// is one.
pub fn shared_target(labs_dir: &Path) -> Option<PathBuf> {
    let target = labs_dir.parent()?;
    (labs_dir.file_name()? == "debug" && target.join("CACHEDIR.TAG").is_file())
        .then(|| target.to_path_buf())
}

/// Build `ex`'s crate in `folder`; on success its binary is
/// `labs_dir/<ex.binary()>`.
pub async fn build(ex: &Exercise, folder: &Path, labs_dir: &Path) -> Result<Build, RustError> {
    let binary = ex.binary();
    let shared = shared_target(labs_dir);
    let target = shared
        .clone()
        .unwrap_or_else(|| folder.ancestors().nth(2).unwrap_or(folder).join("target"));
    let out =
        tokio::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .arg("build")
            .arg("--manifest-path")
            .arg(folder.join("Cargo.toml"))
            .args(["--bin", &binary, "--message-format=json-render-diagnostics"])
            .arg("--target-dir")
            .arg(&target)
            .env("CARGO_TERM_COLOR", "never")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(RustError::Cargo)?;
    if !out.status.success() {
        return Ok(Build::Failed(diagnostics(&String::from_utf8_lossy(
            &out.stderr,
        ))));
    }
    let built = executable(&String::from_utf8_lossy(&out.stdout), &binary)
        .unwrap_or_else(|| target.join("debug").join(&binary));
    let dest = labs_dir.join(&binary);
    if built != dest {
        // Copied then renamed, so the node never starts half a file.
        let tmp = labs_dir.join(format!(".{binary}.tmp"));
        let copy = |source| RustError::Copy {
            to: dest.clone(),
            source,
        };
        std::fs::copy(&built, &tmp).map_err(copy)?;
        std::fs::rename(&tmp, &dest).map_err(copy)?;
    }
    Ok(Build::Built)
}

/// The executable cargo reported for `binary` (`--message-format=json`).
fn executable(stdout: &str, binary: &str) -> Option<PathBuf> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == binary)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

/// What the learner needs of cargo's output: the errors and warnings, not
/// the progress lines.
fn diagnostics(stderr: &str) -> String {
    let kept: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("Compiling ")
                || t.starts_with("Blocking waiting")
                || t.starts_with("Updating ")
                || t.starts_with("Locking ")
                || t.starts_with("Adding ")
                || t.starts_with("Downloaded ")
                || t.starts_with("Downloading "))
        })
        .collect();
    let text = kept.join("\n");
    let lines: Vec<&str> = text.trim().lines().collect();
    const MAX: usize = 60;
    if lines.len() > MAX {
        format!(
            "{}\n... ({} more lines: run cargo build in the exercise folder to see them all)",
            lines[..MAX].join("\n"),
            lines.len() - MAX
        )
    } else {
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_a_cargo_target_dir_only() {
        let tmp = tempfile::tempdir().unwrap();
        let debug = tmp.path().join("target/debug");
        std::fs::create_dir_all(&debug).unwrap();
        assert_eq!(shared_target(&debug), None);
        std::fs::write(tmp.path().join("target/CACHEDIR.TAG"), "x").unwrap();
        assert_eq!(shared_target(&debug), Some(tmp.path().join("target")));
        assert_eq!(shared_target(&tmp.path().join("target")), None);
    }

    #[test]
    fn reads_cargo_messages() {
        let stdout = r#"{"reason":"compiler-artifact","target":{"name":"lab-kit"},"executable":null}
{"reason":"compiler-artifact","target":{"name":"exercise-02-x"},"executable":"/t/debug/exercise-02-x"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable(stdout, "exercise-02-x"),
            Some(PathBuf::from("/t/debug/exercise-02-x"))
        );
        let stderr = "   Compiling exercise-02-x v0.1.0\nerror[E0425]: cannot find value `x`\n --> src/main.rs:3:5\n";
        assert_eq!(
            diagnostics(stderr),
            "error[E0425]: cannot find value `x`\n --> src/main.rs:3:5"
        );
    }
}
