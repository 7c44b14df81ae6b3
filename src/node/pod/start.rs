//! Starting a container: the lab binary its command names, its environment
//! (retried while a configMap or secret is missing), its mounts, and
//! `sa-lab pod-exec` started with the [`ExecSpec`] that says all of it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use k8s_openapi::api::core::v1::{Container, PodSecurityContext, SecurityContext};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::env::expand;
use super::exit::start_error;
use super::{CState, Exit, Worker, parse_ts};
use crate::node::error_text;
use crate::node::exec::{
    self, ExecSpec, MountSpec, STARTED_FILE, STARTED_LINE_PREFIX, StartedRecord,
};

/// Why a container could not be started; it then ends with `StartError`.
#[derive(Debug, thiserror::Error)]
enum StartError {
    /// The container sets no command, and the lab image has no entrypoint.
    #[error(
        "the lab image has no default entrypoint: container {0:?} must set command (a lab binary name)"
    )]
    NoCommand(String),
    /// `command[0]` names no lab binary that cargo built.
    #[error(
        "failed to create containerd task: exec: {cmd0:?}: executable file not found in the lab image (no {} was built)",
        program.display()
    )]
    NotBuilt { cmd0: String, program: PathBuf },
    /// A volumeMount names no volume of the Pod.
    #[error("volumeMount {0:?} refers to no volume of the pod")]
    NoVolume(String),
    /// The container's dir could not be made or its spec written.
    #[error("{what} {}", path.display())]
    Files {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `sa-lab pod-exec` could not be started.
    #[error("starting sa-lab pod-exec")]
    Spawn(#[source] std::io::Error),
}

/// The program a container runs: the lab binary named by the basename of
/// `command[0]`, and `command[0]` as written (for `argv[0]`).
fn program(labs_dir: &Path, c: &Container) -> Result<(PathBuf, String), StartError> {
    let cmd0 = c
        .command
        .as_ref()
        .and_then(|v| v.first())
        .cloned()
        .ok_or_else(|| StartError::NoCommand(c.name.clone()))?;
    let base = Path::new(&cmd0)
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    let program = labs_dir.join(&base);
    if base.is_empty() || !program.is_file() {
        return Err(StartError::NotBuilt { cmd0, program });
    }
    Ok((program, cmd0))
}

/// Each volumeMount as a bind mount of the volume's host dir (or its subPath).
fn mounts(
    c: &Container,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<Vec<MountSpec>, StartError> {
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let src = volumes
            .get(&m.name)
            .ok_or_else(|| StartError::NoVolume(m.name.clone()))?;
        let src = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sp) => {
                let p = src.join(sp);
                if !p.exists() {
                    let _ = fs::create_dir_all(&p);
                }
                p
            }
            None => src.clone(),
        };
        mounts.push(MountSpec {
            source: src,
            target: m.mount_path.clone(),
            read_only: m.read_only.unwrap_or(false),
        });
    }
    Ok(mounts)
}

/// A fresh container dir (no state from an earlier attempt) with an empty,
/// world-writable termination log; returns the log's path.
fn fresh_container_dir(cdir: &Path) -> Result<PathBuf, StartError> {
    let _ = fs::remove_dir_all(cdir);
    fs::create_dir_all(cdir).map_err(|source| StartError::Files {
        what: "creating",
        path: cdir.to_path_buf(),
        source,
    })?;
    let tlog = cdir.join("termination-log");
    let _ = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o666)
        .open(&tlog);
    let _ = fs::set_permissions(&tlog, fs::Permissions::from_mode(0o666));
    Ok(tlog)
}

impl Worker {
    /// Starts container `i` through `sa-lab pod-exec`. Errs only when the pod
    /// goes away; a container that cannot start ends with `StartError`.
    pub(super) async fn start_container(
        &mut self,
        i: usize,
        volumes: &BTreeMap<String, PathBuf>,
    ) -> Result<(), Exit> {
        let c = self.containers[i].spec.clone();
        let (program, argv0) = match program(&self.ctx.opts.labs_dir, &c) {
            Ok(p) => p,
            Err(e) => {
                self.fail_start(i, &e);
                return Ok(());
            }
        };
        let env = self.env_with_retry(i, &c).await?;
        let started = match self.exec_spec(i, &c, program, argv0, env, volumes) {
            Ok(spec_path) => self.spawn(i, &spec_path).await,
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            self.fail_start(i, &e);
        }
        Ok(())
    }

    /// The container's env; while it cannot be resolved the container waits
    /// with `CreateContainerConfigError` (from the third failure on, with one
    /// `Failed` event) and it is retried with backoff.
    async fn env_with_retry(
        &mut self,
        i: usize,
        c: &Container,
    ) -> Result<Vec<(String, String)>, Exit> {
        let mut failures = 0u32;
        loop {
            match self.build_env(c).await {
                Ok(env) => return Ok(env),
                Err(e) => {
                    failures += 1;
                    if failures >= 3 {
                        let message = error_text(&e);
                        self.containers[i].state = CState::Waiting {
                            reason: "CreateContainerConfigError".into(),
                            message: Some(message.clone()),
                        };
                        if failures == 3 {
                            let cr = &self.containers[i];
                            self.event(true, "Failed", format!("Error: {message}"), Some(cr));
                        }
                        self.post_status().await;
                    }
                    self.backoff(failures).await?;
                }
            }
        }
    }

    /// Writes the container's `spec.json` into a fresh container dir and
    /// emits `Pulled` and `Created`; returns the spec's path.
    fn exec_spec(
        &self,
        i: usize,
        c: &Container,
        program: PathBuf,
        argv0: String,
        env: Vec<(String, String)>,
        volumes: &BTreeMap<String, PathBuf>,
    ) -> Result<PathBuf, StartError> {
        let args: Vec<String> = c
            .command
            .iter()
            .flatten()
            .skip(1)
            .chain(c.args.iter().flatten())
            .map(|a| expand(a, &env))
            .collect();
        let mounts = mounts(c, volumes)?;
        let cdir = self.container_dir(&c.name);
        let termination_log = fresh_container_dir(&cdir)?;
        let spec = ExecSpec {
            namespace: self.ns.clone(),
            pod: self.name.clone(),
            container: c.name.clone(),
            program,
            argv0,
            args,
            env,
            working_dir: c.working_dir.clone().unwrap_or_default(),
            hostname: self.name.clone(),
            mounts,
            termination_message_path: c
                .termination_message_path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/dev/termination-log".into()),
            termination_log,
            log_file: cdir.join("log"),
            state_dir: cdir.clone(),
            run_as_user: self.security(c, |sc| sc.run_as_user, |psc| psc.run_as_user),
            run_as_group: self.security(c, |sc| sc.run_as_group, |psc| psc.run_as_group),
        };
        let cr = &self.containers[i];
        let image = c.image.clone().unwrap_or_default();
        let pulled = format!("Container image {image:?} already present on machine");
        self.event(false, "Pulled", pulled, Some(cr));
        let created = format!("Created container: {}", c.name);
        self.event(false, "Created", created, Some(cr));
        let spec_path = cdir.join("spec.json");
        exec::write_json_atomic(&spec_path, &spec).map_err(|source| StartError::Files {
            what: "writing",
            path: spec_path.clone(),
            source,
        })?;
        Ok(spec_path)
    }

    /// Starts `sa-lab pod-exec SPEC` in the background, reads the program's
    /// pid from its first line, and hands its exit to the worker's channel.
    async fn spawn(&mut self, i: usize, spec_path: &Path) -> Result<(), StartError> {
        let cdir = spec_path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let stderr = fs::File::create(cdir.join("pod-exec.log"))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let mut child = tokio::process::Command::new(&self.ctx.self_bin)
            .arg("pod-exec")
            .arg(spec_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(false)
            .spawn()
            .map_err(StartError::Spawn)?;
        let wrapper_pid = child.id().map(|p| p as i32).unwrap_or(0);
        let mut pid = None;
        if let Some(out) = child.stdout.take() {
            let mut lines = BufReader::new(out).lines();
            if let Ok(Some(line)) = lines.next_line().await {
                pid = line
                    .strip_prefix(STARTED_LINE_PREFIX)
                    .and_then(|p| p.trim().parse::<i32>().ok());
            }
        }
        let info = self.term_info(i);
        let tx = self.exit_tx.clone();
        let waiter_dir = cdir.clone();
        tokio::spawn(async move {
            let _ = child.wait().await;
            let t = info.read(&waiter_dir, pid);
            let _ = tx.send((i, t));
        });
        // Without a pid the wrapper failed before the program ran; its waiter reports StartError.
        if let Some(pid) = pid {
            let started: Option<StartedRecord> = exec::read_json(&cdir.join(STARTED_FILE));
            let started_at = started
                .and_then(|s| parse_ts(&Some(s.started_at)))
                .unwrap_or_else(jiff::Timestamp::now);
            self.containers[i].state = CState::Running {
                started_at,
                pid,
                wrapper_pid,
            };
            let cr = &self.containers[i];
            let note = format!("Started container {}", cr.spec.name);
            self.event(false, "Started", note, Some(cr));
        }
        Ok(())
    }

    /// A securityContext field: the container's value, else the pod's.
    fn security(
        &self,
        c: &Container,
        from_container: impl Fn(&SecurityContext) -> Option<i64>,
        from_pod: impl Fn(&PodSecurityContext) -> Option<i64>,
    ) -> Option<u32> {
        c.security_context
            .as_ref()
            .and_then(from_container)
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.security_context.as_ref())
                    .and_then(from_pod)
            })
            .and_then(|v| u32::try_from(v).ok())
    }

    fn fail_start(&mut self, i: usize, e: &StartError) {
        let msg = error_text(e);
        self.containers[i].state = CState::Terminated(start_error(msg.clone()));
        let cr = &self.containers[i];
        self.event(true, "Failed", format!("Error: {msg}"), Some(cr));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_command_names_a_built_lab_binary() {
        let labs = crate::node::test_dir("labs");
        fs::write(labs.join("lab-toolbox"), "").unwrap();
        let c = container(
            serde_json::json!({"name": "c", "command": ["/usr/local/bin/lab-toolbox", "x"]}),
        );
        let (p, argv0) = program(&labs, &c).unwrap();
        assert_eq!(
            (p, argv0.as_str()),
            (labs.join("lab-toolbox"), "/usr/local/bin/lab-toolbox")
        );
        let c = container(serde_json::json!({"name": "c", "command": ["lab-nope"]}));
        let e = program(&labs, &c).unwrap_err();
        assert!(
            error_text(&e).contains("\"lab-nope\": executable file not found"),
            "{e}"
        );
        let c = container(serde_json::json!({"name": "c"}));
        assert!(matches!(program(&labs, &c), Err(StartError::NoCommand(n)) if n == "c"));
        fs::remove_dir_all(&labs).unwrap();
    }

    #[test]
    fn mounts_need_a_volume() {
        let c = container(serde_json::json!({"name": "c", "volumeMounts": [
            {"name": "v", "mountPath": "/a", "readOnly": true}, {"name": "w", "mountPath": "/b"}]}));
        let mut vols = BTreeMap::new();
        vols.insert("v".to_string(), PathBuf::from("/tmp/v"));
        let e = mounts(&c, &vols).unwrap_err();
        assert_eq!(
            e.to_string(),
            "volumeMount \"w\" refers to no volume of the pod"
        );
        vols.insert("w".to_string(), PathBuf::from("/tmp/w"));
        let m = mounts(&c, &vols).unwrap();
        assert_eq!((m[0].target.as_str(), m[0].read_only), ("/a", true));
        assert_eq!(
            (m[1].source.as_path(), m[1].read_only),
            (Path::new("/tmp/w"), false)
        );
    }
}
