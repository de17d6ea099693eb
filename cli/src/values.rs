//! Value parsers shared by several commands' arguments (`value_parser = values::NAME`):
//! each turns one typed word into a value or says, in one line, what it expected.

use std::time::Duration;

use crate::service_file;

/// `--timeout 90s`, `5m`: the service file's duration grammar.
pub fn duration(s: &str) -> Result<Duration, String> {
    service_file::parse_duration(s)
        .ok_or_else(|| format!("cannot read {s:?} as a duration (e.g. 90s, 5m)"))
}

/// A parse error's Rust type names in words a user knows: serde's "expected u32" becomes
/// "expected a whole number", std's "invalid digit found in string" (what clap prints for
/// `-t x`) "not a whole number". Only the wording after the last "expected " or ": " is
/// rewritten, so a value the user typed is never changed.
pub fn human_types(message: &str) -> String {
    if let Some((head, want)) = message.rsplit_once("expected ") {
        let word = match want.trim_end_matches('.') {
            "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, 0 or more",
            "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
            "f32" | "f64" => "a number",
            "a sequence" => "a list",
            "a map" => "a table",
            "a borrowed string" => "a string",
            s if s.starts_with("struct ") => "a table",
            s => s,
        };
        return format!("{head}expected {word}");
    }
    for (rust, human) in [
        ("invalid digit found in string", "not a whole number"),
        (
            "cannot parse integer from empty string",
            "not a whole number (it is empty)",
        ),
        (
            "number too large to fit in target type",
            "the number is too large",
        ),
        (
            "number too small to fit in target type",
            "the number is too small",
        ),
        ("invalid float literal", "not a number"),
        (
            "provided string was not `true` or `false`",
            "expected true or false",
        ),
    ] {
        if let Some(head) = message.strip_suffix(rust) {
            return format!("{head}{human}");
        }
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_type_names_become_words() {
        for (rust, human) in [
            (
                "invalid type: string \"three\", expected u32",
                "invalid type: string \"three\", expected a whole number, 0 or more",
            ),
            (
                "invalid value: integer `-1`, expected u64",
                "invalid value: integer `-1`, expected a whole number, 0 or more",
            ),
            (
                "invalid type: integer `1`, expected a sequence",
                "invalid type: integer `1`, expected a list",
            ),
            (
                "invalid type: string \"x\", expected f64",
                "invalid type: string \"x\", expected a number",
            ),
            (
                "invalid value 'x' for '--time <TIME>': invalid digit found in string",
                "invalid value 'x' for '--time <TIME>': not a whole number",
            ),
            (
                "key `image`: must not be empty",
                "key `image`: must not be empty",
            ),
        ] {
            assert_eq!(human_types(rust), human, "{rust}");
        }
    }
}
