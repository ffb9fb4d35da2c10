//! The extent map debugfs prints (`ex FILE`), read back so a large file's
//! data can be written straight into the blocks debugfs allocated for it.
//! What debugfs prints is checked before anything is written: the leaves
//! must cover the file's blocks exactly, in order, inside the file system,
//! without overlapping one another.

/// One leaf extent: `len` blocks from logical block `logical` at physical `physical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub len: u64,
    /// Allocated but not yet initialised (reads as zeros until marked written).
    pub uninit: bool,
}

/// Parses the lines of `ex` (dump_extents) output; returns the leaf extents
/// or what was wrong. Index lines (levels above the leaves) are skipped.
pub fn parse(lines: &[String]) -> Result<Vec<Extent>, String> {
    let mut rows = Vec::new();
    for line in lines {
        let t = line.trim();
        if t.is_empty() || t.starts_with("Level") {
            continue;
        }
        // " 0/ 1   2/  5  ..." : glue "a/ b" into one word.
        let mut glued = t.to_string();
        while glued.contains("/ ") {
            glued = glued.replace("/ ", "/");
        }
        let words: Vec<&str> = glued.split_whitespace().collect();
        let level = |w: &str| -> Option<(u32, u32)> {
            let (a, b) = w.split_once('/')?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        };
        let (Some((lvl, max)), Some(_)) = (
            words.first().and_then(|w| level(w)),
            words.get(1).and_then(|w| level(w)),
        ) else {
            return Err(format!("unexpected line in the extent map: {t:?}"));
        };
        if lvl > max {
            return Err(format!("level {lvl} of {max} in the extent map: {t:?}"));
        }
        if lvl < max {
            continue;
        }
        rows.push(parse_leaf(&words[2..]).ok_or_else(|| format!("unreadable extent: {t:?}"))?);
    }
    Ok(rows)
}

/// `L [- L2] P [- P2] LEN [Uninit]`.
fn parse_leaf(words: &[&str]) -> Option<Extent> {
    let mut it = words.iter().copied().peekable();
    let range = |it: &mut std::iter::Peekable<std::iter::Copied<std::slice::Iter<&str>>>| {
        let a: u64 = it.next()?.parse().ok()?;
        let b = if it.peek() == Some(&"-") {
            it.next();
            it.next()?.parse().ok()?
        } else {
            a
        };
        (b >= a).then_some((a, b))
    };
    let (l0, l1) = range(&mut it)?;
    let (p0, p1) = range(&mut it)?;
    let len: u64 = it.next()?.parse().ok()?;
    let uninit = match it.next() {
        None => false,
        Some("Uninit") => true,
        Some(_) => return None,
    };
    if it.next().is_some() || len == 0 || l1 - l0 + 1 != len || p1 - p0 + 1 != len {
        return None;
    }
    Some(Extent {
        logical: l0,
        physical: p0,
        len,
        uninit,
    })
}

/// Checks that `extents` map logical blocks `0..blocks` exactly, in order,
/// inside a file system of `fs_blocks` blocks, with no two sharing a block.
pub fn check(extents: &[Extent], blocks: u64, fs_blocks: u64) -> Result<(), String> {
    let mut next = 0u64;
    let mut used: Vec<(u64, u64)> = Vec::with_capacity(extents.len());
    for e in extents {
        if e.logical != next {
            return Err(format!(
                "the extent map jumps from block {next} to {}",
                e.logical
            ));
        }
        let end = e
            .physical
            .checked_add(e.len)
            .filter(|&end| end <= fs_blocks && e.physical > 0)
            .ok_or_else(|| {
                format!(
                    "extent at {}+{} lies outside the {fs_blocks} blocks of the file system",
                    e.physical, e.len
                )
            })?;
        used.push((e.physical, end));
        next += e.len;
    }
    if next != blocks {
        return Err(format!(
            "the extent map covers {next} blocks; the file has {blocks}"
        ));
    }
    used.sort_unstable();
    if used.windows(2).any(|w| w[0].1 > w[1].0) {
        return Err("two extents share blocks".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn reads_what_debugfs_1_47_prints() {
        // debugfs 1.47.0, `ex` after `fallocate` on a 1k-block file system.
        let out = lines(
            "Level Entries       Logical        Physical Length Flags\n \
             0/ 0   1/  2     0 -  5835   2357 -   8192   5836 Uninit\n \
             0/ 0   2/  2  5836 - 21957   8455 -  24576  16122 \n",
        );
        let e = parse(&out).unwrap();
        assert_eq!(
            e,
            [
                Extent {
                    logical: 0,
                    physical: 2357,
                    len: 5836,
                    uninit: true
                },
                Extent {
                    logical: 5836,
                    physical: 8455,
                    len: 16122,
                    uninit: false
                }
            ]
        );
        assert!(check(&e, 21958, 100_000).is_ok());
        assert!(check(&e, 21959, 100_000).unwrap_err().contains("covers"));
        assert!(check(&e, 21958, 20_000).unwrap_err().contains("outside"));
        // A two-level tree: the index line is skipped.
        let deep = lines(
            " 0/ 1   1/  1     0 - 68359  80009           68360\n \
             1/ 1   1/  1     0 -     0  54343 -  54343      1 Uninit\n",
        );
        assert_eq!(parse(&deep).unwrap().len(), 1);
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for bad in [
            "garbage",
            " 0/ 0   1/  1     0 -     3  100 - 101      4",
            " 0/ 0   1/  1     5 -     3  100 - 98      0",
            " 0/ 0   1/  1     0 -     0  100 - 100      1 Weird",
            " 2/ 1   1/  1     0 -     0  100 - 100      1",
        ] {
            assert!(parse(&lines(bad)).is_err(), "{bad}");
        }
        let overlap = [
            Extent {
                logical: 0,
                physical: 10,
                len: 5,
                uninit: true,
            },
            Extent {
                logical: 5,
                physical: 12,
                len: 5,
                uninit: true,
            },
        ];
        assert!(check(&overlap, 10, 100).unwrap_err().contains("share"));
    }
}
