//! `sa-lab pod-exec <spec.json>`: the per-container wrapper.
//!
//! The node agent writes an [`ExecSpec`] and starts `sa-lab pod-exec` in a new
//! session. This fresh, single-threaded process gives the container its own
//! mount namespace (and UTS namespace, for the Pod's hostname; see
//! [`super::mountns`]): a private `/run` without `secrets`, a small private
//! `/dev` whose `termination-log` is a per-container file on the host, and
//! every volumeMount bind-mounted at its mountPath. It then starts the lab program with the container's env and its
//! output going to the container log, waits for it and records how it ended in
//! `exit.json`, so a restarted node agent can still tell.

use std::convert::Infallible;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use nix::unistd::{geteuid, setsid};
use serde::{Deserialize, Serialize};

use super::mountns;

/// What `pod-exec` needs to run one container. Written by the node agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ExecSpec {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// Host path of the program (the lab binary).
    pub program: PathBuf,
    /// `argv[0]` as the container's command names it.
    pub argv0: String,
    pub args: Vec<String>,
    /// The complete environment, in order.
    pub env: Vec<(String, String)>,
    pub working_dir: String,
    pub hostname: String,
    pub mounts: Vec<MountSpec>,
    /// `terminationMessagePath` inside the container.
    pub termination_message_path: String,
    /// The per-container host file backing it.
    pub termination_log: PathBuf,
    /// stdout and stderr of the program go here (appended).
    pub log_file: PathBuf,
    /// Where `started.json` and `exit.json` are written.
    pub state_dir: PathBuf,
    /// securityContext runAsUser / runAsGroup (else the agent's own ids).
    #[serde(default)]
    pub run_as_user: Option<u32>,
    #[serde(default)]
    pub run_as_group: Option<u32>,
}

/// One bind mount: a host path at a path inside the container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MountSpec {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// Written by `pod-exec` once the program runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StartedRecord {
    /// The `pod-exec` wrapper: session and process group leader.
    pub wrapper_pid: i32,
    /// The container's program.
    pub pid: i32,
    pub started_at: String,
}

/// Written by `pod-exec` when the program has ended (or could not start).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ExitRecord {
    /// 128 + signal when killed by a signal (as container runtimes report it).
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub started_at: Option<String>,
    pub finished_at: String,
    /// Set when the program could not be started at all.
    pub start_error: Option<String>,
}

pub const STARTED_FILE: &str = "started.json";
pub const EXIT_FILE: &str = "exit.json";
/// The line `pod-exec` prints on its stdout once the program runs.
pub const STARTED_LINE_PREFIX: &str = "started ";

pub(crate) fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

/// Writes `value` as JSON to `path` atomically (temp file + rename).
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(value).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Body of the hidden `sa-lab pod-exec <spec.json>` subcommand. Never returns
/// on success: it exits with the program's exit code.
pub fn pod_exec_main(spec_path: &Path) -> anyhow::Result<Infallible> {
    let spec: ExecSpec = serde_json::from_slice(
        &fs::read(spec_path).with_context(|| format!("reading {}", spec_path.display()))?,
    )
    .with_context(|| format!("parsing {}", spec_path.display()))?;
    // Its own session and process group: survives the node agent, and the agent
    // can signal the whole container at once.
    let _ = setsid();
    let fail = |what: String| -> anyhow::Error {
        let rec = ExitRecord {
            exit_code: 128,
            signal: None,
            started_at: None,
            finished_at: now_rfc3339(),
            start_error: Some(what.clone()),
        };
        let _ = write_json_atomic(&spec.state_dir.join(EXIT_FILE), &rec);
        anyhow::anyhow!(what)
    };
    if let Err(e) = mountns::enter(&spec) {
        return Err(fail(format!(
            "setting up the container's mount namespace: {}",
            super::error_text(&e)
        )));
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(&spec.log_file)
        .map_err(|e| fail(format!("opening {}: {e}", spec.log_file.display())))?;
    let log2 = log
        .try_clone()
        .map_err(|e| fail(format!("log file: {e}")))?;
    let wd = if spec.working_dir.is_empty() {
        "/"
    } else {
        spec.working_dir.as_str()
    };
    let _ = fs::create_dir_all(wd);
    let started_at = now_rfc3339();
    let mut cmd = Command::new(&spec.program);
    // In a user namespace only id 0 is mapped: ids are honoured when root.
    if geteuid().is_root() {
        if let Some(g) = spec.run_as_group.or(spec.run_as_user.map(|_| 0)) {
            cmd.gid(g);
        }
        if let Some(u) = spec.run_as_user {
            cmd.uid(u);
        }
    }
    let mut child = match cmd
        .arg0(&spec.argv0)
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(wd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Err(fail(format!(
                "failed to start container {:?}: exec: {:?}: {e}",
                spec.container, spec.argv0
            )));
        }
    };
    let pid = child.id() as i32;
    let started = StartedRecord {
        wrapper_pid: std::process::id() as i32,
        pid,
        started_at: started_at.clone(),
    };
    let _ = write_json_atomic(&spec.state_dir.join(STARTED_FILE), &started);
    {
        // Tell the node agent (if it still listens) right away; ignore a closed pipe.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{STARTED_LINE_PREFIX}{pid}");
        let _ = out.flush();
    }
    let status = loop {
        match child.wait() {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(format!("waiting for the container: {e}"))),
        }
    };
    let (exit_code, signal) = match (status.code(), status.signal()) {
        (Some(c), _) => (c, None),
        (None, Some(s)) => (128 + s, Some(s)),
        (None, None) => (255, None),
    };
    let rec = ExitRecord {
        exit_code,
        signal,
        started_at: Some(started_at),
        finished_at: now_rfc3339(),
        start_error: None,
    };
    write_json_atomic(&spec.state_dir.join(EXIT_FILE), &rec).context("writing exit.json")?;
    std::process::exit(exit_code & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_roundtrips_as_json() {
        let spec = ExecSpec {
            namespace: "ns".into(),
            pod: "p".into(),
            container: "c".into(),
            program: "/bin/true".into(),
            argv0: "lab-toolbox".into(),
            args: vec!["exit".into(), "0".into()],
            env: vec![("A".into(), "1".into())],
            working_dir: String::new(),
            hostname: "p".into(),
            mounts: vec![MountSpec {
                source: "/tmp".into(),
                target: "/x".into(),
                read_only: true,
            }],
            termination_message_path: "/dev/termination-log".into(),
            termination_log: "/tmp/t".into(),
            log_file: "/tmp/l".into(),
            state_dir: "/tmp".into(),
            run_as_user: Some(1000),
            run_as_group: None,
        };
        let back: ExecSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn json_is_written_atomically() {
        let d = crate::node::test_dir("exec");
        let p = d.join("exit.json");
        let rec = ExitRecord {
            exit_code: 143,
            signal: Some(15),
            started_at: None,
            finished_at: now_rfc3339(),
            start_error: None,
        };
        write_json_atomic(&p, &rec).unwrap();
        assert_eq!(read_json::<ExitRecord>(&p), Some(rec));
        assert!(!p.with_extension("tmp").exists());
    }
}
