//! File-name rules of the writers, shared so that `check` and planning refuse
//! what the FAT writer or debugfs would refuse at bake time.

/// Why `name` (one path component) cannot be a FAT long file name, if it cannot.
pub fn fat_name_error(name: &str) -> Option<String> {
    const BAD: &[char] = &['"', '*', ':', '<', '>', '?', '\\', '|'];
    let bad = name.chars().any(|c| BAD.contains(&c) || (c as u32) < 0x20);
    (bad || name.is_empty()
        || name == "."
        || name == ".."
        || name.ends_with('.')
        || name.ends_with(' ')
        || name.encode_utf16().count() > 255)
        .then(|| format!("{name:?} is not a valid FAT file name"))
}

/// Why an absolute path inside a FAT volume is not writable, if it is not.
pub fn fat_path_error(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return Some("must be an absolute path".into());
    }
    path.split('/').skip(1).find_map(fat_name_error)
}

/// Why `path` cannot be given to debugfs inside double quotes, if it cannot.
pub fn debugfs_path_error(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') || path.len() < 2 {
        return Some("must be an absolute path below /");
    }
    if path
        .chars()
        .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        return Some("must not contain quotes, backslashes or control characters");
    }
    if path
        .split('/')
        .skip(1)
        .any(|c| c.is_empty() || c == "." || c == ".." || c.len() > 255)
    {
        return Some(
            "must be a normalised path (no empty, '.' or '..' components, each at most 255 bytes)",
        );
    }
    None
}

/// Why a symlink target cannot be given to debugfs, if it cannot.
pub fn debugfs_target_error(target: &str) -> Option<String> {
    (target
        .chars()
        .any(|c| c == '"' || c == '\\' || c.is_control())
        || target.is_empty()
        || target.len() > 4095)
        .then(|| {
            format!(
                "symlink target {target:?} must be 1-4095 bytes without quotes, backslashes or control characters"
            )
        })
}
