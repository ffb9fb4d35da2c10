//! `sha256sum`-format lists (`<hex>  <name>` or `<hex> *<name>`): checksum
//! files of releases and the `SHA256SUMS` written beside outputs.

use super::Sha256Digest;

/// Finds the digest of `name` in a `sha256sum`-format list (`<hex>  <name>` or `<hex> *<name>`).
pub fn find_digest(list: &str, name: &str) -> Option<Sha256Digest> {
    list.lines().find_map(|line| {
        let (hex, rest) = line.trim().split_once(char::is_whitespace)?;
        let file = rest.trim_start().trim_start_matches('*');
        let file = file.rsplit('/').next().unwrap_or(file);
        (file == name).then(|| Sha256Digest::parse(hex)).flatten()
    })
}

/// The file name a list line is about, without `*` or a directory.
pub fn line_name(line: &str) -> Option<&str> {
    let (_, rest) = line.trim().split_once(char::is_whitespace)?;
    let file = rest.trim_start().trim_start_matches('*');
    Some(file.rsplit('/').next().unwrap_or(file))
}

/// `list` with the line for `name` set to `digest` (others kept, sorted by name).
pub fn set_line(list: &str, name: &str, digest: &Sha256Digest) -> String {
    let mut lines: Vec<String> = list
        .lines()
        .filter(|l| line_name(l) != Some(name))
        .map(str::to_string)
        .collect();
    lines.push(format!("{digest}  {name}"));
    lines.sort_by(|a, b| line_name(a).cmp(&line_name(b)));
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_lists() {
        let list = "790652faeb4f61ce7bb12f5cb61734595c61d3cd882915b8b5f9918106c80d37 *ubuntu-raspi.img.xz\n\
                    88584d5797bac01efd3bb1063935ce9f00947e4d4aa0c671d0a39ec8db6ca8f7  rk1.img.xz\n";
        assert_eq!(
            find_digest(list, "ubuntu-raspi.img.xz")
                .unwrap()
                .to_string(),
            "790652faeb4f61ce7bb12f5cb61734595c61d3cd882915b8b5f9918106c80d37"
        );
        assert!(find_digest(list, "rk1.img.xz").is_some());
        assert!(find_digest(list, "other").is_none());
        let d = Sha256Digest([7; 32]);
        let set = set_line(list, "rk1.img.xz", &d);
        assert_eq!(find_digest(&set, "rk1.img.xz"), Some(d));
        assert!(find_digest(&set, "ubuntu-raspi.img.xz").is_some());
        assert_eq!(set.lines().count(), 2);
    }
}
