//! What the templates read. Every renderer (node, browser peer, edge) fills these the same way,
//! so a page looks the same whoever rendered it.

use serde::Serialize;

use crate::todo::{Filter, Todo, TodoCounts};

/// One row of the list, with what its forms need precomputed so templates stay logic-free.
#[derive(Debug, Clone, Serialize)]
pub struct TodoItem {
    pub id: String,
    pub title: String,
    pub completed: bool,
    pub created_at: i64,
}

impl From<&Todo> for TodoItem {
    fn from(todo: &Todo) -> Self {
        Self {
            id: todo.id.clone(),
            title: todo.title.clone(),
            completed: todo.completed,
            created_at: todo.created_at,
        }
    }
}

/// A form submission that failed validation, shown again with its message and the text typed.
#[derive(Debug, Clone, Serialize)]
pub struct FormError {
    pub message: String,
    /// `None` for the "new todo" form, the todo's id for its edit form.
    pub todo_id: Option<String>,
    pub draft: String,
}

/// The one page of the app: the list with its counts, filter links and forms.
#[derive(Debug, Clone, Serialize)]
pub struct IndexPage {
    pub todos: Vec<TodoItem>,
    pub counts: TodoCounts,
    pub filter: Filter,
    pub filters: Vec<FilterLink>,
    /// Where forms send the browser back to (the page with its filter).
    pub return_to: String,
    pub form_error: Option<FormError>,
    /// "server" when a node rendered the page, "offline" when the browser peer did.
    pub mode: &'static str,
    /// Changes made here that no node has acknowledged yet (always 0 on a node).
    pub pending_changes: usize,
    pub node_name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FilterLink {
    pub name: &'static str,
    pub href: String,
    pub selected: bool,
}

impl IndexPage {
    /// Builds the page for `filter` from every todo of the replica (in display order).
    pub fn new(all: &[Todo], filter: Filter, node_name: &str) -> Self {
        let return_to = match filter {
            Filter::All => "/".to_owned(),
            other => format!("/?filter={}", other.as_str()),
        };
        Self {
            todos: all
                .iter()
                .filter(|t| filter.shows(t))
                .map(TodoItem::from)
                .collect(),
            counts: TodoCounts::of(all),
            filter,
            filters: Filter::ALL
                .iter()
                .map(|f| FilterLink {
                    name: f.as_str(),
                    href: match f {
                        Filter::All => "/".to_owned(),
                        other => format!("/?filter={}", other.as_str()),
                    },
                    selected: *f == filter,
                })
                .collect(),
            return_to,
            form_error: None,
            mode: "server",
            pending_changes: 0,
            node_name: node_name.to_owned(),
        }
    }

    pub fn with_form_error(mut self, error: FormError) -> Self {
        self.form_error = Some(error);
        self
    }
}

/// An error page (404, 400, ...), rendered from the same layout.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorPage {
    pub status: u16,
    pub title: String,
    pub message: String,
}
