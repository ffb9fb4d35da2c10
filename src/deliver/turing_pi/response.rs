//! Reading what a Turing Pi BMC (bmcd 2.3.x) answers. Pure functions over
//! text the BMC sent, kept apart from the transport so they can be fuzzed:
//! none of them panics, whatever the input, and every string they return for
//! display is sanitised (no control characters, bounded length), because the
//! BMC is not trusted.
//!
//! Source references are to bmcd v2.3.7 (`bmcd/src/...`) unless stated.

use std::collections::BTreeMap;

use serde_json::Value;

/// The largest answer body read from the BMC; its real answers are a few
/// hundred bytes, so anything near this is hostile or broken.
pub const MAX_BODY: u64 = 1 << 20;

/// The longest BMC-supplied text shown to the user.
const MAX_SHOWN: usize = 300;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnswerError {
    #[error("unexpected {what} from the BMC: {excerpt:?}")]
    Unexpected { what: &'static str, excerpt: String },
}

fn unexpected(what: &'static str, text: &str) -> AnswerError {
    AnswerError::Unexpected {
        what,
        excerpt: sanitize(text, 120),
    }
}

/// `text` without control characters (C0, DEL, C1: a hostile answer could
/// drive the terminal), whitespace collapsed, cut to `max` characters.
pub fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut space = false;
    for c in text.trim().chars() {
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if c.is_control() || is_bidi_control(c) {
            continue;
        }
        if count >= max {
            out.push('…');
            return out;
        }
        if space && !out.is_empty() {
            out.push(' ');
            count += 1;
        }
        space = false;
        out.push(c);
        count += 1;
    }
    out
}

/// Invisible characters that reorder or hide text on a terminal.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The `result` of a `{"response":[{"result": ...}]}` envelope, the shape of
/// every `/api/bmc?opt=..&type=..` answer, success or error
/// (api/into_legacy_response.rs:124-148).
pub fn envelope_result(text: &str) -> Result<Value, AnswerError> {
    let v: Value = serde_json::from_str(text).map_err(|_| unexpected("answer", text))?;
    v.get("response")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|i| i.get("result"))
        .cloned()
        .ok_or_else(|| unexpected("answer", text))
}

/// The message of an error answer, for the user: the envelope's `result`
/// string when the body is one (`/api/bmc` calls), else the plain text
/// (flash start, flash state and upload errors are bare `text/plain`,
/// into_legacy_response.rs:98-111 with actix's default `ResponseError`).
pub fn error_message(body: &str) -> String {
    match envelope_result(body) {
        Ok(Value::String(s)) => sanitize(&s, MAX_SHOWN),
        Ok(other) => sanitize(&other.to_string(), MAX_SHOWN),
        Err(_) if body.trim().is_empty() => "(no message)".to_string(),
        Err(_) => sanitize(body, MAX_SHOWN),
    }
}

/// The ban bmcd imposes after five failed logins, from its message:
/// "Exceeded allowed authentication attempts. Access blocked for {humantime}"
/// (authentication_errors.rs:36-38); returns the duration text.
pub fn ban(message: &str) -> Option<String> {
    let rest = message
        .trim()
        .strip_prefix("Exceeded allowed authentication attempts")?;
    let dur = rest
        .split_once("blocked for")
        .map(|(_, d)| d)
        .unwrap_or("a while");
    Some(round_humantime(&sanitize(dur, 60)))
}

/// "59s 999ms 998us 100ns" -> "59s": bmcd's humantime prints every unit down
/// to nanoseconds; the user needs minutes and seconds.
fn round_humantime(d: &str) -> String {
    let kept: Vec<&str> = d
        .split_whitespace()
        .filter(|p| !(p.ends_with("ms") || p.ends_with("us") || p.ends_with("ns")))
        .collect();
    if kept.is_empty() {
        "under a second".to_string()
    } else {
        kept.join(" ")
    }
}

/// The session token of a login answer: the `X-Auth-Token` header, else the
/// `id` of the JSON session body (authentication_service.rs:167-180). It goes
/// into a header, so only a plain token is accepted.
pub fn login_token(header: Option<&str>, body: &str) -> Result<String, AnswerError> {
    let from_body = || {
        serde_json::from_str::<Value>(body)
            .ok()?
            .get("id")?
            .as_str()
            .map(str::to_string)
    };
    let token = header
        .map(str::to_string)
        .or_else(from_body)
        .ok_or_else(|| unexpected("login answer", body))?;
    let plain = !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b));
    if !plain {
        return Err(unexpected("session token", "(not shown)"));
    }
    Ok(token)
}

/// The handle of a started flash: bare `{"handle":N}` (legacy.rs:592-594).
pub fn flash_handle(text: &str) -> Result<u32, AnswerError> {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("handle")?.as_u64())
        .and_then(|h| u32::try_from(h).ok())
        .ok_or_else(|| unexpected("answer to the flash start", text))
}

/// Stored power of slots 1-4 from `opt=get&type=power`'s result,
/// `[{"node1":"1","node2":"0",...}]` (legacy.rs:410-432). A value the BMC
/// could not read (`"Unknown"`) leaves the slot out.
pub fn power(result: &Value) -> Result<BTreeMap<u8, bool>, AnswerError> {
    let list = result
        .as_array()
        .ok_or_else(|| unexpected("power answer", &result.to_string()))?;
    let mut out = BTreeMap::new();
    for m in list.iter().filter_map(Value::as_object) {
        for (k, v) in m {
            let Some(slot) = k
                .strip_prefix("node")
                .and_then(|n| n.parse::<u8>().ok())
                .filter(|s| (1..=4).contains(s))
            else {
                continue;
            };
            let on = match v {
                Value::String(s) if s == "1" => Some(true),
                Value::String(s) if s == "0" => Some(false),
                Value::Number(n) => n.as_u64().filter(|n| *n <= 1).map(|n| n == 1),
                Value::Bool(b) => Some(*b),
                _ => None,
            };
            if let Some(on) = on {
                out.insert(slot, on);
            }
        }
    }
    Ok(out)
}

/// The `about` result as a map of its fields.
pub fn about(result: Value) -> Result<BTreeMap<String, Value>, AnswerError> {
    match result {
        Value::Object(m) => Ok(m.into_iter().collect()),
        other => Err(unexpected("about answer", &other.to_string())),
    }
}

/// The version of the BMC's daemon, bmcd, as `about` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonVersion {
    /// As reported (sanitised), for messages.
    pub text: String,
    /// major.minor.patch when it reads as one.
    pub number: Option<(u64, u64, u64)>,
}

impl DaemonVersion {
    /// From `about`: `bmcd_version` when present (bmcd 2.3.5 and later report
    /// the firmware's version in `version`, legacy.rs:212-243), else
    /// `version`, which is bmcd's own before 2.3.5 (v2.3.4 src/api/legacy.rs:211-242).
    pub fn from_about(about: &BTreeMap<String, Value>) -> DaemonVersion {
        let text = ["bmcd_version", "version"]
            .iter()
            .find_map(|k| about.get(*k).and_then(Value::as_str))
            .unwrap_or("");
        DaemonVersion {
            text: sanitize(text, 40),
            number: parse_version(text),
        }
    }

    /// bmcd checks a `sha256` and honours `skip_crc` from 2.3.0 on (commit
    /// 2e33575, first tagged v2.3.0); older daemons ignore both.
    pub fn checks_sha256(&self) -> bool {
        self.number.is_some_and(|v| v >= (2, 3, 0))
    }
}

/// "2.3.7", "v2.3.7", "2.3.7-rc1" -> (2, 3, 7); anything else -> None.
fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let mut parts = text.trim().trim_start_matches('v').splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch_text = parts.next()?;
    let digits: &str = &patch_text[..patch_text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(patch_text.len())];
    Some((major, minor, digits.parse().ok()?))
}

/// The BMC's flash state (`opt=get&type=flash`): serde's externally tagged
/// `StreamingState`, bare JSON, not enveloped (streaming_data_service.rs:248-254,
/// legacy.rs:559-561).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlashState {
    /// No transfer since the daemon started (its initial state, line 44).
    Ready,
    /// Writing, then (with CRC) reading back: `written` restarts from 0
    /// (upgrade_worker.rs:85-89). `id` is the flash start's handle.
    Transferring {
        id: Option<u32>,
        written: u64,
        size: u64,
    },
    Done,
    /// Why the last transfer failed, sanitised.
    Error(String),
}

impl FlashState {
    pub fn parse(text: &str) -> Result<FlashState, AnswerError> {
        let v: Value = serde_json::from_str(text).map_err(|_| unexpected("flash state", text))?;
        if v.as_str() == Some("Ready") {
            return Ok(FlashState::Ready);
        }
        let Some((tag, inner)) = v
            .as_object()
            .and_then(|m| if m.len() == 1 { m.iter().next() } else { None })
        else {
            return Err(unexpected("flash state", text));
        };
        match tag.as_str() {
            "Transferring" => {
                let num = |k: &str| inner.get(k).and_then(Value::as_u64);
                Ok(FlashState::Transferring {
                    id: num("id").and_then(|i| u32::try_from(i).ok()),
                    written: num("bytes_written").unwrap_or(0),
                    size: num("size").unwrap_or(0),
                })
            }
            "Done" => Ok(FlashState::Done),
            "Error" => Ok(FlashState::Error(match inner {
                Value::String(s) => sanitize(s, MAX_SHOWN),
                other => sanitize(&other.to_string(), MAX_SHOWN),
            })),
            _ => Err(unexpected("flash state", text)),
        }
    }
}

/// What a failed flash means and what to do, from the BMC's error text.
pub fn explain_flash_error(slot: u8, msg: &str) -> String {
    let again = "the module is not usable until it is flashed again";
    if msg.contains("USB interface not found") {
        // usb_boot.rs:110-113, raised before anything is written.
        return format!(
            "the BMC found no compute module in slot {slot} ({msg}): check that a module is seated in slot {slot}, power-cycle the board, then flash again"
        );
    }
    if msg.contains("USB") {
        return format!(
            "the BMC could not reach the module in slot {slot} over USB ({msg}): power-cycle the board and flash again"
        );
    }
    if msg.starts_with("sha256 checksum failed") {
        // io.rs:49-58: the digest of the bytes received differs from the one sent.
        return format!(
            "the BMC received other bytes than the image's sha256 says ({msg}): the image changed while it was sent, or was modified in place without its time changing (then `touch` it, so that its digest is computed afresh); flash again; {again}"
        );
    }
    if msg.starts_with("crc error") {
        // upgrade_worker.rs:147-152: the read-back differs from what was written.
        return format!(
            "the read-back of slot {slot} did not match what was written ({msg}): flash again; if it repeats, the module's storage may be failing. {again}"
        );
    }
    if msg == "Send timeout" {
        // streaming_data_service.rs:86-98: no upload within 10 s of the start.
        return format!(
            "the BMC gave up waiting for the upload to begin ({msg}: it allows 10 s after the start): check the network between this machine and the BMC, then flash again"
        );
    }
    if msg == "cancelled by user" {
        return format!(
            "the BMC cancelled the transfer ({msg}): the upload was cut short or another client cancelled it; flash again. {again}"
        );
    }
    format!("{msg}; {again}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flash_states_of_bmcd() {
        assert_eq!(FlashState::parse("\"Ready\""), Ok(FlashState::Ready));
        assert_eq!(
            FlashState::parse(
                r#"{"Transferring":{"id":3141592653,"process_name":"Node 2 os install service","size":10,"cancelled":false,"bytes_written":4}}"#
            ),
            Ok(FlashState::Transferring {
                id: Some(3141592653),
                written: 4,
                size: 10
            })
        );
        assert_eq!(
            FlashState::parse(r#"{"Done":[{"secs":3,"nanos":5},10]}"#),
            Ok(FlashState::Done)
        );
        assert_eq!(
            FlashState::parse("{\"Error\":\"crc\\u001b[2J error\"}"),
            Ok(FlashState::Error("crc[2J error".into()))
        );
        assert!(FlashState::parse(r#"{"Done":1,"Error":"x"}"#).is_err());
    }

    #[test]
    fn versions_prefer_bmcd_version() {
        let about = |j: &str| super::about(serde_json::from_str(j).unwrap()).unwrap();
        let v = DaemonVersion::from_about(&about(r#"{"version":"2.1.0","bmcd_version":"2.3.7"}"#));
        assert!(v.checks_sha256() && v.text == "2.3.7");
        let v = DaemonVersion::from_about(&about(r#"{"version":"2.3.4","build_version":"2.1.0"}"#));
        assert!(v.checks_sha256());
        assert!(!DaemonVersion::from_about(&about(r#"{"version":"2.2.0"}"#)).checks_sha256());
        assert!(!DaemonVersion::from_about(&about(r#"{"version":"banana"}"#)).checks_sha256());
        assert_eq!(parse_version("v2.3.7-rc1"), Some((2, 3, 7)));
        assert_eq!(parse_version("99999999999999999999.1.1"), None);
    }

    #[test]
    fn errors_are_unwrapped_and_bans_read() {
        assert_eq!(
            error_message(r#"{"response":[{"result":"Invalid `type` parameter x"}]}"#),
            "Invalid `type` parameter x"
        );
        assert_eq!(error_message("missing 1.02 kB\n"), "missing 1.02 kB");
        assert_eq!(
            ban(
                "Exceeded allowed authentication attempts. Access blocked for 1m 59s 999ms 998us 100ns"
            ),
            Some("1m 59s".into())
        );
        assert_eq!(ban("credentials incorrect"), None);
        assert_eq!(sanitize(&"é".repeat(400), 3), "ééé…");
    }
}
