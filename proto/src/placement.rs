//! The `[placement]` syntax shared by the CLI (file checks) and the scheduler (API checks
//! and filtering): `KEY == VALUE` / `KEY != VALUE` constraints and the spread key.

/// The constraint key that matches the node's name rather than a label.
pub const NODE_NAME: &str = "node.name";
/// The spread key meaning "spread over nodes" (also the default, "").
pub const SPREAD_NODE: &str = "node";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// A node label, or [`NODE_NAME`].
    pub key: String,
    /// `==` when true, `!=` when false.
    pub equal: bool,
    pub value: String,
}

impl Constraint {
    /// Parses `KEY == VALUE` or `KEY != VALUE` (spaces around the operator optional).
    pub fn parse(s: &str) -> Result<Constraint, String> {
        let (key, equal, value) = if let Some((k, v)) = s.split_once("==") {
            (k, true, v)
        } else if let Some((k, v)) = s.split_once("!=") {
            (k, false, v)
        } else {
            return Err(format!("{s:?} is not `KEY == VALUE` or `KEY != VALUE`"));
        };
        let (key, value) = (key.trim(), value.trim());
        if !valid_key(key) {
            return Err(format!(
                "{s:?}: {key:?} is not a node label name or `{NODE_NAME}`"
            ));
        }
        if value.is_empty() || value.contains(char::is_whitespace) || value.contains(['=', '!']) {
            return Err(format!("{s:?}: value {value:?} must be one word"));
        }
        Ok(Constraint {
            key: key.to_string(),
            equal,
            value: value.to_string(),
        })
    }

    /// Whether a node with this name and these labels satisfies the constraint. A node
    /// without the label satisfies `!=` and fails `==` (as Kubernetes `NotIn`/`In`).
    pub fn matches<'a>(
        &self,
        node_name: &str,
        label: impl FnOnce(&str) -> Option<&'a str>,
    ) -> bool {
        let actual = if self.key == NODE_NAME {
            Some(node_name)
        } else {
            label(&self.key)
        };
        (actual == Some(self.value.as_str())) == self.equal
    }
}

/// A label name: letters, digits and `._-/`, starting with a letter or digit.
pub fn valid_key(k: &str) -> bool {
    k.starts_with(|c: char| c.is_ascii_alphanumeric())
        && k.len() <= 253
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
}

/// Checks `spread`: "", "node", or a node label name.
/// Placement strategies ([`validate_strategy`]).
pub const STRATEGY_SPREAD: &str = "spread";
pub const STRATEGY_BINPACK: &str = "binpack";

/// A strategy is "", "spread" or "binpack"; binpack takes no spread key (it packs, it does
/// not spread).
pub fn validate_strategy(strategy: &str, spread: &str) -> Result<(), String> {
    match strategy {
        "" | STRATEGY_SPREAD => Ok(()),
        STRATEGY_BINPACK if spread.is_empty() => Ok(()),
        STRATEGY_BINPACK => Err(format!(
            "spread = {spread:?} has no effect with strategy = \"{STRATEGY_BINPACK}\"; remove one"
        )),
        s => Err(format!(
            "{s:?} is not \"{STRATEGY_SPREAD}\" or \"{STRATEGY_BINPACK}\""
        )),
    }
}

pub fn validate_spread(s: &str) -> Result<(), String> {
    if s.is_empty() || s == SPREAD_NODE || valid_key(s) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not \"{SPREAD_NODE}\" or a node label name"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_parse_and_match() {
        let c = Constraint::parse("role == web").unwrap();
        assert_eq!(
            c,
            Constraint {
                key: "role".into(),
                equal: true,
                value: "web".into()
            }
        );
        assert!(c.matches("h1", |_| Some("web")));
        assert!(!c.matches("h1", |_| Some("db")));
        assert!(!c.matches("h1", |_| None));
        let c = Constraint::parse("node.name!=h2").unwrap();
        assert!(c.matches("h1", |_| None));
        assert!(!c.matches("h2", |_| None));
        assert!(Constraint::parse("zone != a")
            .unwrap()
            .matches("h", |_| None));
    }

    #[test]
    fn bad_constraints_are_rejected() {
        for bad in [
            "role = web",
            "role",
            "== web",
            "role ==",
            "ro le == web",
            "a == b c",
        ] {
            assert!(Constraint::parse(bad).is_err(), "{bad}");
        }
        assert!(validate_spread("zone").is_ok());
        assert!(validate_spread("").is_ok());
        assert!(validate_spread("no pe").is_err());
    }
}
