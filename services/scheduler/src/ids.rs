//! Task and container ids: where every id the scheduler hands out is made, for the
//! controller's service tasks and for one-off containers (`rctl run`) alike.

/// A 16-hex-digit random id; its first 12 digits are the container's short id and hostname.
pub fn new_task_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_16_lowercase_hex_digits_and_differ() {
        let (a, b) = (new_task_id(), new_task_id());
        for id in [&a, &b] {
            assert_eq!(id.len(), 16, "{id}");
            assert!(
                id.chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
                "{id}"
            );
        }
        assert_ne!(a, b);
    }
}
