//! Atomic volume writes, the way the kubelet's `AtomicWriter` does them.
//!
//! A volume directory holds a timestamped directory with the files
//! (`..2026_01_02_03_04_05.123456789`), a `..data` symlink to it, and for each
//! top-level entry a symlink `name -> ..data/name`. An update writes a new
//! timestamped directory and swaps `..data` with one `rename(2)`, so a reader
//! never sees a half-written token.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path};

/// One file of a volume's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    pub mode: u32,
}

pub type Payload = BTreeMap<String, FileProjection>;

const DATA_DIR: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// Checks a payload path the way the API server and kubelet do: relative,
/// no `..` element, not starting with `..`.
pub fn validate_path(p: &str) -> io::Result<()> {
    let bad = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid path {p:?}: {why}"),
        ))
    };
    if p.is_empty() {
        return bad("empty");
    }
    if p.starts_with("..") {
        return bad("must not start with '..'");
    }
    for c in Path::new(p).components() {
        match c {
            Component::Normal(_) => {}
            Component::CurDir => {}
            _ => return bad("must be relative and must not contain '..'"),
        }
    }
    Ok(())
}

/// Writes `payload` into `dir` atomically. Returns whether anything changed.
pub fn write(dir: &Path, payload: &Payload) -> io::Result<bool> {
    for p in payload.keys() {
        validate_path(p)?;
    }
    fs::create_dir_all(dir)?;
    let data_link = dir.join(DATA_DIR);
    let old_ts = fs::read_link(&data_link).ok();
    if old_ts
        .as_ref()
        .is_some_and(|old| current_matches(&dir.join(old), payload))
    {
        return Ok(false);
    }

    let ts = format!(
        "..{}.{:09}",
        jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S"),
        rand::random::<u32>() % 1_000_000_000
    );
    let ts_dir = dir.join(&ts);
    fs::create_dir(&ts_dir)?;
    if let Err(e) = write_files(&ts_dir, payload) {
        // As the kubelet's AtomicWriter: a half-written payload (a full
        // disk) is removed, not left beside `..data` at each retry.
        let _ = fs::remove_dir_all(&ts_dir);
        return Err(e);
    }

    let tmp = dir.join(DATA_TMP);
    let _ = fs::remove_file(&tmp);
    symlink(&ts, &tmp)?;
    fs::rename(&tmp, &data_link)?;

    let wanted: BTreeSet<String> = payload.keys().map(|p| top_level(p)).collect();
    for name in &wanted {
        let link = dir.join(name);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA_DIR).join(name), &link)?;
        }
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") {
            if name != DATA_DIR && name != ts && entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
            }
            continue;
        }
        if !wanted.contains(&name) && entry.file_type()?.is_symlink() {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(true)
}

/// Writes every file of `payload` under `ts_dir`.
fn write_files(ts_dir: &Path, payload: &Payload) -> io::Result<()> {
    fs::set_permissions(ts_dir, fs::Permissions::from_mode(0o755))?;
    for (p, f) in payload {
        let path = ts_dir.join(p);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut file = fs::File::create(&path)?;
        file.write_all(&f.data)?;
        file.sync_all()?;
        fs::set_permissions(&path, fs::Permissions::from_mode(f.mode & 0o7777))?;
    }
    Ok(())
}

fn top_level(p: &str) -> String {
    Path::new(p)
        .components()
        .find_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .unwrap_or_default()
}

fn current_matches(ts_dir: &Path, payload: &Payload) -> bool {
    let mut found = BTreeSet::new();
    if collect_files(ts_dir, ts_dir, &mut found).is_err() {
        return false;
    }
    if found.len() != payload.len() {
        return false;
    }
    payload.iter().all(|(p, f)| {
        let path = ts_dir.join(p);
        found.contains(Path::new(p).to_string_lossy().as_ref())
            && fs::metadata(&path)
                .map(|m| m.permissions().mode() & 0o7777 == f.mode & 0o7777)
                .unwrap_or(false)
            && fs::read(&path).map(|d| d == f.data).unwrap_or(false)
    })
}

fn collect_files(root: &Path, dir: &Path, out: &mut BTreeSet<String>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            collect_files(root, &entry.path(), out)?;
        } else {
            let rel = entry
                .path()
                .strip_prefix(root)
                .map_err(io::Error::other)?
                .to_string_lossy()
                .into_owned();
            out.insert(rel);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(s: &str, mode: u32) -> FileProjection {
        FileProjection {
            data: s.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn writes_swaps_and_prunes() {
        let d = crate::node::test_dir("atomic");
        let mut p = Payload::new();
        p.insert("token".into(), fp("t1", 0o644));
        p.insert("ca.crt".into(), fp("ca", 0o644));
        p.insert("sub/dir/file".into(), fp("x", 0o600));
        assert!(write(&d, &p).unwrap());
        assert_eq!(fs::read_to_string(d.join("token")).unwrap(), "t1");
        assert_eq!(fs::read_to_string(d.join("sub/dir/file")).unwrap(), "x");
        assert!(
            fs::symlink_metadata(d.join("token"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let mode = fs::metadata(d.join("sub/dir/file"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        // Same payload: nothing to do.
        assert!(!write(&d, &p).unwrap());
        let first = fs::read_link(d.join("..data")).unwrap();
        // New token, one file gone.
        p.insert("token".into(), fp("t2", 0o644));
        p.remove("ca.crt");
        assert!(write(&d, &p).unwrap());
        assert_eq!(fs::read_to_string(d.join("token")).unwrap(), "t2");
        assert!(fs::symlink_metadata(d.join("ca.crt")).is_err());
        assert!(!d.join(first).exists(), "old timestamped dir removed");
        // A mode change alone is a change.
        p.insert("token".into(), fp("t2", 0o600));
        assert!(write(&d, &p).unwrap());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_escaping_paths() {
        for bad in ["../x", "/etc/passwd", "a/../../b", "..data", ""] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
        for good in ["token", "a/b", "a..b"] {
            assert!(validate_path(good).is_ok(), "{good}");
        }
    }
}
