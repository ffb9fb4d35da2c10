//! Files and directories to delete if the process is interrupted (Ctrl-C,
//! SIGTERM): the temporary outputs, cache entries and staging directories
//! being written. Normal exits clean up through `Drop`; a signal does not run
//! destructors, so `main` calls [`remove_all`] from its signal thread. Also
//! what an interrupt leaves behind that a user must be told about (a node
//! left cordoned): [`note`], printed by `main` on the way out.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// (path, is a directory to remove with everything in it)
static PATHS: Mutex<Vec<(PathBuf, bool)>> = Mutex::new(Vec::new());

/// Deletes its path (if it is still there) and unregisters it when dropped.
///
/// Deleting here, under the list's lock, rather than leaving it to the
/// temporary file or directory that owns the path closes a window: a guard
/// dropped before its owner would unregister the path, and an interrupt
/// arriving before the owner's own delete would then exit with the path left
/// behind. Every registered path is a temporary one: a path that was renamed
/// into place (a finished output) is simply not there any more.
pub struct Registered(PathBuf);

fn add(path: &Path, dir: bool) -> Registered {
    PATHS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((path.to_owned(), dir));
    Registered(path.to_owned())
}

/// A file to delete on interrupt.
pub fn register(path: &Path) -> Registered {
    add(path, false)
}

/// A directory to delete, with its contents, on interrupt.
pub fn register_dir(path: &Path) -> Registered {
    add(path, true)
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut paths = PATHS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = paths.iter().position(|(p, _)| *p == self.0) {
            let (path, dir) = paths.swap_remove(i);
            let _ = if dir {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

/// Deletes every registered file and directory; returns how many there were.
/// The list stays locked, so nothing new is registered while the process exits.
pub fn remove_all() -> usize {
    let paths = PATHS.lock().unwrap_or_else(|e| e.into_inner());
    for (p, dir) in paths.iter() {
        let _ = if *dir {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_file(p)
        };
    }
    let n = paths.len();
    // Hold the lock until exit: a file registered after this point could
    // otherwise outlive the process.
    std::mem::forget(paths);
    n
}

type Hook = Box<dyn Fn() + Send>;
static HOOK: Mutex<Option<Hook>> = Mutex::new(None);

/// Something to do on interrupt before exiting (e.g. cancel a BMC upload).
pub fn on_interrupt(hook: Hook) {
    *HOOK.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
}

pub fn clear_interrupt_hook() {
    *HOOK.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Runs the interrupt hook, if any.
pub fn run_interrupt_hook() {
    if let Some(h) = HOOK.lock().unwrap_or_else(|e| e.into_inner()).take() {
        h();
    }
}

static NOTES: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());

/// A message to print if the process is interrupted while it is held.
pub struct Note(u64);

/// Says `message` on interrupt until the returned guard is dropped.
pub fn note(message: String) -> Note {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    NOTES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((id, message));
    Note(id)
}

impl Drop for Note {
    fn drop(&mut self) {
        NOTES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(id, _)| *id != self.0);
    }
}

/// The notes held now, oldest first.
pub fn notes() -> Vec<String> {
    NOTES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(_, m)| m.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(path: &Path) -> bool {
        PATHS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|(p, _)| p == path)
    }

    #[test]
    fn dropping_a_guard_deletes_its_path_and_unregisters_it() {
        // Under target/, never /tmp (CI checks that tests leave nothing there).
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::tempdir_in(base).unwrap();
        let file = dir.path().join("partial");
        let stage = dir.path().join("stage");
        std::fs::write(&file, b"half").unwrap();
        std::fs::create_dir_all(stage.join("sub")).unwrap();
        std::fs::write(stage.join("sub/f"), b"x").unwrap();
        let (f, d) = (register(&file), register_dir(&stage));
        assert!(registered(&file) && registered(&stage));
        drop(f);
        drop(d);
        assert!(!file.exists() && !stage.exists());
        assert!(!registered(&file) && !registered(&stage));
        // A path renamed away (a finished output) is not there: nothing happens.
        let done = dir.path().join("done");
        std::fs::write(&file, b"whole").unwrap();
        let f = register(&file);
        std::fs::rename(&file, &done).unwrap();
        drop(f);
        assert_eq!(std::fs::read(&done).unwrap(), b"whole");
    }

    #[test]
    fn a_note_is_held_until_its_guard_goes() {
        let a = note("node02 is left cordoned".into());
        let b = note("node03 is left cordoned".into());
        let held = notes();
        assert!(held.contains(&"node02 is left cordoned".to_string()));
        drop(a);
        let held = notes();
        assert!(!held.contains(&"node02 is left cordoned".to_string()));
        assert!(held.contains(&"node03 is left cordoned".to_string()));
        drop(b);
    }
}
