//! Ctrl-C (SIGINT) and SIGTERM, treated alike: a command that makes
//! something (a cluster, a chapter's objects, an exercise's objects) stops
//! at either and removes what it made before it exits.
//!
//! Once a handler is installed, the signal no longer ends the process by
//! itself for as long as the process lives (that is how tokio's handlers
//! work): a second signal while the command cleans up is swallowed, so the
//! clean-up always finishes.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Listens for SIGINT and SIGTERM.
pub struct Interrupt {
    int: Signal,
    term: Signal,
}

/// Which signal arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caught {
    /// SIGINT, as Ctrl-C sends.
    Int,
    /// SIGTERM, as `kill` and service managers send.
    Term,
}

impl std::fmt::Display for Caught {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Caught::Int => "Ctrl-C",
            Caught::Term => "SIGTERM",
        })
    }
}

impl Interrupt {
    /// Installs both handlers (call it before making anything, so no signal
    /// is lost between the two).
    pub fn install() -> std::io::Result<Interrupt> {
        Ok(Interrupt {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// The next SIGINT or SIGTERM.
    pub async fn recv(&mut self) -> Caught {
        tokio::select! {
            _ = self.int.recv() => Caught::Int,
            _ = self.term.recv() => Caught::Term,
        }
    }
}
