//! The container's mount namespace, built by `pod-exec` before it starts the
//! program: a private, empty `/run/secrets`, a small private `/dev` whose
//! `termination-log` is a per-container file on the host, and every
//! volumeMount bind-mounted at its mountPath (parents first).

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
pub(crate) fn host_run_dir() -> PathBuf {
    fs::canonicalize("/var/run").unwrap_or_else(|_| PathBuf::from("/run"))
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
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(Error::Private)?;
    let _ = sethostname(&spec.hostname);

    // A private, empty /run/secrets (kubernetes.io/serviceaccount lives below it).
    let run = host_run_dir();
    let secrets = run.join("secrets");
    if !secrets.is_dir() && fs::create_dir_all(&secrets).is_err() {
        // Not root and no /run/secrets on the host: a private /run instead.
        mount_tmpfs(&run, "mode=0755")?;
        fs::create_dir_all(&secrets).map_err(create(&secrets))?;
    }
    mount_tmpfs(&secrets, "mode=0755")?;

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
