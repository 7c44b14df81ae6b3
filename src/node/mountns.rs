//! The container's mount namespace, built by `pod-exec` before it starts the
//! program: a private `/run` (the host's entries, but no `secrets`), a small
//! private `/dev` whose `termination-log` is a per-container file on the
//! host, and every volumeMount bind-mounted at its mountPath (parents first).
//!
//! The container sees the host's files, not an image, so a path the host
//! has cannot simply be left out: it is hidden by mounting over its parent.
//! `/run` (where `/var/run` points) is rebuilt on a tmpfs from the host's
//! entries less `secrets`, so `/var/run/secrets/kubernetes.io/serviceaccount`
//! exists exactly when a volume is mounted at or below it, as in a container
//! on a kubelet, whatever the host holds there. Mount points made for
//! volumes below `/run` land on that tmpfs, never on the host.

use std::fs::{self, File};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::unistd::{Gid, Uid, getegid, geteuid, sethostname};

use super::exec::ExecSpec;

/// A step of building the container's mount namespace that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// unshare(2) of the mount (and UTS, and for a user, user) namespace failed.
    #[error("unshare({0})")]
    Unshare(&'static str, #[source] nix::Error),
    /// Writing the user namespace's uid or gid map failed.
    #[error("writing {0}")]
    IdMap(&'static str, #[source] std::io::Error),
    /// Making every mount private (so nothing propagates to the host) failed.
    #[error("making mounts private")]
    Private(#[source] nix::Error),
    /// Mounting a tmpfs failed.
    #[error("mounting tmpfs at {}", .0.display())]
    Tmpfs(PathBuf, #[source] nix::Error),
    /// A bind mount failed.
    #[error("bind-mounting {} at {}", .0.display(), .1.display())]
    Bind(PathBuf, PathBuf, #[source] nix::Error),
    /// Remounting a bind mount read-only failed.
    #[error("remounting {} read-only", .0.display())]
    ReadOnly(PathBuf, #[source] nix::Error),
    /// Creating a file, directory or symlink the namespace needs failed.
    #[error("creating {}", .0.display())]
    Create(PathBuf, #[source] std::io::Error),
}

fn create(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |e| Error::Create(path, e)
}

/// The directory holding `secrets` on the host: `/var/run` is usually `/run`.
fn host_run_dir() -> PathBuf {
    fs::canonicalize("/var/run").unwrap_or_else(|_| PathBuf::from("/run"))
}

/// The host's entry the container's `/run` leaves out (ServiceAccount
/// tokens live below it, at `secrets/kubernetes.io/serviceaccount`).
const HIDDEN: &str = "secrets";

/// Rebuilds `run` (in the calling thread's private mount namespace) as a
/// tmpfs holding every entry of the host's `run` except [`HIDDEN`]: dirs and
/// files bind-mounted, symlinks copied. Built at `staging` first, then bound
/// over `run`.
fn private_run(run: &Path, staging: &Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let mode = fs::metadata(run).map_err(create(run))?.mode() & 0o7777;
    fs::create_dir_all(staging).map_err(create(staging))?;
    mount_tmpfs(staging, &format!("mode={mode:o}"))?;
    for entry in fs::read_dir(run).map_err(create(run))? {
        let entry = entry.map_err(create(run))?;
        let name = entry.file_name();
        if name == HIDDEN {
            continue;
        }
        let (from, to) = (entry.path(), staging.join(&name));
        let ty = entry.file_type().map_err(create(&from))?;
        if ty.is_symlink() {
            let target = fs::read_link(&from).map_err(create(&from))?;
            symlink(target, &to).map_err(create(&to))?;
        } else {
            make_mount_point(&to, ty.is_dir())?;
            bind(&from, &to, false)?;
        }
    }
    bind(staging, run, false)
}

/// Moves the calling (single-threaded) process into the container's mount
/// and UTS namespaces, built as `spec` says.
pub fn enter(spec: &ExecSpec) -> Result<(), Error> {
    let uid = geteuid();
    let gid = getegid();
    if uid.is_root() {
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
            .map_err(|e| Error::Unshare("CLONE_NEWNS", e))?;
    } else {
        unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
            .map_err(|e| Error::Unshare("CLONE_NEWUSER|CLONE_NEWNS", e))?;
        write_id_maps(uid, gid)?;
    }
    make_private()?;
    let _ = sethostname(&spec.hostname);

    private_run(&host_run_dir(), &spec.state_dir.join("run"))?;

    let dev_termination_log = private_dev(spec)?;
    volume_mounts(spec)?;
    if !dev_termination_log && !spec.termination_message_path.is_empty() {
        let target = Path::new(&spec.termination_message_path);
        make_mount_point(target, false)?;
        bind(&spec.termination_log, target, false)?;
    }
    Ok(())
}

/// A private /dev with the usual nodes, built under the container's state
/// dir and bound over /dev; returns whether the termination message path
/// lies in it (and is then backed by the container's termination log).
fn private_dev(spec: &ExecSpec) -> Result<bool, Error> {
    let dev = spec.state_dir.join("dev");
    fs::create_dir_all(&dev).map_err(create(&dev))?;
    mount_tmpfs(&dev, "mode=0755")?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(name);
        if host.exists() {
            let t = dev.join(name);
            File::create(&t).map_err(create(&t))?;
            bind(&host, &t, false)?;
        }
    }
    for (name, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let link = dev.join(name);
        symlink(to, &link).map_err(create(&link))?;
    }
    let shm = dev.join("shm");
    fs::create_dir_all(&shm).map_err(create(&shm))?;
    mount_tmpfs(&shm, "mode=1777")?;
    if Path::new("/dev/pts").is_dir() {
        let pts = dev.join("pts");
        fs::create_dir_all(&pts).map_err(create(&pts))?;
        let _ = bind(Path::new("/dev/pts"), &pts, false);
    }
    let in_dev = spec
        .termination_message_path
        .strip_prefix("/dev/")
        .map(|rest| dev.join(rest));
    if let Some(t) = &in_dev {
        if let Some(parent) = t.parent() {
            fs::create_dir_all(parent).map_err(create(parent))?;
        }
        File::create(t).map_err(create(t))?;
        bind(&spec.termination_log, t, false)?;
    }
    fs::set_permissions(&dev, fs::Permissions::from_mode(0o755)).map_err(create(&dev))?;
    bind(&dev, Path::new("/dev"), false)?;
    Ok(in_dev.is_some())
}

/// Every volumeMount at its mountPath, parents first (sorted by depth).
fn volume_mounts(spec: &ExecSpec) -> Result<(), Error> {
    let mut mounts = spec.mounts.clone();
    mounts.sort_by_key(|m| Path::new(&m.target).components().count());
    for m in &mounts {
        let target = Path::new(&m.target);
        make_mount_point(target, m.source.is_dir())?;
        bind(&m.source, target, m.read_only)?;
    }
    Ok(())
}

/// Makes every mount of the (new) namespace private, so nothing done in it
/// propagates to the host.
fn make_private() -> Result<(), Error> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(Error::Private)
}

fn write_id_maps(uid: Uid, gid: Gid) -> Result<(), Error> {
    fs::write("/proc/self/uid_map", format!("0 {uid} 1"))
        .map_err(|e| Error::IdMap("uid_map", e))?;
    let _ = fs::write("/proc/self/setgroups", "deny");
    fs::write("/proc/self/gid_map", format!("0 {gid} 1"))
        .map_err(|e| Error::IdMap("gid_map", e))?;
    Ok(())
}

fn mount_tmpfs(target: &Path, data: &str) -> Result<(), Error> {
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data),
    )
    .map_err(|e| Error::Tmpfs(target.to_path_buf(), e))
}

fn make_mount_point(target: &Path, dir: bool) -> Result<(), Error> {
    if dir {
        fs::create_dir_all(target).map_err(create(target))
    } else {
        if let Some(p) = target.parent() {
            fs::create_dir_all(p).map_err(create(p))?;
        }
        if !target.exists() {
            File::create(target).map_err(create(target))?;
        }
        Ok(())
    }
}

fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), Error> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| Error::Bind(source.to_path_buf(), target.to_path_buf(), e))?;
    if read_only {
        // Keep the flags the kernel locks in a user namespace (nosuid, nodev, ...).
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Ok(st) = statvfs(target) {
            let f = st.flags();
            for (ff, mf) in [
                (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
                (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
                (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
                (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
            ] {
                if f.contains(ff) {
                    flags |= mf;
                }
            }
        }
        mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
            .map_err(|e| Error::ReadOnly(target.to_path_buf(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A host `run` dir that holds `secrets/kubernetes.io/serviceaccount`:
    /// the private view has every other entry and no `secrets`, and what
    /// is created below it stays off the host. Mounts need root: the test
    /// runs the view in a thread of its own mount namespace.
    #[test]
    fn private_run_hides_secrets_whatever_the_host_has() {
        if !geteuid().is_root() {
            eprintln!("private_run_hides_secrets_whatever_the_host_has: needs root for mounts");
            return;
        }
        let d = crate::node::test_dir("mountns");
        let run = d.join("run");
        fs::create_dir_all(run.join("secrets/kubernetes.io/serviceaccount")).unwrap();
        fs::write(
            run.join("secrets/kubernetes.io/serviceaccount/token"),
            "host",
        )
        .unwrap();
        fs::create_dir_all(run.join("lock/sub")).unwrap();
        fs::write(run.join("file"), "f").unwrap();
        symlink("/dev/shm", run.join("shm")).unwrap();
        let (r, staging) = (run.clone(), d.join("staging"));
        let seen = std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS) in a thread");
            make_private().unwrap();
            private_run(&r, &staging).expect("private run");
            let sa = r.join("secrets/kubernetes.io/serviceaccount");
            let absent = !sa.exists() && !r.join("secrets").exists();
            // A volume mounted below it gets its mount point on the tmpfs.
            make_mount_point(&sa, true).unwrap();
            let made = sa.is_dir() && entries(&sa).is_empty();
            let lock_sub = r.join("lock/sub").is_dir();
            let file = fs::read_to_string(r.join("file")).unwrap_or_default();
            let link = fs::read_link(r.join("shm")).ok();
            (entries(&r), absent, made, lock_sub, file, link)
        })
        .join()
        .expect("the namespace thread");
        let (names, absent, made, lock_sub, file, link) = seen;
        assert_eq!(
            names,
            ["file", "lock", "secrets", "shm"],
            "after the mount point"
        );
        assert!(absent, "secrets hidden in the view");
        assert!(made && lock_sub, "mount point made; host dirs visible");
        assert_eq!(
            (file.as_str(), link),
            ("f", Some(PathBuf::from("/dev/shm")))
        );
        // The host is untouched: its token is still there, nothing new.
        let token = run.join("secrets/kubernetes.io/serviceaccount/token");
        assert_eq!(fs::read_to_string(token).unwrap(), "host");
        assert_eq!(entries(&run), ["file", "lock", "secrets", "shm"]);
        assert!(
            entries(&d.join("staging")).is_empty(),
            "nothing propagated to the host"
        );
        fs::remove_dir_all(&d).unwrap();
    }
}
