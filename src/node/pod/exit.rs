//! How a container ended, as the kubelet reports it: `exit.json` (written by
//! `pod-exec`) becomes a terminated state with reason `Completed`, `Error`,
//! `StartError` or `ContainerStatusUnknown`, and the termination message
//! (or, with `FallbackToLogsOnError`, the tail of the log after a failure).

use std::fs;
use std::path::Path;

use super::{Worker, parse_ts};
use crate::node::exec::{self, EXIT_FILE, ExitRecord};

/// Kubelet's `MaxContainerTerminationMessageLength`.
pub const MAX_TERMINATION_MESSAGE: usize = 4 * 1024;
/// Kubelet's `MaxContainerTerminationMessageLogLength` / lines.
const MAX_FALLBACK_LOG_BYTES: usize = 2 * 1024;
const MAX_FALLBACK_LOG_LINES: usize = 80;

/// A terminated container state.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Term {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<jiff::Timestamp>,
    pub finished_at: jiff::Timestamp,
    pub pid: Option<i32>,
}

/// A container that could not be started (`StartError`, exit code 128).
pub(super) fn start_error(message: String) -> Term {
    Term {
        exit_code: 128,
        signal: None,
        reason: "StartError".into(),
        message: Some(message),
        started_at: None,
        finished_at: jiff::Timestamp::now(),
        pid: None,
    }
}

/// A container whose end nobody saw (its wrapper vanished without a record).
pub(super) fn unknown_term() -> Term {
    Term {
        exit_code: 137,
        signal: None,
        reason: "ContainerStatusUnknown".into(),
        message: Some("The container could not be located when the pod was terminated".into()),
        started_at: None,
        finished_at: jiff::Timestamp::now(),
        pid: None,
    }
}

/// What's needed to turn a container's exit files into a [`Term`].
#[derive(Clone, Copy)]
pub(super) struct TermInfo {
    fallback_to_logs: bool,
}

impl Worker {
    pub(super) fn term_info(&self, i: usize) -> TermInfo {
        let policy = self.containers[i]
            .spec
            .termination_message_policy
            .as_deref();
        TermInfo {
            fallback_to_logs: policy == Some("FallbackToLogsOnError"),
        }
    }
}

impl TermInfo {
    /// The terminated state once the container's wrapper has exited. The
    /// wrapper renames `exit.json` into place before it exits, so a wrapper
    /// that is gone without one never wrote it (it was killed, or failed
    /// before it could: then `pod-exec.log` says why).
    pub(super) fn read(self, cdir: &Path, pid: Option<i32>) -> Term {
        let Some(rec) = exec::read_json::<ExitRecord>(&cdir.join(EXIT_FILE)) else {
            let why = fs::read_to_string(cdir.join("pod-exec.log")).unwrap_or_default();
            let mut t = unknown_term();
            if !why.trim().is_empty() {
                t.reason = "StartError".into();
                t.exit_code = 128;
                t.message = Some(truncate(why.trim(), MAX_TERMINATION_MESSAGE));
            }
            t.pid = pid;
            return t;
        };
        self.term_of(rec, cdir, pid)
    }

    /// The terminated state a kubelet reports for a container's exit record:
    /// reason Completed/Error (StartError if it never ran), the termination
    /// message (or, with FallbackToLogsOnError, the log tail after a failure).
    pub(super) fn term_of(self, rec: ExitRecord, cdir: &Path, pid: Option<i32>) -> Term {
        let finished_at =
            parse_ts(&Some(rec.finished_at.clone())).unwrap_or_else(jiff::Timestamp::now);
        if let Some(err) = rec.start_error {
            return Term {
                finished_at,
                pid,
                ..start_error(err)
            };
        }
        let mut message = read_capped(&cdir.join("termination-log"), MAX_TERMINATION_MESSAGE);
        if message.is_empty() && rec.exit_code != 0 && self.fallback_to_logs {
            message = log_tail(&cdir.join("log"));
        }
        Term {
            exit_code: rec.exit_code,
            signal: rec.signal,
            reason: if rec.exit_code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            },
            message: (!message.is_empty()).then_some(message),
            started_at: parse_ts(&rec.started_at),
            finished_at,
            pid,
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn read_capped(path: &Path, max: usize) -> String {
    match fs::read(path) {
        Ok(mut d) => {
            d.truncate(max);
            let s = String::from_utf8_lossy(&d).into_owned();
            truncate(&s, max)
        }
        Err(_) => String::new(),
    }
}

fn log_tail(path: &Path) -> String {
    let data = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&data);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(MAX_FALLBACK_LOG_LINES);
    let tail = lines[start..].join("\n");
    if tail.len() > MAX_FALLBACK_LOG_BYTES {
        let mut cut = tail.len() - MAX_FALLBACK_LOG_BYTES;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail[cut..].to_string()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_tails() {
        assert_eq!(truncate("héllo", 2), "h");
        let d = crate::node::test_dir("tail");
        let p = d.join("log");
        let text: String = (0..200).map(|i| format!("line {i}\n")).collect();
        fs::write(&p, text).unwrap();
        let t = log_tail(&p);
        assert!(t.ends_with("line 199"));
        assert_eq!(t.lines().count(), MAX_FALLBACK_LOG_LINES);
        fs::write(d.join("msg"), "x".repeat(5000)).unwrap();
        assert_eq!(
            read_capped(&d.join("msg"), MAX_TERMINATION_MESSAGE).len(),
            4096
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn exit_records_become_kubelet_states() {
        let d = crate::node::test_dir("exit");
        let rec = |code: i32, start_error: Option<&str>| ExitRecord {
            exit_code: code,
            signal: None,
            started_at: None,
            finished_at: exec::now_rfc3339(),
            start_error: start_error.map(str::to_string),
        };
        let plain = TermInfo {
            fallback_to_logs: false,
        };
        let fallback = TermInfo {
            fallback_to_logs: true,
        };
        fs::write(d.join("log"), "last words\n").unwrap();
        let t = plain.term_of(rec(0, None), &d, Some(5));
        assert_eq!(
            (t.reason.as_str(), t.message, t.pid),
            ("Completed", None, Some(5))
        );
        let t = plain.term_of(rec(2, None), &d, None);
        assert_eq!((t.reason.as_str(), t.message), ("Error", None));
        let t = fallback.term_of(rec(2, None), &d, None);
        assert_eq!(t.message.as_deref(), Some("last words"));
        let t = plain.term_of(rec(128, Some("no such program")), &d, None);
        assert_eq!((t.reason.as_str(), t.exit_code), ("StartError", 128));
        fs::write(d.join("termination-log"), "bye").unwrap();
        let t = fallback.term_of(rec(2, None), &d, None);
        assert_eq!(t.message.as_deref(), Some("bye"));
        fs::remove_dir_all(&d).unwrap();
    }
}
