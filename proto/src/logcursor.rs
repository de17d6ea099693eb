//! Where a reader of a container log stands, so it can pick up again without losing or
//! repeating a line: after a log's history was read and its follow begins (agent), and after
//! an agent's stream broke and is opened again with `since` (scheduler).
//!
//! Several lines may carry one timestamp (the shim stamps every line of one read with the
//! same time), so the position is the last time seen plus how many lines with exactly that
//! time were passed on. Timestamps are the json-file log's RFC 3339 strings with nine
//! fraction digits, which sort as text.

/// The position after the last line passed on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogCursor {
    /// Time of the last line passed on; empty before the first.
    pub time: String,
    /// Lines passed on with exactly `time`.
    pub at_time: usize,
}

impl LogCursor {
    /// Starts reading again from the cursor's time: a [`Replay`] that skips what this
    /// cursor already passed on.
    pub fn replay(&mut self) -> Replay<'_> {
        let skip = self.at_time;
        Replay { cursor: self, skip }
    }

    /// The cursor's time as Unix nanoseconds, for a `since` (0: from the start).
    pub fn since_unix_nanos(&self) -> i64 {
        humantime::parse_rfc3339(&self.time)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0)
    }
}

/// One pass over lines read again from the cursor's time on.
pub struct Replay<'a> {
    cursor: &'a mut LogCursor,
    /// Lines at the cursor's time still to skip: they were passed on before.
    skip: usize,
}

impl Replay<'_> {
    /// Whether the line stamped `time` is new; new lines move the cursor. Lines older than
    /// the cursor, and the first `at_time` lines of its own time, were passed on already.
    pub fn admit(&mut self, time: &str) -> bool {
        let c = &mut *self.cursor;
        if c.time.is_empty() || time > c.time.as_str() {
            c.time = time.to_string();
            c.at_time = 1;
            self.skip = 0;
            return true;
        }
        if time < c.time.as_str() {
            return false;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        c.at_time += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "2026-11-23T10:00:00.000000001Z";
    const T2: &str = "2026-11-23T10:00:00.000000002Z";
    const T3: &str = "2026-11-23T10:00:00.000000003Z";

    #[test]
    fn a_replay_from_the_cursors_time_skips_exactly_what_was_passed_on() {
        let mut c = LogCursor::default();
        let mut r = c.replay();
        // First pass: T1, T2, T2 (two lines of one read).
        assert!(r.admit(T1));
        assert!(r.admit(T2));
        assert!(r.admit(T2));
        assert_eq!((c.time.as_str(), c.at_time), (T2, 2));
        // The stream broke; reading again from T2 returns T2, T2, T2 (a third line of that
        // read arrived meanwhile) and T3.
        let mut r = c.replay();
        let got: Vec<bool> = [T2, T2, T2, T3].iter().map(|t| r.admit(t)).collect();
        assert_eq!(got, [false, false, true, true]);
        assert_eq!((c.time.as_str(), c.at_time), (T3, 1));
        // Older lines are never passed on again.
        assert!(!c.replay().admit(T1));
    }

    #[test]
    fn since_is_the_cursors_time() {
        let mut c = LogCursor::default();
        assert_eq!(c.since_unix_nanos(), 0);
        c.replay().admit("1970-01-01T00:00:01.000000005Z");
        assert_eq!(c.since_unix_nanos(), 1_000_000_005);
    }
}
