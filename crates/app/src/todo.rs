//! Todo rules: what a valid title is, which todos a filter shows, and the counts.

use serde::{Deserialize, Serialize};

/// Longest title accepted, in characters (not bytes). Long enough for any real task, short
/// enough that a page of a thousand todos stays small.
pub const MAX_TITLE_CHARS: usize = 500;

/// A todo as stored and replicated. `id` is chosen by the writer (UUIDv7) and never changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Todo {
    pub id: String,
    pub title: String,
    pub completed: bool,
    /// Milliseconds since the Unix epoch, set by the writer; orders the list.
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TitleError {
    #[error("A todo needs a title.")]
    Empty,
    #[error("A title can be at most {max} characters long; this one has {len}.")]
    TooLong { len: usize, max: usize },
    #[error("A title cannot contain control characters.")]
    ControlCharacter,
}

/// Trims the title and checks it; returns the title to store.
pub fn validate_title(raw: &str) -> Result<String, TitleError> {
    let title = raw.trim();
    if title.is_empty() {
        return Err(TitleError::Empty);
    }
    let len = title.chars().count();
    if len > MAX_TITLE_CHARS {
        return Err(TitleError::TooLong {
            len,
            max: MAX_TITLE_CHARS,
        });
    }
    if title.chars().any(char::is_control) {
        return Err(TitleError::ControlCharacter);
    }
    Ok(title.to_owned())
}

/// Which todos the page lists (`?filter=` in the query string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    #[default]
    All,
    Active,
    Completed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown filter {0:?}: use all, active or completed")]
pub struct FilterParseError(pub String);

impl std::str::FromStr for Filter {
    type Err = FilterParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "all" => Ok(Self::All),
            "active" => Ok(Self::Active),
            "completed" => Ok(Self::Completed),
            other => Err(FilterParseError(other.to_owned())),
        }
    }
}

impl Filter {
    pub const ALL: [Filter; 3] = [Filter::All, Filter::Active, Filter::Completed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Active => "active",
            Self::Completed => "completed",
        }
    }

    pub fn shows(self, todo: &Todo) -> bool {
        match self {
            Self::All => true,
            Self::Active => !todo.completed,
            Self::Completed => todo.completed,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct TodoCounts {
    pub total: usize,
    pub active: usize,
    pub completed: usize,
}

impl TodoCounts {
    pub fn of(todos: &[Todo]) -> Self {
        let completed = todos.iter().filter(|t| t.completed).count();
        Self {
            total: todos.len(),
            active: todos.len() - completed,
            completed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_is_trimmed() {
        assert_eq!(validate_title("  milk \n"), Ok("milk".to_owned()));
    }

    #[test]
    fn blank_titles_are_rejected() {
        assert_eq!(validate_title(""), Err(TitleError::Empty));
        assert_eq!(validate_title(" \t\n "), Err(TitleError::Empty));
    }

    #[test]
    fn title_length_counts_characters_not_bytes() {
        let ok = "é".repeat(MAX_TITLE_CHARS);
        assert!(validate_title(&ok).is_ok());
        let long = "é".repeat(MAX_TITLE_CHARS + 1);
        assert_eq!(
            validate_title(&long),
            Err(TitleError::TooLong {
                len: MAX_TITLE_CHARS + 1,
                max: MAX_TITLE_CHARS
            })
        );
    }

    #[test]
    fn control_characters_are_rejected() {
        assert_eq!(validate_title("a\u{0}b"), Err(TitleError::ControlCharacter));
    }

    #[test]
    fn filters_parse_and_select() {
        let open = Todo {
            id: "a".into(),
            title: "a".into(),
            completed: false,
            created_at: 0,
        };
        let done = Todo {
            completed: true,
            ..open.clone()
        };
        assert_eq!("".parse(), Ok(Filter::All));
        assert_eq!("active".parse(), Ok(Filter::Active));
        assert!("Active".parse::<Filter>().is_err());
        assert!(Filter::Active.shows(&open) && !Filter::Active.shows(&done));
        assert!(Filter::Completed.shows(&done) && !Filter::Completed.shows(&open));
        assert_eq!(
            TodoCounts::of(&[open, done]),
            TodoCounts {
                total: 2,
                active: 1,
                completed: 1
            }
        );
    }
}
