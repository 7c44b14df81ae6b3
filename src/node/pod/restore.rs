//! After a node agent restart: each container's state is rebuilt from its
//! dir (`exit.json`, `started.json`) and from the API status, a container
//! whose `pod-exec` wrapper still runs is adopted, and a finished container
//! is never run again.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus};

use super::exit::{Term, unknown_term};
use super::{CState, Worker, parse_ts, ts};
use crate::node::exec::{self, EXIT_FILE, ExitRecord, STARTED_FILE, StartedRecord};
use crate::node::poddir::wrapper_alive;

/// Returns once the `pod-exec` wrapper `wrapper_pid` (running `cdir`'s
/// spec) has exited. Errs only when the kernel offers no pidfd.
async fn wrapper_exit(wrapper_pid: i32, cdir: &std::path::Path) -> std::io::Result<()> {
    let fd = match crate::sys::pidfd_open(wrapper_pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => return Ok(()),
        Err(e) => return Err(e),
    };
    // The pid may have been reused between the check and the open.
    if !wrapper_alive(wrapper_pid, cdir) {
        return Ok(());
    }
    let _exited = crate::sys::readable(fd)?.readable().await?;
    Ok(())
}

/// A terminated state the API recorded (by an earlier agent).
fn term_from_api(t: ContainerStateTerminated) -> Term {
    Term {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: t.reason.unwrap_or_default(),
        message: t.message,
        started_at: ts(&t.started_at),
        finished_at: ts(&t.finished_at).unwrap_or_else(jiff::Timestamp::now),
        pid: None,
    }
}

impl Worker {
    /// Every container's state as recorded in the API status (init and main).
    fn api_states(&self) -> Vec<ContainerStatus> {
        let Some(s) = self.pod.status.as_ref() else {
            return Vec::new();
        };
        s.container_statuses
            .iter()
            .flatten()
            .chain(s.init_container_statuses.iter().flatten())
            .cloned()
            .collect()
    }

    /// Rebuilds container states from the pod dir and from the API status:
    /// finished containers are never run again, running ones are adopted.
    pub(super) fn restore(&mut self) {
        let api_statuses = self.api_states();
        for i in 0..self.containers.len() {
            let name = self.containers[i].spec.name.clone();
            let cdir = self.container_dir(&name);
            let exit: Option<ExitRecord> = exec::read_json(&cdir.join(EXIT_FILE));
            let started: Option<StartedRecord> = exec::read_json(&cdir.join(STARTED_FILE));
            let state = if let Some(rec) = exit {
                let pid = started.as_ref().map(|s| s.pid);
                CState::Terminated(self.term_info(i).term_of(rec, &cdir, pid))
            } else if let Some(s) = started {
                self.adopt(i, s, cdir)
            } else {
                let api = api_statuses
                    .iter()
                    .find(|s| s.name == name)
                    .and_then(|s| s.state.clone());
                match api {
                    Some(ContainerState {
                        terminated: Some(t),
                        ..
                    }) => CState::Terminated(term_from_api(t)),
                    Some(ContainerState {
                        running: Some(_), ..
                    }) => CState::Terminated(unknown_term()),
                    _ => continue,
                }
            };
            self.containers[i].state = state;
        }
    }

    /// A container that started under an earlier agent: running if its
    /// wrapper still runs (and then watched until it ends), else unknown.
    fn adopt(&mut self, i: usize, s: StartedRecord, cdir: PathBuf) -> CState {
        if !wrapper_alive(s.wrapper_pid, &cdir) {
            return CState::Terminated(unknown_term());
        }
        let name = &self.containers[i].spec.name;
        tracing::info!(pod = %self.name, container = %name, pid = s.pid, "adopting a running container");
        let started_at = parse_ts(&Some(s.started_at.clone())).unwrap_or_else(jiff::Timestamp::now);
        self.spawn_exit_waiter(i, s.wrapper_pid, s.pid, cdir);
        CState::Running {
            started_at,
            pid: s.pid,
            wrapper_pid: s.wrapper_pid,
        }
    }

    /// Waits for an adopted container (not our child) to end: on a pidfd of
    /// its wrapper, which becomes readable when the wrapper exits.
    fn spawn_exit_waiter(&self, i: usize, wrapper_pid: i32, pid: i32, cdir: PathBuf) {
        let tx = self.exit_tx.clone();
        let info = self.term_info(i);
        tokio::spawn(async move {
            if let Err(e) = wrapper_exit(wrapper_pid, &cdir).await {
                tracing::warn!(error = %e, wrapper_pid, "cannot watch an adopted container; checking every second");
                while wrapper_alive(wrapper_pid, &cdir) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            let t = info.read(&cdir, Some(pid));
            let _ = tx.send((i, t));
        });
    }
}
