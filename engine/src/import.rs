//! Parsing an operator's card import: UTF-8 text, one key per line.

use std::collections::HashSet;

use crate::Rejection;

/// Longest card key, in bytes.
pub const CARD_KEY_BYTES_MAX: usize = 1024;
/// Largest import body, in bytes.
pub const IMPORT_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most keys one import may carry.
pub const IMPORT_KEYS_COUNT_MAX: usize = 200_000;

/// An upload split into keys: trimmed, blank lines dropped, repeats inside it counted.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedImport<'a> {
    pub keys: Vec<&'a str>,
    pub duplicates_count: u64,
}

/// Splits an upload into keys. A malformed body (not UTF-8, too large, a line over
/// `CARD_KEY_BYTES_MAX`, a control character inside a key) is refused whole.
pub fn parse_import(body: &[u8]) -> Result<ParsedImport<'_>, Rejection> {
    if body.len() > IMPORT_BODY_BYTES_MAX {
        return Err(Rejection::BadImport(format!(
            "body is over {IMPORT_BODY_BYTES_MAX} bytes"
        )));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        Rejection::BadImport(format!("body is not UTF-8 (byte {})", e.valid_up_to()))
    })?;
    let mut seen = HashSet::new();
    let mut keys = Vec::new();
    let mut duplicates_count = 0;
    for (index, line) in text.split('\n').enumerate() {
        let line_number = index + 1;
        if line.len() > CARD_KEY_BYTES_MAX {
            return Err(Rejection::BadImport(format!(
                "line {line_number} is over {CARD_KEY_BYTES_MAX} bytes"
            )));
        }
        let key = line.trim();
        if key.is_empty() {
            continue;
        }
        if key.chars().any(char::is_control) {
            return Err(Rejection::BadImport(format!(
                "line {line_number} holds a control character"
            )));
        }
        if seen.insert(key) {
            keys.push(key);
        } else {
            duplicates_count += 1;
        }
    }
    if keys.len() > IMPORT_KEYS_COUNT_MAX {
        return Err(Rejection::BadImport(format!(
            "more than {IMPORT_KEYS_COUNT_MAX} keys in one import"
        )));
    }
    Ok(ParsedImport {
        keys,
        duplicates_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_trimmed_deduplicated_and_blank_lines_skipped() {
        let parsed = parse_import(b"KEY-A\n KEY-B \r\n\nKEY-A\nKEY-C\n").unwrap();
        assert_eq!(parsed.keys, ["KEY-A", "KEY-B", "KEY-C"]);
        assert_eq!(parsed.duplicates_count, 1);
    }

    #[test]
    fn malformed_bodies_import_nothing() {
        assert!(parse_import(b"ok\n\xff\xfe\n").is_err());
        let long = format!("ok\n{}\n", "x".repeat(CARD_KEY_BYTES_MAX + 1));
        let err = parse_import(long.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(parse_import(b"a\x00b\n").is_err());
        assert!(parse_import(&vec![b'a'; IMPORT_BODY_BYTES_MAX + 1]).is_err());
    }
}
