//! Pod dirs on disk (`<work_dir>/pods/<uid>`) and the processes they record:
//! whose `pod-exec` wrapper is still ours, and killing what a pod left
//! running (after its deletion, or when the agent itself is gone).

use std::fs;
use std::path::{Path, PathBuf};

use nix::sys::signal::{self, Signal, killpg};
use nix::unistd::Pid;

use super::exec::{self, ExecSpec, StartedRecord};

/// `<work_dir>/pods/<uid>`.
pub fn pod_dir(work_dir: &Path, uid: &str) -> PathBuf {
    work_dir.join("pods").join(uid)
}

/// `<pod dir>/containers/<name>`.
pub fn container_dir(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir.join("containers").join(name)
}

/// Is the `pod-exec` wrapper with this pid (still) ours?
pub fn wrapper_alive(wrapper_pid: i32, state_dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{wrapper_pid}/cmdline")) else {
        return false;
    };
    let spec = state_dir.join("spec.json");
    let needle = spec.to_string_lossy();
    let text = String::from_utf8_lossy(&cmdline);
    text.contains("pod-exec") && text.contains(needle.as_ref())
}

fn process_group_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid pgrp ...; comm may contain spaces: split after ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Kills every still-running container process recorded under a pod dir.
pub fn kill(pod_dir: &Path) {
    let Ok(rd) = fs::read_dir(pod_dir.join("containers")) else {
        return;
    };
    for e in rd.flatten() {
        let cdir = e.path();
        let Some(s) = exec::read_json::<StartedRecord>(&cdir.join(exec::STARTED_FILE)) else {
            continue;
        };
        if cdir.join(exec::EXIT_FILE).exists() {
            continue;
        }
        if s.pid <= 1 || s.wrapper_pid <= 1 {
            continue;
        }
        let program = exec::read_json::<ExecSpec>(&cdir.join("spec.json")).map(|spec| spec.program);
        let ours = |pid: i32| {
            process_group_of(pid) == Some(s.wrapper_pid)
                && program.is_some()
                && fs::read_link(format!("/proc/{pid}/exe")).ok() == program
        };
        if ours(s.pid) {
            let _ = signal::kill(Pid::from_raw(s.pid), Signal::SIGKILL);
        }
        if wrapper_alive(s.wrapper_pid, &cdir) || ours(s.pid) {
            let _ = killpg(Pid::from_raw(s.wrapper_pid), Signal::SIGKILL);
        }
    }
}

/// Kills what a pod left running and removes its dir.
pub fn remove(work_dir: &Path, uid: &str) {
    let dir = pod_dir(work_dir, uid);
    if dir.exists() {
        kill(&dir);
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Best effort: kills any pod process recorded under `work_dir` (the supervisor
/// calls it after the node agent has exited).
pub fn kill_leftovers(work_dir: &Path) {
    let Ok(rd) = fs::read_dir(work_dir.join("pods")) else {
        return;
    };
    for e in rd.flatten() {
        kill(&e.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_group_parsing() {
        let me = std::process::id() as i32;
        assert!(process_group_of(me).is_some());
        assert_eq!(process_group_of(-5), None);
    }

    #[test]
    fn kill_leftovers_tolerates_missing_dirs() {
        kill_leftovers(Path::new("/nonexistent/sa-lab"));
        let d = crate::node::test_dir("leftovers");
        let c = d.join("pods/u1/containers/c");
        fs::create_dir_all(&c).unwrap();
        // A record whose wrapper is long gone (pid 1 is not a pod-exec).
        exec::write_json_atomic(
            &c.join(exec::STARTED_FILE),
            &StartedRecord {
                wrapper_pid: 1,
                pid: 1,
                started_at: exec::now_rfc3339(),
            },
        )
        .unwrap();
        kill_leftovers(&d);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn only_our_wrapper_counts_as_alive() {
        let me = std::process::id() as i32;
        assert!(
            !wrapper_alive(me, Path::new("/x")),
            "the test binary is no pod-exec"
        );
        assert!(!wrapper_alive(-1, Path::new("/x")));
    }
}
