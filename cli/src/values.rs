//! Value parsers shared by several commands' arguments (`value_parser = values::NAME`):
//! each turns one typed word into a value or says, in one line, what it expected.

use std::time::Duration;

use crate::service_file;

/// `--timeout 90s`, `5m`: the service file's duration grammar.
pub fn duration(s: &str) -> Result<Duration, String> {
    service_file::parse_duration(s)
        .ok_or_else(|| format!("cannot read {s:?} as a duration (e.g. 90s, 5m)"))
}
