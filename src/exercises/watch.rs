//! `sa-lab watch`: like rustlings' watch mode. It checks the current
//! exercise, shows the result and a progress bar, and checks again every
//! time a file of the exercise is saved (inotify). Keys: `h` the next hint,
//! `l` the list, `n` the next exercise, `s` the solution (once solved),
//! `c` check again, `q` quit. Ctrl-C (or SIGTERM) quits too.
//!
//! The terminal is put in non-canonical mode without echo (keys arrive
//! one at a time) and restored on the way out. On something that is not a
//! terminal it reads keys as bytes, so it also runs under a pipe.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices, Termios};
use tokio::io::unix::AsyncFd;

use super::commands::{self, Error, next_steps};
use super::progress::Progress;
use super::workspace::{Workspace, WorkspaceError};
use super::{Exercise, FileError, catalog, render};
use crate::provider::ConnectOptions;

/// How long saves may keep coming before the check starts: an editor's
/// save is several events (write, rename, chmod) within milliseconds.
const SETTLE: Duration = Duration::from_millis(150);

const KEYS: &str = "keys: h hint · l list · n next · s solution · c check again · q quit";

/// Keys arrive one at a time and are not echoed, until dropped.
struct RawKeys {
    saved: Option<Termios>,
}

impl RawKeys {
    fn new() -> RawKeys {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return RawKeys { saved: None };
        }
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else {
            return RawKeys { saved: None };
        };
        let mut raw = saved.clone();
        raw.local_flags
            .remove(LocalFlags::ICANON | LocalFlags::ECHO);
        raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
        raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
        let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        RawKeys { saved: Some(saved) }
    }
}

impl Drop for RawKeys {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, t);
        }
    }
}

/// Keys from stdin, read on a thread of their own (a channel receive can
/// be cancelled safely; a read cannot).
fn keys() -> tokio::sync::mpsc::UnboundedReceiver<u8> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut b = [0u8; 1];
        while let Ok(1) = stdin.read(&mut b) {
            if tx.send(b[0]).is_err() {
                break;
            }
        }
    });
    rx
}

/// Saves in one exercise folder (and its subfolders, `src/`).
struct Saves {
    ino: Inotify,
    /// The same inotify instance, registered with tokio's reactor.
    ready: AsyncFd<OwnedFd>,
    watches: Vec<WatchDescriptor>,
}

impl Saves {
    fn new() -> std::io::Result<Saves> {
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let ready = crate::sys::readable(nix::unistd::dup(&ino)?)?;
        Ok(Saves {
            ino,
            ready,
            watches: Vec::new(),
        })
    }

    /// Watch `folder` and its subfolders instead of what was watched.
    fn watch(&mut self, folder: &Path) -> std::io::Result<()> {
        for w in self.watches.drain(..) {
            let _ = self.ino.rm_watch(w);
        }
        let flags = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE;
        let mut dirs = vec![folder.to_path_buf()];
        while let Some(d) = dirs.pop() {
            self.watches.push(self.ino.add_watch(&d, flags)?);
            for e in std::fs::read_dir(&d)?.flatten() {
                let p = e.path();
                if p.is_dir() && p.file_name().is_some_and(|n| n != "target") {
                    dirs.push(p);
                }
            }
        }
        Ok(())
    }

    /// Whether any pending event is about a file the check reads.
    fn drain(&self) -> bool {
        let mut relevant = false;
        while let Ok(events) = self.ino.read_events() {
            if events.is_empty() {
                break;
            }
            for e in events {
                let Some(name) = e.name.as_ref().map(|n| n.to_string_lossy().into_owned()) else {
                    continue;
                };
                let ext = [".yaml", ".yml", ".rs", ".toml"];
                if !name.starts_with('.') && ext.iter().any(|x| name.ends_with(x)) {
                    relevant = true;
                }
            }
        }
        relevant
    }

    /// Wait for a save, then for the saves to settle.
    async fn next(&self) -> std::io::Result<()> {
        loop {
            let mut guard = self.ready.readable().await?;
            let relevant = self.drain();
            guard.clear_ready();
            if relevant {
                break;
            }
        }
        loop {
            match tokio::time::timeout(SETTLE, self.ready.readable()).await {
                Ok(Ok(mut guard)) => {
                    self.drain();
                    guard.clear_ready();
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(()),
            }
        }
    }
}

fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn clear() {
    if std::io::stdout().is_terminal() {
        say("\x1b[2J\x1b[H");
    }
}

fn footer(progress: &Progress) -> String {
    let total = catalog().count();
    let solved = catalog().filter(|e| progress.solved(e.id)).count();
    format!(
        "\nProgress: {}\n{KEYS}\n",
        render::progress_bar(solved, total, 30)
    )
}

/// Run watch mode until `q`, Ctrl-C or SIGTERM. `start` picks the first exercise
/// (default: the next unsolved one).
pub async fn run(
    dir: Option<&Path>,
    start: Option<&str>,
    opts: &ConnectOptions,
    timeout: Duration,
) -> Result<(), Error> {
    let ws = Workspace::locate(dir)?;
    let mut current = commands::pick(&ws, start)?;
    let cluster = super::Cluster::connect(opts, timeout).await?;
    let _raw = RawKeys::new();
    let mut keys = keys();
    let io = |e| Error::Workspace(WorkspaceError::Io(FileError::of("watching", &ws.root)(e)));
    let mut saves = Saves::new().map_err(io)?;
    let mut interrupt = crate::interrupt::Interrupt::install().map_err(io)?;
    let mut folder: PathBuf = ws.folder(current);
    saves.watch(&folder).map_err(io)?;
    let mut recheck = true;
    let mut keys_open = true;
    loop {
        if recheck {
            recheck = false;
            check(&ws, &cluster, current).await?;
        }
        tokio::select! {
            key = keys.recv(), if keys_open => match key {
                Some(b'q' | b'Q') => break,
                Some(b'h') => {
                    let o = commands::hint(Some(&ws.root), Some(current.id))?;
                    say(&format!("\n{}{KEYS}\n", o.stdout));
                }
                Some(b'l') => {
                    let p = ws.progress()?;
                    say(&format!("\n{}{KEYS}\n", render::list(&p, crate::chapters::render::width())));
                }
                Some(b's') => {
                    let o = commands::solution(Some(&ws.root), current.id, false, false)?;
                    say(&format!("\n{}{}\n{KEYS}\n", o.stdout, o.note));
                }
                Some(b'n') => {
                    let p = ws.progress()?;
                    current = next_after(&p, current);
                    folder = ws.folder(current);
                    saves.watch(&folder).map_err(io)?;
                    recheck = true;
                }
                Some(b'c' | b'\n' | b'\r') => recheck = true,
                // End of input (a closed pipe): saves and Ctrl-C still work.
                None => keys_open = false,
                Some(_) => {}
            },
            r = saves.next() => {
                r.map_err(io)?;
                recheck = true;
            }
            _ = interrupt.recv() => break,
        }
    }
    say("\n");
    Ok(())
}

/// The next unsolved exercise after `current` (wrapping round), else
/// `current`.
fn next_after(p: &Progress, current: &'static Exercise) -> &'static Exercise {
    let all: Vec<&'static Exercise> = catalog().collect();
    let at = all.iter().position(|e| e.id == current.id).unwrap_or(0);
    all.iter()
        .cycle()
        .skip(at + 1)
        .take(all.len())
        .find(|e| !p.solved(e.id))
        .copied()
        .unwrap_or(current)
}

async fn check(ws: &Workspace, cluster: &super::Cluster, ex: &Exercise) -> Result<(), Error> {
    clear();
    say(&format!("Checking {} ...\n", ex.id));
    let was_solved = ws.progress()?.solved(ex.id);
    let width = crate::chapters::render::width();
    let text = match commands::check_one(ws, cluster, ex).await {
        Ok(result) => {
            let mut out = render::check_result(&result, width);
            if let Some(build) = render::build_output(&result) {
                out = format!("{build}\n\n{out}");
            }
            out.push_str(&next_steps(ws, ex, &result, was_solved)?);
            if result.passed {
                out.push_str("\nPress n for the next exercise.");
            }
            out
        }
        // The learner's mistake (bad YAML, a wrong namespace...): shown,
        // and watch goes on.
        Err(Error::Check(e)) => format!(
            "{}: cannot check: {}\nFix it and save; watch checks again.",
            ex.id,
            crate::ui::error_chain(&e)
        ),
        Err(e) => return Err(e),
    };
    clear();
    say(&text);
    say(&footer(&ws.progress()?));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_skips_solved_and_wraps() {
        let all: Vec<&Exercise> = catalog().collect();
        if all.len() < 2 {
            return;
        }
        let mut p = Progress::new();
        assert_eq!(next_after(&p, all[0]).id, all[1].id);
        p.entry(all[1].id).solved = true;
        let want = all.get(2).map_or(all[0].id, |e| e.id);
        assert_eq!(next_after(&p, all[0]).id, want);
        for e in &all {
            p.entry(e.id).solved = true;
        }
        assert_eq!(next_after(&p, all[0]).id, all[0].id);
    }

    #[test]
    fn saves_of_yaml_and_rust_files_count() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut saves = Saves::new().unwrap();
            saves.watch(dir.path()).unwrap();
            std::fs::write(dir.path().join(".rbac.yaml.swp"), "x").unwrap();
            std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
            assert!(
                !saves.drain(),
                "editor swap files and other files do not count"
            );
            std::fs::write(dir.path().join("src/main.rs"), "fn main() {}").unwrap();
            tokio::time::timeout(Duration::from_secs(5), saves.next())
                .await
                .expect("a save in src/ is seen")
                .unwrap();
        });
    }
}
