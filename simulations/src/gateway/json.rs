//! Reading a flat JSON object into `engine::payment::JsonField`s, keeping each number's exact
//! text: epusdt signs numbers in their shortest decimal form, which a float round trip could
//! change (and amounts must never pass through a float at all).

use std::fmt;

use engine::payment::JsonField;
use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::PARAMS_COUNT_MAX;

/// Why a body is not a flat JSON object of strings and numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonFieldsError(pub String);

impl fmt::Display for JsonFieldsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for JsonFieldsError {}

/// The fields of a flat JSON object, in order: strings decoded, numbers as their raw text,
/// `null` as an empty string (which signatures skip). Nested values, booleans, repeated
/// names and more than `PARAMS_COUNT_MAX` fields are refused.
pub fn json_fields(text: &[u8]) -> Result<Vec<JsonField>, JsonFieldsError> {
    let Entries(entries) =
        serde_json::from_slice(text).map_err(|e| JsonFieldsError(format!("bad JSON: {e}")))?;
    let mut fields: Vec<JsonField> = Vec::with_capacity(entries.len());
    for (name, raw) in entries {
        if fields.iter().any(|f| f.name == name) {
            return Err(JsonFieldsError(format!("field {name:?} appears twice")));
        }
        fields.push(field(name, raw.get())?);
    }
    Ok(fields)
}

fn field(name: String, raw: &str) -> Result<JsonField, JsonFieldsError> {
    let (text, is_number) = match raw.as_bytes().first() {
        Some(b'"') => {
            let text: String = serde_json::from_str(raw).expect("a JSON string parses");
            (text, false)
        }
        Some(b'-' | b'0'..=b'9') => (raw.to_owned(), true),
        _ if raw == "null" => (String::new(), false),
        _ => {
            return Err(JsonFieldsError(format!(
                "field {name:?} is neither a string nor a number"
            )))
        }
    };
    Ok(JsonField {
        name,
        text,
        is_number,
    })
}

/// A JSON object's entries in order, repeated names kept (so they can be refused).
struct Entries(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EntriesVisitor)
    }
}

struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Entries;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
            if entries.len() == PARAMS_COUNT_MAX {
                return Err(A::Error::custom("too many fields"));
            }
            entries.push(entry);
        }
        Ok(Entries(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_their_text_and_strings_are_decoded() {
        let fields =
            json_fields(br#"{"amount": 10.50, "order_id": "o\u0031", "x": null, "s": 2}"#).unwrap();
        let got: Vec<(&str, &str, bool)> = fields
            .iter()
            .map(|f| (f.name.as_str(), f.text.as_str(), f.is_number))
            .collect();
        assert_eq!(
            got,
            [
                ("amount", "10.50", true),
                ("order_id", "o1", false),
                ("x", "", false),
                ("s", "2", true)
            ]
        );
    }

    #[test]
    fn odd_bodies_are_refused() {
        assert!(json_fields(br#"{"a": 1, "a": 2}"#).is_err());
        assert!(json_fields(br#"{"a": true}"#).is_err());
        assert!(json_fields(br#"{"a": {"b": 1}}"#).is_err());
        assert!(json_fields(br#"[1]"#).is_err());
        let many: Vec<String> = (0..=PARAMS_COUNT_MAX)
            .map(|n| format!("\"f{n}\":1"))
            .collect();
        assert!(json_fields(format!("{{{}}}", many.join(",")).as_bytes()).is_err());
    }
}
