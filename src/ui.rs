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
