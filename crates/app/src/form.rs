//! What the plain HTML forms post, read the same way by the node and the browser peer, so a
//! form action means the same wherever it is applied.

use crate::todo::Filter;

/// Where to send the browser after a post: only the app's own list pages, never a URL a form
/// (or an attacker) supplies verbatim.
pub fn return_target(return_to: Option<&str>) -> (Filter, &'static str) {
    match return_to {
        Some("/?filter=active") => (Filter::Active, "/?filter=active"),
        Some("/?filter=completed") => (Filter::Completed, "/?filter=completed"),
        _ => (Filter::All, "/"),
    }
}

/// The toggle form's `completed` field: the state to set ("1" done, "0" not done), so a
/// resubmitted form sets the same state again instead of flipping it back.
pub fn parse_completed(field: &str) -> Result<bool, String> {
    match field {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        other => Err(format!("completed must be 1 or 0, not {other:?}.")),
    }
}

/// A todo id chosen by a client (the page adds one to the new-todo form so that a post
/// retried after a lost answer, or replayed offline, makes the same todo, not a second one).
/// Only canonical lowercase UUIDs, as the node itself writes, are accepted.
pub fn parse_client_id(field: &str) -> Result<String, String> {
    let bytes = field.as_bytes();
    let canonical = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(b),
        });
    if canonical {
        Ok(field.to_owned())
    } else {
        Err(format!("id must be a lowercase UUID, not {field:?}."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_targets_are_allow_listed() {
        assert_eq!(return_target(Some("/?filter=active")).1, "/?filter=active");
        assert_eq!(return_target(Some("https://evil.example/")).1, "/");
        assert_eq!(return_target(None), (Filter::All, "/"));
    }

    #[test]
    fn completed_field_sets_a_state() {
        assert_eq!(parse_completed("1"), Ok(true));
        assert_eq!(parse_completed("false"), Ok(false));
        assert!(parse_completed("yes").is_err());
    }

    #[test]
    fn client_ids_must_be_canonical_uuids() {
        assert!(parse_client_id("0192f6a0-7c1e-7aaa-8bbb-0123456789ab").is_ok());
        assert!(parse_client_id("0192F6A0-7C1E-7AAA-8BBB-0123456789AB").is_err());
        assert!(parse_client_id("x").is_err());
        assert!(parse_client_id("0192f6a0-7c1e-7aaa-8bbb-0123456789ab'--").is_err());
    }
}
