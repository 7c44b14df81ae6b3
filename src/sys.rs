//! The one place with `unsafe`: hooks that run in a freshly forked child
//! before `exec`. Each hook makes a single async-signal-safe system call.
#![allow(unsafe_code)]

use std::process::Command;

/// Starts the child in a new session (its own process group, no controlling
/// terminal), so a Ctrl-C in the user's terminal does not reach it and the
/// whole group can be signalled at once.
pub fn new_session(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid(2) is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

/// Asks the kernel to SIGKILL the child when its parent (the thread that
/// spawned it) dies, so a crashed supervisor cannot leak components.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}
