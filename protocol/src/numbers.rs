//! Numbers a 64-bit JSON parser cannot keep as written.
//!
//! Document values are JSON, and every Tandem implementation reads JSON
//! numbers as 64-bit integers or doubles (Rust's `serde_json`, Swift's
//! `JSONSerialization`, Kotlin's parsers, JavaScript's `Number`). An integer
//! literal outside the 64-bit range, such as `123456789012345678901234567890`,
//! would silently become the nearest double (`1.2345678901234568e29`):
//! the document would hold a different number than the one written. Tandem
//! refuses such a number instead (the device at write time, the server with
//! `rejected invalid_mutation`), so what is stored is exactly what was
//! written; a value that needs more digits travels as a string.
//!
//! Once text is parsed the difference is gone (both literals are the same
//! double), so the check reads the text: [`inexact_numbers`] finds every
//! integer literal (no fraction, no exponent) below `i64::MIN` or above
//! `u64::MAX`, with its path in the document. Numbers written with a fraction
//! or an exponent are doubles by the writer's own choice and are kept as
//! doubles.

use std::fmt;

/// One step of a path into a JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathStep {
    /// A member of an object.
    Key(String),
    /// An element of an array.
    Index(usize),
}

/// An integer literal that does not fit 64 bits, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InexactNumber {
    /// The path from the top of the text to the number.
    pub path: Vec<PathStep>,
    /// The literal as written (at most [`MAX_LITERAL_CHARS`] characters of
    /// it, then `…`).
    pub literal: String,
}

/// How much of a long literal [`InexactNumber::literal`] keeps.
pub const MAX_LITERAL_CHARS: usize = 40;

impl InexactNumber {
    /// The path as text, `a.b[2]` style, starting after the first `skip`
    /// steps (empty for the top).
    pub fn path_text(&self, skip: usize) -> String {
        let mut out = String::new();
        for step in self.path.iter().skip(skip) {
            match step {
                PathStep::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                PathStep::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }

    /// Why the number is refused, for people.
    pub fn explain(&self) -> String {
        format!(
            "the integer {} is outside the 64-bit range (-2^63 to 2^64-1) and would be stored rounded; write it as a string",
            self.literal
        )
    }
}

impl fmt::Display for InexactNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path_text(0);
        if path.is_empty() {
            write!(f, "{}", self.explain())
        } else {
            write!(f, "{path}: {}", self.explain())
        }
    }
}

/// Where the scanner is inside one container.
enum Frame {
    /// In an object; `key` is the member being read (`None` while a key is
    /// expected), as raw text between its quotes.
    Object { key: Option<(usize, usize)> },
    /// In an array, at element `index`.
    Array { index: usize },
}

/// Every integer literal in `json` outside the range of `i64` (negative) or
/// `u64` (positive), in text order. `json` should be valid JSON; on text
/// that is not, the scan stops quietly (the parser reports the error).
pub fn inexact_numbers(json: &str) -> Vec<InexactNumber> {
    let bytes = json.as_bytes();
    let mut found = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => {
                stack.push(Frame::Object { key: None });
                i += 1;
            }
            b'[' => {
                stack.push(Frame::Array { index: 0 });
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                i += 1;
            }
            b',' => {
                match stack.last_mut() {
                    Some(Frame::Array { index }) => *index += 1,
                    Some(Frame::Object { key }) => *key = None,
                    None => {}
                }
                i += 1;
            }
            b'"' => {
                let Some(end) = string_end(bytes, i) else {
                    return found;
                };
                if let Some(Frame::Object { key }) = stack.last_mut()
                    && key.is_none()
                {
                    *key = Some((i, end));
                }
                i = end;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                let literal = &json[start..i];
                if !fits_64_bits(literal) {
                    found.push(InexactNumber {
                        path: path_of(json, &stack),
                        literal: shorten(literal),
                    });
                }
            }
            _ => i += 1,
        }
    }
    found
}

/// The first of [`inexact_numbers`], if any.
pub fn first_inexact_number(json: &str) -> Option<InexactNumber> {
    inexact_numbers(json).into_iter().next()
}

/// The index just past the closing quote of the string starting at `start`.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Whether a number literal is a double by choice (a fraction or an
/// exponent) or an integer a 64-bit parser keeps exactly.
fn fits_64_bits(literal: &str) -> bool {
    if literal.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        return true;
    }
    if literal.starts_with('-') {
        literal.parse::<i64>().is_ok()
    } else {
        literal.parse::<u64>().is_ok()
    }
}

fn path_of(json: &str, stack: &[Frame]) -> Vec<PathStep> {
    stack
        .iter()
        .map(|frame| match frame {
            Frame::Array { index } => PathStep::Index(*index),
            Frame::Object { key } => {
                let raw = key.map(|(start, end)| &json[start..end]).unwrap_or("\"\"");
                PathStep::Key(serde_json::from_str(raw).unwrap_or_else(|_| raw.to_owned()))
            }
        })
        .collect()
}

fn shorten(literal: &str) -> String {
    if literal.len() <= MAX_LITERAL_CHARS {
        literal.to_owned()
    } else {
        format!("{}…", &literal[..MAX_LITERAL_CHARS])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> PathStep {
        PathStep::Key(k.into())
    }

    #[test]
    fn integers_beyond_64_bits_are_found_with_their_path() {
        let text = r#"{"a": 1, "big": 123456789012345678901234567890,
            "list": [1, {"x\"y": -9223372036854775809}], "ok": 18446744073709551615}"#;
        let found = inexact_numbers(text);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].path, vec![key("big")]);
        assert_eq!(found[0].literal, "123456789012345678901234567890");
        assert_eq!(
            found[1].path,
            vec![key("list"), PathStep::Index(1), key("x\"y")]
        );
        assert_eq!(found[1].path_text(0), "list[1].x\"y");
    }

    #[test]
    fn what_a_64_bit_parser_keeps_is_not_flagged() {
        for text in [
            "0",
            "-0",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
            "1e300",
            "1.5",
            "123456789012345678901234567890.0",
            "1E30",
            r#"{"s": "123456789012345678901234567890"}"#,
            r#"["\\", "\"", 12]"#,
            "true",
            "null",
        ] {
            assert!(inexact_numbers(text).is_empty(), "{text}");
        }
        assert_eq!(inexact_numbers("18446744073709551616").len(), 1);
        assert_eq!(inexact_numbers("-9223372036854775809").len(), 1);
    }

    #[test]
    fn keys_after_commas_and_nested_containers_are_tracked() {
        let text = r#"{"a": [1, 2, {"b": 1}], "c": {"d": [0, 0, 99999999999999999999]}}"#;
        let found = first_inexact_number(text).expect("found");
        assert_eq!(
            found.path,
            vec![key("c"), key("d"), PathStep::Index(2)],
            "{found:?}"
        );
        assert_eq!(found.to_string(), format!("c.d[2]: {}", found.explain()));
    }

    #[test]
    fn long_literals_are_shortened() {
        let text = "9".repeat(500);
        let found = first_inexact_number(&text).expect("found");
        assert!(found.literal.chars().count() <= MAX_LITERAL_CHARS + 1);
    }

    #[test]
    fn parsing_rounds_these_numbers() {
        // The reason for the check: with serde_json's default features the
        // literal comes back as a different number. (If `arbitrary_precision`
        // were ever turned on in the build, this would fail and the check
        // would be worth revisiting.)
        let v: serde_json::Value =
            serde_json::from_str("123456789012345678901234567890").expect("parses");
        assert_ne!(v.to_string(), "123456789012345678901234567890");
    }
}
