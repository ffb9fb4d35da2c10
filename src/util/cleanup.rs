//! Files to delete if the process is interrupted (Ctrl-C, SIGTERM): the
//! temporary outputs and cache entries being written. Normal exits clean up
//! through `Drop`; a signal does not run destructors, so `main` calls
//! [`remove_all`] from its signal thread.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

static PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Unregisters its path when dropped.
pub struct Registered(PathBuf);

pub fn register(path: &Path) -> Registered {
    PATHS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(path.to_owned());
    Registered(path.to_owned())
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut paths = PATHS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = paths.iter().position(|p| *p == self.0) {
            paths.swap_remove(i);
        }
    }
}

/// Deletes every registered file or directory; returns how many there were.
pub fn remove_all() -> usize {
    let paths = PATHS.lock().unwrap_or_else(|e| e.into_inner());
    for p in paths.iter() {
        if std::fs::remove_file(p).is_err() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
    paths.len()
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
