//! Reading configuration files safely: only regular files, only from inside
//! their directory (a symlink may not lead out of it), never more than a
//! bounded size, and error messages that quote at most a short, printable
//! excerpt of what was read.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Profiles and manifests are a few KiB; anything larger is not one.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Whether `path` resolves to a place inside `root` (both canonicalised).
fn inside(path: &Path, root: &Path) -> Result<PathBuf, String> {
    let real = path
        .canonicalize()
        .map_err(|e| format!("cannot read: {e}"))?;
    let root = root
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", root.display()))?;
    if real.starts_with(&root) {
        Ok(real)
    } else {
        Err(format!(
            "leads outside {} (to {}); configuration is read only from inside its directory",
            root.display(),
            real.display()
        ))
    }
}

/// Reads the text file `path`, which must lie (after symlinks) inside `root`.
pub fn read_text(path: &Path, root: &Path) -> Result<String, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let real = inside(path, root)?;
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&real)
        .map_err(|e| format!("cannot read: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let mut bytes = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!("is larger than {MAX_CONFIG_BYTES} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".into())
}

/// Checks that a directory of configuration files lies inside `root`.
pub fn check_dir(dir: &Path, root: &Path) -> Result<(), String> {
    inside(dir, root).map(|_| ())
}

/// A parser's message made safe to print: every quoted or back-quoted
/// stretch longer than a few words shortened, control characters replaced,
/// the whole capped, so unparseable input is never echoed at length.
pub fn sanitize(message: &str) -> String {
    const KEEP: usize = 24;
    let mut out = String::new();
    let mut quoted: Option<(char, String)> = None;
    for c in message.chars() {
        let c = if c.is_control() { '?' } else { c };
        match &mut quoted {
            Some((open, inner)) if c == *open => {
                out.push(*open);
                let n = inner.chars().count();
                out.extend(inner.chars().take(KEEP));
                if n > KEEP {
                    out.push('…');
                }
                out.push(c);
                quoted = None;
            }
            Some((_, inner)) => inner.push(c),
            None if c == '"' || c == '`' => quoted = Some((c, String::new())),
            None => out.push(c),
        }
    }
    if let Some((open, inner)) = quoted {
        out.push(open);
        out.extend(inner.chars().take(KEEP));
        out.push('…');
    }
    if out.chars().count() > 400 {
        out = out.chars().take(400).collect::<String>() + "…";
    }
    out
}

/// A field path made safe to print (keys may come from unparseable input).
pub fn sanitize_field(field: &str) -> String {
    let clean: String = field
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if clean.chars().count() > 64 {
        clean.chars().take(24).collect::<String>() + "…"
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_quotes_are_shortened() {
        let m = sanitize(
            "unknown field `root:$y$j9T$abcdefghijklmnopqrstuv$ABCDEF:19000`, expected `a`",
        );
        assert_eq!(m, "unknown field `root:$y$j9T$abcdefghijkl…`, expected `a`");
        assert_eq!(sanitize("bad \"x\u{7}y\""), "bad \"x?y\"");
    }
}
