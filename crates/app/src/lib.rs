//! The todo app's rules and presentation, free of any runtime or storage.
//!
//! The node, the browser peer and the edge worker all render the same pages from the same view
//! models: [`todo`] holds the validation rules and the list arithmetic (filters, counts),
//! [`view`] the structures the templates read, and [`templates`] the MiniJinja environment
//! (embedded templates, or a folder reloaded on every render during development). [`site`] is the
//! one code path for the pages and form actions that node, browser peer and edge all serve,
//! over any store of todos; [`replica`] is that store over a `changeset` replica.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod form;
pub mod replica;
pub mod site;
pub mod templates;
pub mod todo;
pub mod view;

pub use form::{parse_client_id, parse_completed, return_target};
pub use templates::{RenderError, Templates};
pub use todo::{Filter, FilterParseError, TitleError, Todo, TodoCounts, validate_title};
pub use view::{ErrorPage, FilterLink, FormError, IndexPage, TodoItem};
