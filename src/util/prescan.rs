//! The size cap and nesting bound checked before every YAML or JSON parse of
//! input imgbuild did not just write itself (inventories, profiles, seeds and
//! provenance records read back from images, registry documents).
//!
//! Parsers bound nesting only after they have read everything: serde_yaml_ng
//! loads all events before its depth limit applies, and libyaml's scanner
//! does work per open flow level for every token, so 100 000 `[` cost 30 s.
//! [`yaml`] and [`json`] read the input once, in time linear in its size,
//! and stop at the first byte past the size cap or the first collection
//! nested deeper than the depth cap, before any parser is given the input.

use std::fmt;

/// What may be read: at most `max_bytes`, nested at most `max_depth`
/// collections deep (block and flow collections together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_depth: usize,
}

/// Nesting allowed in every document imgbuild reads: profiles reach 6
/// levels, Kubernetes objects and OCI documents stay under 20.
pub const MAX_DEPTH: usize = 64;

/// Configuration files (profiles, manifests, inventories, group_vars).
pub const CONFIG: Limits = Limits {
    max_bytes: 1 << 20,
    max_depth: MAX_DEPTH,
};

/// An image's NoCloud `meta-data` (imgbuild writes a few lines).
pub const META_DATA: Limits = Limits {
    max_bytes: 64 << 10,
    max_depth: MAX_DEPTH,
};

/// A provenance record (one line per overlay file).
pub const PROVENANCE: Limits = Limits {
    max_bytes: 1 << 20,
    max_depth: MAX_DEPTH,
};

/// A registry manifest, index or token answer.
pub const REGISTRY_DOCUMENT: Limits = Limits {
    max_bytes: 4 << 20,
    max_depth: MAX_DEPTH,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrescanError {
    /// `size` is `None` when only "more than the cap" is known (a stream).
    #[error("{what} is {}; at most {} is read", Size::of(*.size, *.limit), Size(*.limit))]
    TooLarge {
        what: String,
        size: Option<u64>,
        limit: u64,
    },
    #[error(
        "{what} nests collections more than {limit} deep (line {line}, column {column}); at most {limit} levels are read"
    )]
    TooDeep {
        what: String,
        limit: usize,
        line: u64,
        column: u64,
    },
}

/// A byte count for people: "64 KiB", "1.0 MiB", "812 bytes".
pub struct Size(pub u64);

impl Size {
    fn of(size: Option<u64>, limit: u64) -> String {
        match size {
            Some(n) => Size(n).to_string(),
            None => format!("more than {}", Size(limit)),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for (unit, name) in UNITS {
            if self.0 >= unit {
                return if self.0.is_multiple_of(unit) {
                    write!(f, "{} {name}", self.0 / unit)
                } else {
                    write!(f, "{:.1} {name}", self.0 as f64 / unit as f64)
                };
            }
        }
        write!(f, "{} bytes", self.0)
    }
}

/// Why a file could not be read within its cap.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Limit(#[from] PrescanError),
}

impl ReadError {
    /// Whether the file was not there at all.
    pub fn not_found(&self) -> bool {
        matches!(self, ReadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Reads the file at `path` whole, refusing one larger than the size cap
/// (by its size before reading, and by what was read: a device or a file
/// that grows says nothing true in its size).
pub fn read_file(path: &std::path::Path, limits: Limits) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let io = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let what = path.display().to_string();
    size(&what, f.metadata().map_err(io)?.len(), limits)?;
    let mut bytes = Vec::new();
    f.take(limits.max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limits.max_bytes {
        return Err(PrescanError::TooLarge {
            what,
            size: None,
            limit: limits.max_bytes,
        }
        .into());
    }
    Ok(bytes)
}

/// The size cap alone, for a length known before reading (a file's size).
pub fn size(what: &str, len: u64, limits: Limits) -> Result<(), PrescanError> {
    if len > limits.max_bytes {
        return Err(PrescanError::TooLarge {
            what: what.to_string(),
            size: Some(len),
            limit: limits.max_bytes,
        });
    }
    Ok(())
}

/// Checks JSON text: its size, and that no array or object lies more than
/// `max_depth` deep. Strings are skipped as JSON defines them (a `"` opens
/// one only where a value may start, which is also the only place a parser
/// reads one before it fails), so the depth counted is the parser's.
pub fn json(what: &str, bytes: &[u8], limits: Limits) -> Result<(), PrescanError> {
    size(what, bytes.len() as u64, limits)?;
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let (mut line, mut line_start) = (1u64, 0usize);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limits.max_depth {
                    return Err(PrescanError::TooDeep {
                        what: what.to_string(),
                        limit: limits.max_depth,
                        line,
                        column: (i - line_start + 1) as u64,
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'\n' => {
                line += 1;
                line_start = i + 1;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks YAML text: its size, and that no block or flow collection lies
/// more than `max_depth` deep.
///
/// The depth is counted on the tokens of libyaml's scanner, the one
/// serde_yaml_ng parses with, so quotes, block scalars, comments and plain
/// scalars are read exactly as the parser will read them (a scanner of our
/// own that read one of them differently could be led to miss nesting the
/// parser then sees). Scanning stops at the first token past the cap, before
/// the cost of deep nesting builds up; a syntax error ends the scan too
/// (everything before it was within the caps, and the parser stops there).
pub fn yaml(what: &str, bytes: &[u8], limits: Limits) -> Result<(), PrescanError> {
    use unsafe_libyaml::yaml_token_type_t::*;
    size(what, bytes.len() as u64, limits)?;
    let mut scanner = Scanner::new(bytes);
    let mut open: Vec<Open> = Vec::new();
    let mut previous = YAML_NO_TOKEN;
    while let Some((kind, line, column)) = scanner.next() {
        // The collections without an end token end where the parser ends them.
        match (open.last(), kind) {
            (
                Some(Open::IndentlessSequence),
                YAML_KEY_TOKEN
                | YAML_VALUE_TOKEN
                | YAML_BLOCK_END_TOKEN
                | YAML_DOCUMENT_START_TOKEN
                | YAML_DOCUMENT_END_TOKEN
                | YAML_STREAM_END_TOKEN,
            )
            | (Some(Open::PairInFlow), YAML_FLOW_ENTRY_TOKEN | YAML_FLOW_SEQUENCE_END_TOKEN) => {
                open.pop();
            }
            _ => {}
        }
        let opened = match kind {
            YAML_BLOCK_SEQUENCE_START_TOKEN | YAML_BLOCK_MAPPING_START_TOKEN => Some(Open::Block),
            YAML_FLOW_MAPPING_START_TOKEN => Some(Open::FlowMapping),
            YAML_FLOW_SEQUENCE_START_TOKEN => Some(Open::FlowSequence),
            // `key:` then `- ` at the key's own indentation.
            YAML_BLOCK_ENTRY_TOKEN if matches!(previous, YAML_KEY_TOKEN | YAML_VALUE_TOKEN) => {
                Some(Open::IndentlessSequence)
            }
            // `[a: b]`: the pair is a mapping inside the sequence.
            YAML_KEY_TOKEN | YAML_VALUE_TOKEN if open.last() == Some(&Open::FlowSequence) => {
                Some(Open::PairInFlow)
            }
            YAML_BLOCK_END_TOKEN | YAML_FLOW_SEQUENCE_END_TOKEN | YAML_FLOW_MAPPING_END_TOKEN => {
                open.pop();
                None
            }
            YAML_STREAM_END_TOKEN => break,
            _ => None,
        };
        if let Some(o) = opened {
            open.push(o);
            if open.len() > limits.max_depth {
                return Err(PrescanError::TooDeep {
                    what: what.to_string(),
                    limit: limits.max_depth,
                    line: line + 1,
                    column: column + 1,
                });
            }
        }
        previous = kind;
    }
    Ok(())
}

/// A collection open at a point of a YAML token stream, as the parser nests
/// them: most begin with a start token, but two do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    /// A block sequence or mapping (ended by a block-end token).
    Block,
    FlowMapping,
    FlowSequence,
    /// `- ` entries at their key's own indentation: ended by the next key,
    /// or the end of the mapping.
    IndentlessSequence,
    /// A `key: value` pair in a flow sequence: a mapping ended by the next
    /// `,` or the sequence's `]`.
    PairInFlow,
}

/// libyaml's scanner over a borrowed buffer, yielding token kinds and where
/// they start. The parser state is boxed: libyaml keeps a pointer to it.
struct Scanner<'a> {
    parser: Box<std::mem::MaybeUninit<unsafe_libyaml::yaml_parser_t>>,
    done: bool,
    _input: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> Scanner<'a> {
    fn new(input: &'a [u8]) -> Scanner<'a> {
        let mut parser = Box::new(std::mem::MaybeUninit::uninit());
        // SAFETY: initialize zeroes and sets up the boxed state, which never
        // moves; the input outlives the scanner (the lifetime 'a says so),
        // and `Drop` deletes the state exactly once.
        let ok = unsafe {
            let p = parser.as_mut_ptr();
            let ok = unsafe_libyaml::yaml_parser_initialize(p).ok;
            if ok {
                unsafe_libyaml::yaml_parser_set_input_string(p, input.as_ptr(), input.len() as _);
            }
            ok
        };
        assert!(ok, "libyaml could not allocate its scanner");
        Scanner {
            parser,
            done: false,
            _input: std::marker::PhantomData,
        }
    }

    /// The next token's kind and start (0-based line and column); `None`
    /// after the stream's end or a syntax error.
    fn next(&mut self) -> Option<(unsafe_libyaml::yaml_token_type_t, u64, u64)> {
        if self.done {
            return None;
        }
        let mut token = std::mem::MaybeUninit::<unsafe_libyaml::yaml_token_t>::uninit();
        // SAFETY: the parser was initialised in `new`; a token the scanner
        // filled is read and then deleted once.
        unsafe {
            if unsafe_libyaml::yaml_parser_scan(self.parser.as_mut_ptr(), token.as_mut_ptr()).fail {
                self.done = true;
                return None;
            }
            let t = token.as_mut_ptr();
            let out = ((*t).type_, (*t).start_mark.line, (*t).start_mark.column);
            unsafe_libyaml::yaml_token_delete(t);
            if out.0 == unsafe_libyaml::yaml_token_type_t::YAML_NO_TOKEN {
                self.done = true;
                return None;
            }
            Some(out)
        }
    }
}

impl Drop for Scanner<'_> {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, deleted only here.
        unsafe { unsafe_libyaml::yaml_parser_delete(self.parser.as_mut_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Limits = Limits {
        max_bytes: 1 << 20,
        max_depth: 8,
    };

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(Size(64 << 10).to_string(), "64 KiB");
        assert_eq!(Size(1 << 20).to_string(), "1 MiB");
        assert_eq!(Size((1 << 20) + 1000).to_string(), "1.0 MiB");
        assert_eq!(Size(812).to_string(), "812 bytes");
        let e = size("meta-data", (1 << 20) + 1000, META_DATA).unwrap_err();
        assert_eq!(
            e.to_string(),
            "meta-data is 1.0 MiB; at most 64 KiB is read"
        );
    }

    #[test]
    fn yaml_nesting_is_counted_as_the_parser_reads_it() {
        let ok = |t: &str| yaml("t", t.as_bytes(), SMALL).is_ok();
        // Eight flow levels pass; nine do not, nor eight under a block map.
        assert!(ok("[[[[[[[[1]]]]]]]]"));
        assert!(!ok("[[[[[[[[[1]]]]]]]]]"));
        assert!(!ok("a: [[[[[[[[1]]]]]]]]"));
        // Brackets inside quotes, block scalars and comments are text.
        assert!(ok(
            "a: '[[[[[[[[[[[['\nb: \"{{{{{{{{{{{\"\n# [[[[[[[[[[[[\n"
        ));
        assert!(ok("a: |\n  [[[[[[[[[[[[\n  'x\nb: 1\n"));
        // A quote inside a block scalar does not hide what follows it.
        assert!(!ok("a: |\n  'x\nb: [[[[[[[[[1]]]]]]]]]\n"));
        // Block nesting counts too: `- - - ...` opens a sequence per dash.
        assert!(!ok(&"- ".repeat(9)));
        assert!(ok(&format!("{}x\n", "- ".repeat(8))));
    }

    /// The nesting of a parsed value (a scalar is 0).
    fn depth(v: &serde_yaml_ng::Value) -> usize {
        use serde_yaml_ng::Value;
        match v {
            Value::Sequence(s) => 1 + s.iter().map(depth).max().unwrap_or(0),
            Value::Mapping(m) => {
                1 + m
                    .iter()
                    .map(|(k, v)| depth(k).max(depth(v)))
                    .max()
                    .unwrap_or(0)
            }
            Value::Tagged(t) => depth(&t.value),
            _ => 0,
        }
    }

    #[test]
    fn the_depth_counted_is_the_parsed_values() {
        for doc in [
            "a: 1",
            "a:\n- b\n- c: [1, {d: e}]\n",
            "a:\n- b:\n  - c:\n    - d\n",
            "? - a\n: b\n",
            "? a\n: - b\n",
            "[a: [b: [c: d]]]",
            "[a: x, {b: [1]}, c]",
            "- - - x\n- y\n",
            "a: !!map {b: !!seq [c]}\n",
            "a: |\n  [[[[\nb:\n  c: [d]\n",
        ] {
            let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(doc).unwrap();
            let d = depth(&v);
            let at = |max_depth| {
                yaml(
                    "t",
                    doc.as_bytes(),
                    Limits {
                        max_bytes: 1 << 20,
                        max_depth,
                    },
                )
                .is_ok()
            };
            assert!(at(d) && !at(d - 1), "{doc:?}: the value is {d} deep");
        }
    }

    #[test]
    fn a_deep_yaml_document_is_refused_where_the_cap_is_passed() {
        let text = "[".repeat(100_000);
        match yaml("inventory.yml", text.as_bytes(), CONFIG) {
            Err(PrescanError::TooDeep { line, column, .. }) => {
                assert_eq!((line, column), (1, MAX_DEPTH as u64 + 1));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_strings_and_escapes_are_skipped() {
        assert!(json("t", br#"{"a": "[[[[[[[[[[\"[[[[[[["}"#, SMALL).is_ok());
        assert!(json("t", b"[[[[[[[[1]]]]]]]]", SMALL).is_ok());
        let e = json("index", b"{\"a\":\n[[[[[[[[[", SMALL).unwrap_err();
        assert_eq!(
            e.to_string(),
            "index nests collections more than 8 deep (line 2, column 8); at most 8 levels are read"
        );
    }
}
