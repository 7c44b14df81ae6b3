//! The learner's progress, in the workspace (`.sa-lab/progress.json`):
//! one entry per exercise id, so re-ordering or adding exercises never
//! loses it. Entries of ids the catalog no longer has are kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Exercise, FileError};

/// The progress file's format version.
pub const VERSION: u32 = 1;

/// Everything the learner did, by exercise id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// [`VERSION`].
    pub version: u32,
    /// By exercise id.
    #[serde(default)]
    pub exercises: BTreeMap<String, Entry>,
}

/// One exercise's progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// A check passed (stays true: a solved exercise stays solved).
    #[serde(default)]
    pub solved: bool,
    /// Checks run.
    #[serde(default)]
    pub attempts: u32,
    /// Hints shown so far.
    #[serde(default)]
    pub hints_shown: usize,
    /// The solution was shown before it was solved.
    #[serde(default)]
    pub revealed: bool,
    /// When it was first solved (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solved_at: Option<String>,
    /// When it was last checked (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checked: Option<String>,
    /// How the last check ended: `passed`, `failed` or `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
}

/// The progress file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] FileError),
    /// The file is not progress JSON.
    #[error("{} is not an sa-lab progress file (fix or delete it; `sa-lab exercises init` writes a new one)", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        #[source]
        source: serde_json::Error,
    },
}

/// The time now, as progress records it.
pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_default()
        .to_string()
}

impl Progress {
    /// A new, empty progress.
    pub fn new() -> Progress {
        Progress {
            version: VERSION,
            exercises: BTreeMap::new(),
        }
    }

    /// Read `path`.
    pub fn load(path: &Path) -> Result<Progress, ProgressError> {
        let text = std::fs::read_to_string(path).map_err(FileError::of("reading", path))?;
        serde_json::from_str(&text).map_err(|source| ProgressError::Parse {
            path: path.into(),
            source,
        })
    }

    /// Write `path` whole or not at all (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> Result<(), ProgressError> {
        let text = serde_json::to_string_pretty(self).unwrap_or_default() + "\n";
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(FileError::of("writing", &tmp))?;
        std::fs::rename(&tmp, path).map_err(FileError::of("replacing", path))?;
        Ok(())
    }

    /// The entry of exercise `id` (empty if it has none).
    pub fn get(&self, id: &str) -> Entry {
        self.exercises.get(id).cloned().unwrap_or_default()
    }

    /// The entry of exercise `id`, made if missing.
    pub fn entry(&mut self, id: &str) -> &mut Entry {
        self.exercises.entry(id.to_string()).or_default()
    }

    /// Record a check of `id` that passed or not (`None`: it could not run).
    pub fn record_check(&mut self, id: &str, passed: Option<bool>, at: &str) {
        let e = self.entry(id);
        e.attempts += 1;
        e.last_checked = Some(at.into());
        e.last_result = Some(
            match passed {
                Some(true) => "passed",
                Some(false) => "failed",
                None => "error",
            }
            .into(),
        );
        if passed == Some(true) && !e.solved {
            e.solved = true;
            e.solved_at = Some(at.into());
        }
    }

    /// Whether `id` is solved.
    pub fn solved(&self, id: &str) -> bool {
        self.exercises.get(id).is_some_and(|e| e.solved)
    }

    /// The first exercise of `catalog` not solved yet.
    pub fn next_unsolved<'a>(
        &self,
        mut catalog: impl Iterator<Item = &'a Exercise>,
    ) -> Option<&'a Exercise> {
        catalog.find(|e| !self.solved(e.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(id: &'static str) -> Exercise {
        Exercise {
            id,
            chapter: "03-rolebinding",
            definition: "",
            readme: "",
            files: &[],
        }
    }

    #[test]
    fn checks_hints_and_order_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("progress.json");
        let mut p = Progress::new();
        p.record_check("03-b", Some(false), "2026-01-01T00:00:00Z");
        p.record_check("03-b", Some(true), "2026-01-01T00:01:00Z");
        p.record_check("03-b", Some(false), "2026-01-01T00:02:00Z");
        p.entry("03-a").hints_shown = 2;
        p.entry("99-gone").solved = true;
        p.save(&path).unwrap();
        let back = Progress::load(&path).unwrap();
        assert_eq!(back, p);
        let b = back.get("03-b");
        assert_eq!(b.attempts, 3);
        assert!(b.solved, "a solved exercise stays solved");
        assert_eq!(b.solved_at.as_deref(), Some("2026-01-01T00:01:00Z"));
        assert_eq!(b.last_result.as_deref(), Some("failed"));

        // Keyed by id: another order gives the same answers.
        let list = [ex("03-a"), ex("03-b"), ex("03-c")];
        assert_eq!(back.next_unsolved(list.iter()).unwrap().id, "03-a");
        let reordered = [ex("03-b"), ex("03-c"), ex("03-a")];
        assert_eq!(back.next_unsolved(reordered.iter()).unwrap().id, "03-c");

        std::fs::write(&path, "{not json").unwrap();
        let e = Progress::load(&path).unwrap_err().to_string();
        assert!(e.contains("is not an sa-lab progress file"), "{e}");
    }
}
