//! Exercises: the learner writes the YAML (and some Rust), the real API
//! server grades it.
//!
//! Each exercise lives with its chapter, in `labs/NN-slug/exercises/<id>/`:
//!
//! | file | what it is |
//! |---|---|
//! | `exercise.yaml` | the definition ([`def::Definition`]): title, kind, namespaces, the kinds it accepts, the probe Pods, the must-allow and must-refuse rows (every refusal names its allowed twin, checked by the chapters' oracle), hints, and which rows the starter fails |
//! | `README.md` | the task the learner gets; its table of rows is generated from `exercise.yaml` |
//! | `starter/…` | what the learner starts from (the same file names as `solution/`) |
//! | `solution/…` | a solution; CI proves it passes |
//!
//! A chapter lists its exercises in the `exercises:` section of its
//! `chapter.rs` (`kit::chapter!`, which expands [`exercises!`]), so the
//! catalog ([`catalog`]) is one compiler-checked entry per exercise, in
//! chapter order. [`workspace`] is the learner's copy and progress,
//! [`check`] grades on a cluster, [`predict`] scores predictions of a
//! chapter's rows, [`rust`] builds the learner's lab code, [`watch`]
//! re-checks on every save.

pub mod check;
pub mod commands;
pub mod def;
pub mod input;
pub mod lint;
pub mod predict;
pub mod progress;
pub mod render;
pub mod rust;
pub mod watch;
pub mod workspace;

use crate::chapters::{self, Chapter};

pub use check::{CheckResult, Cluster};
pub use def::{Definition, Kind};
pub use workspace::Workspace;

/// A file or folder of the workspace could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}", path.display())]
pub struct FileError {
    /// What was done (`reading`, `writing`...).
    pub what: &'static str,
    /// The file or folder.
    pub path: std::path::PathBuf,
    /// Why it failed.
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    /// The error of doing `what` to `path`, from the I/O error.
    pub fn of(what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| FileError { what, path, source }
    }
}

/// One exercise, embedded at build time from its folder.
#[derive(Debug, Clone, Copy)]
pub struct Exercise {
    /// `03-pods-only`: the folder name, the progress key, what commands take.
    pub id: &'static str,
    /// The chapter's slug (`03-rolebinding`).
    pub chapter: &'static str,
    /// `exercise.yaml`.
    pub definition: &'static str,
    /// `README.md`: the task.
    pub readme: &'static str,
    /// The files the learner edits, with their starter and solution text.
    pub files: &'static [ExerciseFile],
}

/// A file of an exercise: the same path in `starter/` and `solution/`.
#[derive(Debug, Clone, Copy)]
pub struct ExerciseFile {
    /// Path inside the exercise folder (`rbac.yaml`, `src/main.rs`).
    pub path: &'static str,
    /// `starter/<path>`.
    pub starter: &'static str,
    /// `solution/<path>`.
    pub solution: &'static str,
}

/// A chapter's exercises as constants the compiler checks: a file that is
/// missing does not build. `kit::chapter!` expands it from the chapter's
/// `exercises:` section.
///
/// ```text
/// exercises! { "03-rolebinding";
///     PODS_ONLY = "03-pods-only" => ["rbac.yaml"],
/// }
/// ```
/// defines `exercises::PODS_ONLY` and `exercises::ALL`, from
/// `labs/03-rolebinding/exercises/03-pods-only/{exercise.yaml, README.md,
/// starter/rbac.yaml, solution/rbac.yaml}`.
macro_rules! exercises {
    ($slug:literal; $($name:ident = $id:literal => [$($file:literal),* $(,)?]),* $(,)?) => {
        /// This chapter's exercises (`labs/<slug>/exercises/`).
        pub mod exercises {
            #[allow(unused_imports)]
            use $crate::exercises::{Exercise, ExerciseFile};
            $(
                #[doc = concat!("`labs/", $slug, "/exercises/", $id, "/`")]
                pub const $name: Exercise = Exercise {
                    id: $id,
                    chapter: $slug,
                    definition: include_str!(concat!(
                        env!("CARGO_MANIFEST_DIR"), "/labs/", $slug, "/exercises/", $id,
                        "/exercise.yaml"
                    )),
                    readme: include_str!(concat!(
                        env!("CARGO_MANIFEST_DIR"), "/labs/", $slug, "/exercises/", $id,
                        "/README.md"
                    )),
                    files: &[$(ExerciseFile {
                        path: $file,
                        starter: include_str!(concat!(
                            env!("CARGO_MANIFEST_DIR"), "/labs/", $slug, "/exercises/", $id,
                            "/starter/", $file
                        )),
                        solution: include_str!(concat!(
                            env!("CARGO_MANIFEST_DIR"), "/labs/", $slug, "/exercises/", $id,
                            "/solution/", $file
                        )),
                    }),*],
                };
            )*
            /// Every exercise of the chapter, in order.
            pub const ALL: &[Exercise] = &[$($name),*];
        }
    };
}
pub(crate) use exercises;

impl Exercise {
    /// Its definition, parsed and checked.
    pub fn def(&self) -> Result<Definition, def::DefError> {
        Definition::parse(self)
    }

    /// Its chapter.
    pub fn chapter(&self) -> &'static Chapter {
        chapters::catalog()
            .iter()
            .copied()
            .find(|c| c.slug == self.chapter)
            .unwrap_or_else(|| panic!("exercise {} names no chapter of the catalog", self.id))
    }

    /// `labs/<chapter>/exercises/<id>`, relative to the repository.
    pub fn source_dir(&self) -> String {
        format!("labs/{}/exercises/{}", self.chapter, self.id)
    }

    /// The binary a Rust exercise builds, and the command its Pod runs.
    pub fn binary(&self) -> String {
        format!("exercise-{}", self.id)
    }
}

/// Every exercise, in chapter order.
pub fn catalog() -> impl Iterator<Item = &'static Exercise> {
    chapters::catalog().iter().flat_map(|c| c.exercises.iter())
}

/// No exercise has this id.
#[derive(Debug, thiserror::Error)]
#[error("unknown exercise {query:?}; the exercises are: {available}")]
pub struct UnknownExercise {
    /// What was asked for.
    pub query: String,
    /// Every id, in order.
    pub available: String,
}

/// The exercise with this id.
pub fn find(id: &str) -> Result<&'static Exercise, UnknownExercise> {
    let q = id.trim().trim_end_matches('/');
    // A path to the folder works too (`03-rolebinding/03-pods-only`).
    let q = q.rsplit('/').next().unwrap_or(q);
    catalog()
        .find(|e| e.id == q)
        .ok_or_else(|| UnknownExercise {
            query: id.to_string(),
            available: catalog().map(|e| e.id).collect::<Vec<_>>().join(", "),
        })
}

/// `labs/NN-slug/exercises/README.md`: the chapter's exercises as the
/// book's "Your turn" section lists them.
pub fn chapter_list(chapter: &Chapter) -> Result<String, def::DefError> {
    let mut out = format!(
        "<!-- Generated from labs/{}/exercises/*/exercise.yaml; \
         `UPDATE_EXPECTED=1 cargo test -p sa-lab --lib exercises` rewrites it. -->\n\n\
         | exercise | kind | what you do |\n|---|---|---|\n",
        chapter.slug
    );
    for ex in chapter.exercises {
        let d = ex.def()?;
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            ex.id,
            d.kind.as_str(),
            d.title
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    fn files_under(dir: &Path) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.insert(p.strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
        out
    }

    /// The catalog and the folders agree: every exercise folder is listed
    /// by its chapter, every listed file exists (the compiler checks that)
    /// and every file of starter/ and solution/ is listed.
    #[test]
    fn catalog_matches_the_folders() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut ids = BTreeSet::new();
        for c in chapters::catalog() {
            let dir = root.join("labs").join(c.slug).join("exercises");
            let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.path().is_dir())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let listed: BTreeSet<String> = c.exercises.iter().map(|e| e.id.to_string()).collect();
            assert_eq!(
                on_disk, listed,
                "{}: every folder of exercises/ is listed in chapter.rs, and only those",
                c.slug
            );
            for e in c.exercises {
                assert!(ids.insert(e.id), "exercise id {} appears twice", e.id);
                assert_eq!(e.chapter, c.slug);
                assert!(
                    e.id.starts_with(&format!("{:02}-", c.number)),
                    "{} must start with its chapter's number",
                    e.id
                );
                let paths: BTreeSet<String> = e.files.iter().map(|f| f.path.to_string()).collect();
                let folder = dir.join(e.id);
                for sub in ["starter", "solution"] {
                    assert_eq!(
                        files_under(&folder.join(sub)),
                        paths,
                        "{}/{sub}: every file is listed in chapter.rs",
                        e.id
                    );
                }
                let top: BTreeSet<String> = std::fs::read_dir(&folder)
                    .unwrap()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                let want: BTreeSet<String> = ["README.md", "exercise.yaml", "solution", "starter"]
                    .map(String::from)
                    .into();
                assert_eq!(top, want, "{}: what an exercise folder holds", e.id);
            }
        }
    }

    #[test]
    fn chapter_lists_are_generated_from_the_catalog() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for c in chapters::catalog()
            .iter()
            .filter(|c| !c.exercises.is_empty())
        {
            let path = root.join("labs").join(c.slug).join("exercises/README.md");
            let want = chapter_list(c).unwrap();
            crate::chapters::oracle::assert_generated(&path, &want, def::tests::UPDATE);
        }
    }

    #[test]
    fn find_by_id_or_folder() {
        let Some(first) = catalog().next() else {
            return;
        };
        assert_eq!(find(first.id).unwrap().id, first.id);
        let path = format!("{}/{}/", first.chapter, first.id);
        assert_eq!(find(&path).unwrap().id, first.id);
        let e = find("99-nope").unwrap_err().to_string();
        assert!(e.contains("unknown exercise \"99-nope\""), "{e}");
        assert!(e.contains(first.id), "{e}");
    }
}
