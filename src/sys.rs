//! The one place with `unsafe`: hooks that run in a freshly forked child
//! before `exec` (each makes a single async-signal-safe system call),
//! `pidfd_open(2)`, which nix does not wrap, handing an owned file
//! descriptor to tokio's reactor, and passing the kubelet node's lock from
//! `up` to the supervisor (inheriting and adopting a descriptor).
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
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

/// Takes ownership of descriptor `fd`, inherited from the parent process
/// that named it to us (the node lock `up` hands to the supervisor), if it
/// is open.
pub fn adopt_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    if fd < 3 || !std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists() {
        return None;
    }
    // SAFETY: the descriptor is open (checked above) and was left open for
    // this process by its parent; nothing else in this process owns it: the
    // supervisor adopts it once, at start.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Lets the child inherit descriptor `fd` (which stays close-on-exec in
/// this process, so no other child started meanwhile gets it).
pub fn inherit_fd(cmd: &mut Command, fd: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: fcntl(2) is async-signal-safe and touches no memory; `fd` is
    // open in the parent for as long as the Command is spawned, so it is
    // open in the forked child.
    unsafe {
        cmd.pre_exec(move || {
            let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )
            .map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

/// A pidfd for process `pid` (Linux 5.3+): it becomes readable when the
/// process exits, whoever its parent is, so a process that is not our child
/// can be awaited instead of polled.
pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes two integers, touches no memory and
    // returns a new file descriptor or -1.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `fd`, registered with tokio's reactor to be awaited until readable (a
/// pidfd whose process exited, an inotify instance with events queued).
pub fn readable(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    use tokio::io::{Interest, unix::AsyncFd};
    // SAFETY: the AsyncFd owns `fd` for its whole life, so the descriptor
    // stays open and names the same file description, and
    // OwnedFd::as_raw_fd always returns that descriptor.
    let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
    Ok(registered?)
}

/// Changes in one directory (a file written, created, renamed into place
/// or removed), as an inotify instance tokio can await.
pub struct DirWatch {
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
}

impl DirWatch {
    /// Starts watching `dir`.
    pub fn new(dir: &std::path::Path) -> std::io::Result<DirWatch> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(
            dir,
            AddWatchFlags::IN_MODIFY
                | AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_DELETE_SELF
                | AddWatchFlags::IN_MOVE_SELF,
        )?;
        Ok(DirWatch {
            fd: readable(inotify.into())?,
        })
    }

    /// Waits for the next change (and drains the events queued so far).
    pub async fn changed(&mut self) -> std::io::Result<()> {
        let mut events = [0u8; 4096];
        loop {
            let mut guard = self.fd.readable().await?;
            let read = guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref(), &mut events).map_err(std::io::Error::from)
            });
            match read {
                Ok(n) => return n.map(drop),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pidfd_of_self_and_of_no_process() {
        assert!(super::pidfd_open(std::process::id() as i32).is_ok());
        let e = super::pidfd_open(i32::MAX).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::ESRCH));
    }
}
