//! Progress lines on stderr, in the style of kind: ` ✓ Starting etcd`.
//! Plain text when stderr is not a terminal; stdout stays for results.

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// One step of a long operation. Prints ` • msg ...` now and ` ✓ msg (1.2s)`
/// or ` ✗ msg` when finished.
pub struct Step {
    msg: String,
    start: Instant,
    done: bool,
    quiet: bool,
}

impl Step {
    pub fn start(msg: impl Into<String>) -> Self {
        let msg = msg.into();
        let quiet = quiet();
        if !quiet {
            let mut e = std::io::stderr().lock();
            if e.is_terminal() {
                let _ = write!(e, " • {msg} ...");
            } else {
                let _ = writeln!(e, " • {msg} ...");
            }
            let _ = e.flush();
        }
        Step {
            msg,
            start: Instant::now(),
            done: false,
            quiet,
        }
    }

    pub fn ok(mut self) {
        self.finish(true);
    }

    pub fn fail(mut self) {
        self.finish(false);
    }

    fn finish(&mut self, ok: bool) {
        if self.done {
            return;
        }
        self.done = true;
        if self.quiet {
            return;
        }
        let mark = if ok { "✓" } else { "✗" };
        let secs = self.start.elapsed().as_secs_f64();
        let mut e = std::io::stderr().lock();
        if e.is_terminal() {
            let _ = write!(e, "\r\x1b[2K");
        }
        let _ = writeln!(e, " {mark} {} ({secs:.1}s)", self.msg);
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        // A step dropped without ok() (an early `?` return) failed.
        self.finish(false);
    }
}

/// `SA_LAB_QUIET=1` silences progress lines (tests set it).
pub fn quiet() -> bool {
    std::env::var("SA_LAB_QUIET").is_ok_and(|v| v == "1")
}

/// Prints an informational line on stderr unless quiet.
pub fn note(msg: impl AsRef<str>) {
    if !quiet() {
        eprintln!("   {}", msg.as_ref());
    }
}

/// An error and its causes on one line, `a: b: c`. An API error ends the
/// chain as "the API server answered CODE MESSAGE" (kube's own Display of
/// it repeats the status in Debug form, and its causes repeat the
/// message); a cause whose text the previous part already ends with is
/// skipped.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(kube::Error::Api(s)) = c.downcast_ref::<kube::Error>() {
            parts.push(format!("the API server answered {} {}", s.code, s.message));
            break;
        }
        let text = c.to_string();
        if !parts.last().is_some_and(|p| p.ends_with(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("running chapter 3")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("applying Role/x")]
    struct Inner(#[source] kube::Error);

    #[test]
    fn error_chain_ends_with_what_the_api_server_said() {
        let api = kube::Error::Api(Box::new(
            kube::core::Status::failure("no", "Forbidden").with_code(403),
        ));
        let e = Outer(Inner(api));
        assert_eq!(
            error_chain(&e),
            "running chapter 3: applying Role/x: the API server answered 403 no"
        );
    }
}
