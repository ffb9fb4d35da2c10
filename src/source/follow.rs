//! A download being written, read while it grows: the unpacker decodes the
//! bytes already on disk and waits for the rest, so downloading and unpacking
//! overlap. The reader sees the partial file through its own handle (the page
//! cache serves it), so nothing is buffered twice in memory.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Condvar, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Growing,
    /// The download finished: the file is complete (the digest decides).
    Complete,
    /// The download started over (what was read is not a prefix any more)
    /// or failed, or the reader is no longer wanted.
    Abandoned,
}

struct State {
    len: u64,
    end: End,
    restarted: bool,
}

/// The partial file of a download in progress, shared by the downloader
/// (which reports growth) and one unpacker (which reads).
pub struct Growing {
    file: File,
    state: Mutex<State>,
    changed: Condvar,
}

/// What a reader gets once the download was abandoned.
fn abandoned() -> io::Error {
    io::Error::other("the download being unpacked was abandoned")
}

impl Growing {
    /// Follows `path` (created empty when missing; bytes already there, from
    /// an interrupted run, are the start of the download).
    pub fn open(path: &Path) -> io::Result<Growing> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        let len = file.metadata()?.len();
        Ok(Growing {
            file,
            state: Mutex::new(State {
                len,
                end: End::Growing,
                restarted: false,
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file now holds `len` bytes.
    pub fn grew(&self, len: u64) {
        let mut s = self.lock();
        if len > s.len {
            s.len = len;
            self.changed.notify_all();
        }
    }

    /// The download is about to throw away what it had and start over: the
    /// reader stops (its output would not match) and the caller unpacks the
    /// finished file in a separate pass instead.
    pub fn restart(&self) {
        let mut s = self.lock();
        s.restarted = true;
        s.end = End::Abandoned;
        self.changed.notify_all();
    }

    /// Whether the download started over while being followed.
    pub fn restarted(&self) -> bool {
        self.lock().restarted
    }

    /// The download is complete at `len` bytes.
    pub fn complete(&self, len: u64) {
        let mut s = self.lock();
        if s.end == End::Growing {
            s.len = len;
            s.end = End::Complete;
        }
        self.changed.notify_all();
    }

    /// Stops the reader (a failed download, a wrong digest).
    pub fn abandon(&self) {
        let mut s = self.lock();
        s.end = End::Abandoned;
        self.changed.notify_all();
    }

    /// Waits until byte `off` is on disk or the download has ended; the
    /// number of bytes readable at `off`.
    fn available(&self, off: u64) -> io::Result<u64> {
        let mut s = self.lock();
        loop {
            match s.end {
                End::Abandoned => return Err(abandoned()),
                End::Complete => return Ok(s.len.saturating_sub(off)),
                End::Growing if s.len > off => return Ok(s.len - off),
                End::Growing => {
                    s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }
}

impl super::packed::Input for Growing {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        let avail = self.available(off)?;
        let n = (buf.len() as u64).min(avail) as usize;
        if n == 0 {
            return Ok(0);
        }
        FileExt::read_at(&self.file, &mut buf[..n], off)
    }

    fn total_len(&self) -> io::Result<u64> {
        self.available(u64::MAX)?;
        Ok(self.lock().len)
    }

    fn whole_file(&self) -> io::Result<&File> {
        self.available(u64::MAX)?;
        Ok(&self.file)
    }
}
