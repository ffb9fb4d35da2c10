//! Files and directories to delete if the process is interrupted (Ctrl-C,
//! SIGTERM): the temporary outputs, cache entries and staging directories
//! being written. Normal exits clean up through `Drop`; a signal does not run
//! destructors, so `main` calls [`remove_all`] from its signal thread.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// (path, is a directory to remove with everything in it)
static PATHS: Mutex<Vec<(PathBuf, bool)>> = Mutex::new(Vec::new());

/// Unregisters its path when dropped.
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
            paths.swap_remove(i);
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
