//! The learner's workspace: a folder they own, apart from the repository,
//! so their work survives upgrades.
//!
//! ```text
//! DIR/
//!   README.md                    how to work here
//!   .sa-lab/progress.json        progress (marks DIR as a workspace)
//!   .sa-lab/reset/<id>/          what `reset` replaced, kept
//!   03-rolebinding/
//!     03-pods-only/
//!       README.md                the task
//!       rbac.yaml                what the learner edits: every *.yaml is applied
//! ```
//!
//! The commands find it from any folder below it, or take `--dir` /
//! `$SA_LAB_EXERCISES`.

use std::path::{Path, PathBuf};

use super::progress::{Progress, ProgressError};
use super::{Exercise, FileError, catalog};

/// The folder that marks a workspace and holds its state.
pub const STATE_DIR: &str = ".sa-lab";
/// The progress file, in [`STATE_DIR`].
pub const PROGRESS_FILE: &str = "progress.json";
/// The environment variable naming the workspace.
pub const DIR_ENV: &str = "SA_LAB_EXERCISES";

/// How a Rust exercise's `Cargo.toml` names lab-kit in the repository
/// (relative to `starter/` and `solution/`); the workspace gets the
/// absolute path of the repository's `labs/lab-kit`.
pub const LAB_KIT_IN_REPO: &str = r#"path = "../../../../lab-kit""#;

/// A workspace could not be found, made or changed.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// No workspace at or above the current folder.
    #[error(
        "not inside an exercises workspace (looked in {} and every folder above it): \
         create one with `sa-lab exercises init DIR`, or name it with --dir DIR or ${DIR_ENV}",
        from.display()
    )]
    NotFound {
        /// Where the search started.
        from: PathBuf,
    },
    /// `--dir` names a folder that is not (inside) a workspace.
    #[error(
        "{} is not an exercises workspace (no {STATE_DIR}/{PROGRESS_FILE} in it or above it): \
         create it with `sa-lab exercises init {}`",
        dir.display(), dir.display()
    )]
    NotAWorkspace {
        /// The folder named.
        dir: PathBuf,
    },
    /// `init` into a folder that has other files.
    #[error(
        "{} is not empty and is not an exercises workspace: choose a new or empty folder",
        dir.display()
    )]
    NotEmpty {
        /// The folder.
        dir: PathBuf,
    },
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] FileError),
    /// The progress file.
    #[error(transparent)]
    Progress(#[from] ProgressError),
}

/// Which version of an exercise's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// What the learner starts from.
    Starter,
    /// The solution.
    Solution,
}

/// A learner's workspace.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// Its root folder.
    pub root: PathBuf,
}

/// What `init` did.
#[derive(Debug, Default)]
pub struct Init {
    /// Exercises whose starter was written.
    pub written: Vec<&'static str>,
    /// Exercises already there, left as they were.
    pub kept: Vec<&'static str>,
}

const WORKSPACE_README: &str = "\
# sa-lab exercises

Each folder `NN-chapter/<exercise>/` holds one exercise: its README.md says
what to do, and every `*.yaml` file in it is what `sa-lab check` applies to
the cluster (Rust exercises also build the crate there). A real API server
grades it: a check runs probe Pods as your ServiceAccounts and compares what
was allowed and refused with the exercise's rows.

    sa-lab exercises               the list, with your progress
    sa-lab check [ID]              grade one (no ID: the next unsolved)
    sa-lab hint ID                 the next hint
    sa-lab watch                   re-check on every save
    sa-lab solution ID             once solved (or --reveal); --write puts it here
    sa-lab reset ID                back to the starter (your files are kept in .sa-lab/reset/)

These work from any folder below this one. Your progress is in
.sa-lab/progress.json.
";

impl Workspace {
    /// Make a workspace at `dir` (created if missing) with every
    /// exercise's starter. In an existing workspace, only the exercises it
    /// lacks are added: nothing the learner wrote is touched.
    pub fn init(dir: &Path) -> Result<(Workspace, Init), WorkspaceError> {
        let ws = Workspace { root: dir.into() };
        let progress = ws.progress_path();
        let existing = progress.is_file();
        if !existing
            && dir.is_dir()
            && std::fs::read_dir(dir)
                .map_err(FileError::of("reading", dir))?
                .next()
                .is_some()
        {
            return Err(WorkspaceError::NotEmpty { dir: dir.into() });
        }
        let state = dir.join(STATE_DIR);
        std::fs::create_dir_all(&state).map_err(FileError::of("creating", &state))?;
        if !existing {
            Progress::new().save(&progress)?;
        }
        write_file(&dir.join("README.md"), WORKSPACE_README)?;
        write_file(&dir.join(".gitignore"), "target/\n.sa-lab/reset/\n")?;
        let mut done = Init::default();
        for ex in catalog() {
            if ws.folder(ex).exists() {
                done.kept.push(ex.id);
            } else {
                ws.write(ex, Version::Starter)?;
                done.written.push(ex.id);
            }
        }
        Ok((ws, done))
    }

    /// The workspace at or above `dir` (`--dir`), else at or above the
    /// current folder.
    pub fn locate(dir: Option<&Path>) -> Result<Workspace, WorkspaceError> {
        let start = match dir {
            Some(d) => d.to_path_buf(),
            None => std::env::current_dir().map_err(FileError::of("reading", Path::new(".")))?,
        };
        let start = std::path::absolute(&start).unwrap_or(start);
        for d in start.ancestors() {
            if d.join(STATE_DIR).join(PROGRESS_FILE).is_file() {
                return Ok(Workspace { root: d.into() });
            }
        }
        Err(match dir {
            Some(d) => WorkspaceError::NotAWorkspace { dir: d.into() },
            None => WorkspaceError::NotFound { from: start },
        })
    }

    /// `.sa-lab/progress.json`.
    pub fn progress_path(&self) -> PathBuf {
        self.root.join(STATE_DIR).join(PROGRESS_FILE)
    }

    /// The progress.
    pub fn progress(&self) -> Result<Progress, WorkspaceError> {
        Ok(Progress::load(&self.progress_path())?)
    }

    /// Change the progress and save it.
    pub fn update<T>(&self, f: impl FnOnce(&mut Progress) -> T) -> Result<T, WorkspaceError> {
        let mut p = self.progress()?;
        let out = f(&mut p);
        p.save(&self.progress_path())?;
        Ok(out)
    }

    /// `DIR/<chapter>/<id>`.
    pub fn folder(&self, ex: &Exercise) -> PathBuf {
        self.root.join(ex.chapter).join(ex.id)
    }

    /// The exercise whose folder holds `path`, if any.
    pub fn exercise_at(&self, path: &Path) -> Option<&'static Exercise> {
        catalog().find(|e| path.starts_with(self.folder(e)))
    }

    /// Write `ex`'s README and files (`version`) into its folder.
    pub fn write(&self, ex: &Exercise, version: Version) -> Result<(), WorkspaceError> {
        let folder = self.folder(ex);
        std::fs::create_dir_all(&folder).map_err(FileError::of("creating", &folder))?;
        write_file(&folder.join("README.md"), ex.readme)?;
        for f in ex.files {
            let text = match version {
                Version::Starter => f.starter,
                Version::Solution => f.solution,
            };
            write_file(&folder.join(f.path), &for_workspace(f.path, text))?;
        }
        if ex.files.iter().any(|f| f.path == "Cargo.toml") {
            // The repository's lock: the same versions it built, so the
            // learner's crate reuses its compiled dependencies.
            let lock = crate::paths::repo_root().join("Cargo.lock");
            let text = std::fs::read_to_string(&lock).map_err(FileError::of("reading", &lock))?;
            write_file(&folder.join("Cargo.lock"), &text)?;
        }
        Ok(())
    }

    /// Put `ex` back to its starter. What was in its folder is copied to
    /// `.sa-lab/reset/<id>/` first (replacing an earlier copy), so nothing
    /// is lost. The folder itself stays (a shell or editor may be in it);
    /// its contents are replaced. Returns where the copy is.
    pub fn reset(&self, ex: &Exercise) -> Result<PathBuf, WorkspaceError> {
        let folder = self.folder(ex);
        let keep = self.root.join(STATE_DIR).join("reset").join(ex.id);
        if keep.exists() {
            std::fs::remove_dir_all(&keep).map_err(FileError::of("removing", &keep))?;
        }
        if folder.exists() {
            copy_tree(&folder, &keep)?;
            for e in std::fs::read_dir(&folder)
                .map_err(FileError::of("reading", &folder))?
                .flatten()
            {
                let p = e.path();
                if p.file_name().is_some_and(|n| n == "target") {
                    continue;
                }
                let removed = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                removed.map_err(FileError::of("removing", &p))?;
            }
        }
        self.write(ex, Version::Starter)?;
        Ok(keep)
    }
}

/// Copy `from` into `to` (made), files and folders, but no `target/`.
fn copy_tree(from: &Path, to: &Path) -> Result<(), WorkspaceError> {
    std::fs::create_dir_all(to).map_err(FileError::of("creating", to))?;
    for e in std::fs::read_dir(from)
        .map_err(FileError::of("reading", from))?
        .flatten()
    {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            if e.file_name() != "target" {
                copy_tree(&src, &dst)?;
            }
        } else {
            std::fs::copy(&src, &dst).map_err(FileError::of("copying", &src))?;
        }
    }
    Ok(())
}

/// A file's text as the workspace gets it: a Rust exercise's `Cargo.toml`
/// names lab-kit by its absolute path.
pub fn for_workspace(path: &str, text: &str) -> String {
    if path == "Cargo.toml" {
        let lab_kit = crate::paths::repo_root().join("labs").join("lab-kit");
        text.replace(
            LAB_KIT_IN_REPO,
            &format!("path = {:?}", lab_kit.display().to_string()),
        )
    } else {
        text.to_string()
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), WorkspaceError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(FileError::of("creating", parent))?;
    }
    std::fs::write(path, text).map_err(FileError::of("writing", path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_locate_reset() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ws");
        let (ws, init) = Workspace::init(&dir).unwrap();
        assert_eq!(init.written.len(), catalog().count());
        assert!(ws.progress_path().is_file());

        // Found from any folder below it, and by --dir.
        let Some(ex) = catalog().next() else {
            return;
        };
        let inner = ws.folder(ex);
        assert_eq!(Workspace::locate(Some(&inner)).unwrap().root, dir);
        let e = Workspace::locate(Some(tmp.path())).unwrap_err().to_string();
        assert!(e.contains("is not an exercises workspace"), "{e}");
        assert_eq!(ws.exercise_at(&inner.join("x.yaml")).unwrap().id, ex.id);

        // init again keeps what the learner wrote.
        let file = inner.join(ex.files[0].path);
        std::fs::write(&file, "mine").unwrap();
        let (_, again) = Workspace::init(&dir).unwrap();
        assert!(again.written.is_empty());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");

        // reset: the starter again, the learner's copy kept; a file the
        // learner added is gone from the folder (it would be applied).
        std::fs::write(inner.join("extra.yaml"), "x").unwrap();
        let kept = ws.reset(ex).unwrap();
        assert!(!inner.join("extra.yaml").exists());
        assert!(kept.join("extra.yaml").exists());
        assert_eq!(
            std::fs::read_to_string(kept.join(ex.files[0].path)).unwrap(),
            "mine"
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            for_workspace(ex.files[0].path, ex.files[0].starter)
        );

        // A folder with other things in it is refused.
        let other = tmp.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("notes.txt"), "x").unwrap();
        let e = Workspace::init(&other).unwrap_err().to_string();
        assert!(
            e.contains("is not empty and is not an exercises workspace"),
            "{e}"
        );
    }

    #[test]
    fn cargo_toml_names_lab_kit_by_absolute_path() {
        let text = format!("[dependencies]\nlab-kit = {{ {LAB_KIT_IN_REPO} }}\n");
        let out = for_workspace("Cargo.toml", &text);
        let lab_kit = crate::paths::repo_root().join("labs/lab-kit");
        assert!(
            out.contains(&format!("{:?}", lab_kit.display().to_string())),
            "{out}"
        );
        assert_eq!(for_workspace("rbac.yaml", &text), text);
    }
}
