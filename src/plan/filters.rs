//! Template filters: quoting for each kind of target a profile value can
//! land in (YAML, TOML, a shell argument, a systemd unit value), so that no
//! value can break out of its place; and the template environment.

use minijinja::{Environment, UndefinedBehavior, Value};

/// Serialises a value as a YAML flow scalar/collection that no input can break out of.
///
/// JSON is a subset of YAML; strings come out double-quoted with every control
/// character escaped, so a hostile hostname or key comment stays one value.
/// Characters YAML parsers refuse in a stream (DEL, C1 controls, U+FFFE/FFFF)
/// or read as line breaks (U+0085, U+2028, U+2029) are escaped as well, so
/// the file stays loadable (cloud-init rejects a whole user-data otherwise).
pub(super) fn yaml_filter(value: Value) -> Result<String, minijinja::Error> {
    let json = serde_json::to_string(&value).map_err(|e| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("cannot encode as YAML: {e}"),
        )
    })?;
    Ok(escape_unprintable(&json))
}

/// `\uXXXX` for the characters JSON leaves raw but YAML 1.1/1.2 and TOML do
/// not accept raw (they occur only inside JSON strings, where the escape is valid).
fn escape_unprintable(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '\u{7f}'..='\u{9f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{feff}'
            | '\u{fffe}'
            | '\u{ffff}' => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn toml_filter(value: Value) -> Result<String, minijinja::Error> {
    // TOML basic strings and arrays share JSON's escapes for the values we emit.
    yaml_filter(value)
}

/// Applies the template filter `filter` (`yaml`, `toml`, `shell`, `systemd`)
/// to a string, as a template would; for tests and tools.
pub fn quote(filter: &str, value: &str) -> Result<String, String> {
    let v = Value::from(value);
    match filter {
        "yaml" => yaml_filter(v),
        "toml" => toml_filter(v),
        "shell" => shell_filter(v),
        "systemd" => systemd_filter(v),
        other => return Err(format!("no filter named {other:?}")),
    }
    .map_err(|e| e.to_string())
}

fn filter_error(reason: String) -> minijinja::Error {
    minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, reason)
}

/// One word for a POSIX shell (`sh -c`, scripts): single-quoted, with each
/// `'` written as `'\''`. Inside single quotes nothing is special, so no
/// value can run a command; NUL, which no argument can hold, is refused.
fn shell_filter(value: Value) -> Result<String, minijinja::Error> {
    let s = value.to_string();
    if s.contains('\0') {
        return Err(filter_error(format!(
            "{:?} holds a NUL byte, which a shell argument cannot",
            excerpt(&s)
        )));
    }
    Ok(format!("'{}'", s.replace('\'', "'\\''")))
}

/// One word of a systemd command line (`ExecStart=` and the other `Exec`
/// settings; systemd.syntax(7), systemd.service(5)): double-quoted, with
/// `\` and `"` escaped, control characters as C escapes (so the value stays on
/// its line and cannot add a setting or a section), `%` as `%%` (specifiers)
/// and `$` as `$$` (variable expansion).
fn systemd_filter(value: Value) -> Result<String, minijinja::Error> {
    let s = value.to_string();
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\0' => {
                return Err(filter_error(format!(
                    "{:?} holds a NUL byte, which a unit file cannot",
                    excerpt(&s)
                )));
            }
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

/// A short, printable excerpt of `s` for error messages.
fn excerpt(s: &str) -> String {
    let mut e: String = s.chars().take(40).collect();
    if s.chars().count() > 40 {
        e.push('…');
    }
    e
}

pub(super) fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
        .expect("default delimiters are valid");
    env.set_syntax(syntax);
    env.add_filter("yaml", yaml_filter);
    env.add_filter("toml", toml_filter);
    env.add_filter("shell", shell_filter);
    env.add_filter("systemd", systemd_filter);
    env
}
