//! Finding a cluster's processes without its state files: a supervisor by
//! its command line (`sa-lab supervise --name NAME`) and the `SA_LAB_HOME`
//! it was started with, and the processes it started. `down` uses this when
//! the state directory was deleted or its `status.json` is unreadable, so a
//! running cluster can always be stopped.

use std::fs;
use std::path::Path;

/// A process, identified across pid reuse by its start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Proc {
    pub pid: u32,
    /// Clock ticks after boot (`/proc/PID/stat` field 22).
    start: u64,
}

impl Proc {
    /// The process `pid`, if it runs (zombies included).
    pub fn of(pid: u32) -> Option<Proc> {
        let (_, start) = stat(pid)?;
        Some(Proc { pid, start })
    }

    /// It still runs and is the same process (not a reused pid, not a zombie).
    pub fn alive(self) -> bool {
        Proc::of(self.pid) == Some(self) && super::pid_alive(self.pid)
    }
}

/// (parent pid, start time) from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...; comm may hold spaces and ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): ppid is field 4, starttime 22.
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

fn pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Is `args` (a command line) a supervisor of cluster `name`?
fn is_supervisor_of(args: &[&str], name: &str) -> bool {
    args.len() == 4 && args[1..] == ["supervise", "--name", name]
}

/// The value of `key` in a process environment block (NUL-separated).
fn env_value<'a>(environ: &'a [u8], key: &str) -> Option<&'a [u8]> {
    environ.split(|b| *b == 0).find_map(|kv| {
        kv.strip_prefix(key.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"="))
    })
}

/// Live supervisors of cluster `name` under the state home `home` (each
/// is started with `SA_LAB_HOME` set to it), found in `/proc`.
pub(crate) fn supervisors_of(name: &str, home: &Path) -> Vec<Proc> {
    pids()
        .into_iter()
        .filter(|pid| {
            let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let text = String::from_utf8_lossy(&cmdline);
            let args: Vec<&str> = text.trim_end_matches('\0').split('\0').collect();
            if !is_supervisor_of(&args, name) {
                return false;
            }
            let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            env_value(&environ, "SA_LAB_HOME")
                .is_some_and(|h| h == home.as_os_str().as_encoded_bytes())
        })
        .filter(|pid| super::pid_alive(*pid))
        .filter_map(Proc::of)
        .collect()
}

/// Every live descendant of `root` (children, theirs, ...).
pub(crate) fn descendants(root: u32) -> Vec<Proc> {
    let all: Vec<(u32, u32)> = pids()
        .into_iter()
        .filter_map(|pid| Some((pid, stat(pid)?.0)))
        .collect();
    let mut found: Vec<u32> = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found[1..].iter().filter_map(|p| Proc::of(*p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_supervisor_is_known_by_its_exact_command_line() {
        let yes = ["/x/sa-lab", "supervise", "--name", "t-a"];
        assert!(is_supervisor_of(&yes, "t-a"));
        assert!(!is_supervisor_of(&yes, "t"));
        assert!(!is_supervisor_of(
            &["/x/sa-lab", "supervise", "--name", "t-a", "x"],
            "t-a"
        ));
        assert!(!is_supervisor_of(
            &["/x/sa-lab", "run", "--name", "t-a"],
            "t-a"
        ));
    }

    #[test]
    fn environment_values() {
        let env = b"A=1\0SA_LAB_HOME=/tmp/h\0SA_LAB_HOME_X=no\0";
        assert_eq!(env_value(env, "SA_LAB_HOME"), Some(&b"/tmp/h"[..]));
        assert_eq!(env_value(env, "SA_LAB"), None);
        assert_eq!(env_value(env, "B"), None);
    }

    #[test]
    fn this_process_and_its_child() {
        let me = Proc::of(std::process::id()).unwrap();
        assert!(me.alive());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let kids = descendants(std::process::id());
        assert!(kids.iter().any(|p| p.pid == child.id()), "{kids:?}");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(Proc::of(child.id()).is_none_or(|p| !p.alive()));
    }
}
