//! The app's pages and form actions, once, for every replica that serves them: the node (over
//! its cr-sqlite store), the browser peer and the edge worker (over a `changeset` replica).
//!
//! [`handle`] takes a request reduced to what the app reads ([`Request`]) and a store of todos
//! ([`Todos`]), and answers as a node does: `GET /` with its filter (400 for an unknown one),
//! each form action applied and answered 303 to the page it came from, a title that fails
//! validation answered 422 with the page, the message and what was typed, an unknown id 404,
//! a malformed form 400, a body over [`MAX_FORM_BYTES`] 413, a body that is not a urlencoded
//! form 415, another method 405, any other path 404. Transport concerns (headers, logging,
//! where a store failure goes) stay with the caller.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::form::{parse_client_id, parse_completed, return_target};
use crate::templates::{RenderError, Templates};
use crate::todo::{Filter, TitleError, Todo, validate_title};
use crate::view::{ErrorPage, FormError, IndexPage};

/// Form posts are a title and a few hidden fields: 16 KiB is far above any valid one.
pub const MAX_FORM_BYTES: usize = 16 * 1024;

/// Same-origin scripts only (plus compiling the browser peer's wasm); the page may fetch from
/// other replicas of the deployment (failover), whose API answers with CORS headers.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self' http: https: ws: wss:; \
     worker-src 'self'; manifest-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// What the app reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Upper-case HTTP method.
    pub method: &'a str,
    pub path: &'a str,
    /// The query string, without `?`.
    pub query: &'a str,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

/// Who answers, and what a page says about it.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// Shown on pages ("served by …").
    pub node_name: &'a str,
    /// "server" (a node or the edge rendered the page) or "offline" (the browser peer did).
    pub mode: &'static str,
    /// Transactions made here that no node has acknowledged (0 on a node).
    pub pending_changes: usize,
    /// The clock, for a new todo's `created_at`.
    pub now_ms: i64,
    /// The id of a new todo whose form carried none (a canonical lowercase UUID).
    pub new_id: &'a str,
}

/// The answer: a redirect (303 See Other) or a page with its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Answer {
    Redirect { location: String },
    Page { status: u16, html: String },
}

impl Answer {
    pub fn status(&self) -> u16 {
        match self {
            Self::Redirect { .. } => 303,
            Self::Page { status, .. } => *status,
        }
    }
}

/// What a store says when an action cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no todo has that id")]
    NotFound,
    /// The write would emit changes no replica accepts (counters at their limit): 409.
    #[error("{0}")]
    Refused(String),
    /// The store itself failed: the caller answers 500 and logs it.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

/// A request that could not be answered: the caller answers 500 and logs the cause.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("the store failed")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Render(#[from] RenderError),
}

/// The todos of one replica, as the pages and forms use them.
pub trait Todos {
    /// Every todo, in display order (created_at, then id).
    fn list(&self) -> Result<Vec<Todo>, StoreError>;
    fn exists(&self, id: &str) -> Result<bool, StoreError>;
    /// Adds `todo`; a todo of that id already there is left as it is (a replayed post).
    fn add(&mut self, todo: Todo) -> Result<(), StoreError>;
    /// [`StoreError::NotFound`] when no todo has `id`.
    fn set_title(&mut self, id: &str, title: &str) -> Result<(), StoreError>;
    fn set_completed(&mut self, id: &str, completed: bool) -> Result<(), StoreError>;
    fn delete(&mut self, id: &str) -> Result<(), StoreError>;
    /// Deletes every completed todo, in transactions of at most
    /// `changeset::MAX_CHANGES_PER_TRANSACTION` rows; returns how many.
    fn clear_completed(&mut self) -> Result<usize, StoreError>;
}

/// An error answered as a page.
#[derive(Debug)]
struct PageError {
    status: u16,
    title: &'static str,
    message: String,
}

impl PageError {
    fn not_found(message: &str) -> Self {
        Self {
            status: 404,
            title: "Not found",
            message: message.to_owned(),
        }
    }

    fn bad_request(message: String) -> Self {
        Self {
            status: 400,
            title: "Bad request",
            message,
        }
    }

    fn no_todo() -> Self {
        Self::not_found("No todo has that id.")
    }
}

enum Failure {
    Page(PageError),
    Site(SiteError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::Page(PageError::no_todo()),
            StoreError::Refused(reason) => Self::Page(PageError {
                status: 409,
                title: "Cannot change this todo",
                message: format!("Nothing was changed: {reason}."),
            }),
            StoreError::Failed(cause) => Self::Site(SiteError::Store(cause)),
        }
    }
}

impl From<SiteError> for Failure {
    fn from(e: SiteError) -> Self {
        Self::Site(e)
    }
}

impl From<RenderError> for Failure {
    fn from(e: RenderError) -> Self {
        Self::Site(SiteError::Render(e))
    }
}

/// Answers `request` from `todos`, applying a form action to it.
pub fn handle(
    request: Request<'_>,
    todos: &mut impl Todos,
    templates: &Templates,
    context: &Context<'_>,
) -> Result<Answer, SiteError> {
    match route(request, todos, templates, context) {
        Ok(answer) => Ok(answer),
        Err(Failure::Page(error)) => {
            error_page(templates, error.status, error.title, error.message)
        }
        Err(Failure::Site(error)) => Err(error),
    }
}

/// An error page (404, 400, …) from the app's layout, as every replica renders it.
pub fn error_page(
    templates: &Templates,
    status: u16,
    title: &str,
    message: String,
) -> Result<Answer, SiteError> {
    let page = ErrorPage {
        status,
        title: title.to_owned(),
        message,
    };
    Ok(Answer::Page {
        status,
        html: templates.render("error.html", &page)?,
    })
}

fn route(
    request: Request<'_>,
    todos: &mut impl Todos,
    templates: &Templates,
    context: &Context<'_>,
) -> Result<Answer, Failure> {
    let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    let is_form = matches!(
        segments.as_slice(),
        ["todos"] | ["todos", "clear-completed"] | ["todos", _, "toggle" | "title" | "delete"]
    );
    let get = matches!(request.method, "GET" | "HEAD");
    if request.path == "/" {
        if !get {
            return Err(method_not_allowed());
        }
        let filter = match fields(request.query.as_bytes())?.get("filter") {
            Some(f) => f
                .parse::<Filter>()
                .map_err(|e| Failure::Page(PageError::bad_request(e.to_string())))?,
            None => Filter::All,
        };
        let html = index(todos, templates, context, filter, None)?;
        return Ok(Answer::Page { status: 200, html });
    }
    if !is_form {
        return Err(Failure::Page(PageError::not_found(
            "There is no page at this address.",
        )));
    }
    if request.method != "POST" {
        return Err(method_not_allowed());
    }
    let form = read_form(request)?;
    let (filter, target) = return_target(form.get("return_to").map(String::as_str));
    let required = |name: &str| {
        form.get(name).map(String::as_str).ok_or_else(|| {
            Failure::Page(PageError::bad_request(format!(
                "The form could not be read: missing field `{name}`."
            )))
        })
    };
    match segments.as_slice() {
        ["todos"] => {
            let draft = required("title")?;
            let id = match form.get("id").filter(|id| !id.is_empty()) {
                Some(id) => parse_client_id(id),
                None => parse_client_id(context.new_id),
            }
            .map_err(|e| Failure::Page(PageError::bad_request(e)))?;
            match validate_title(draft) {
                Ok(title) => todos.add(Todo {
                    id,
                    title,
                    completed: false,
                    created_at: context.now_ms,
                })?,
                Err(e) => return invalid(todos, templates, context, filter, None, &e, draft),
            }
        }
        ["todos", "clear-completed"] => {
            todos.clear_completed()?;
        }
        ["todos", id, "toggle"] => {
            let completed = parse_completed(required("completed")?)
                .map_err(|e| Failure::Page(PageError::bad_request(e)))?;
            todos.set_completed(id, completed)?;
        }
        ["todos", id, "title"] => {
            let draft = required("title")?;
            match validate_title(draft) {
                Ok(title) => todos.set_title(id, &title)?,
                // An edit of a todo that does not exist is a 404 whatever the title says.
                Err(_) if !todos.exists(id)? => return Err(Failure::Page(PageError::no_todo())),
                Err(e) => return invalid(todos, templates, context, filter, Some(id), &e, draft),
            }
        }
        ["todos", id, "delete"] => todos.delete(id)?,
        _ => {
            return Err(Failure::Page(PageError::not_found(
                "There is no page at this address.",
            )));
        }
    }
    Ok(Answer::Redirect {
        location: target.to_owned(),
    })
}

fn method_not_allowed() -> Failure {
    Failure::Page(PageError {
        status: 405,
        title: "Method not allowed",
        message: "This address does not take that method.".to_owned(),
    })
}

fn read_form(request: Request<'_>) -> Result<BTreeMap<String, String>, Failure> {
    let urlencoded = request
        .content_type
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !urlencoded {
        return Err(Failure::Page(PageError {
            status: 415,
            title: "Unsupported form encoding",
            message: "Forms must be sent as application/x-www-form-urlencoded.".to_owned(),
        }));
    }
    if request.body.len() > MAX_FORM_BYTES {
        return Err(Failure::Page(PageError {
            status: 413,
            title: "Too large",
            message: format!("The form is larger than {MAX_FORM_BYTES} bytes."),
        }));
    }
    fields(request.body)
}

/// The fields of a urlencoded form or query; a field given twice is malformed.
fn fields(encoded: &[u8]) -> Result<BTreeMap<String, String>, Failure> {
    let mut out = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(encoded) {
        if out.insert(name.to_string(), value.into_owned()).is_some() {
            return Err(Failure::Page(PageError::bad_request(format!(
                "The form could not be read: duplicate field `{name}`."
            ))));
        }
    }
    Ok(out)
}

fn index(
    todos: &impl Todos,
    templates: &Templates,
    context: &Context<'_>,
    filter: Filter,
    form_error: Option<FormError>,
) -> Result<String, Failure> {
    let mut page = IndexPage::new(&todos.list()?, filter, context.node_name);
    page.mode = context.mode;
    page.pending_changes = context.pending_changes;
    if let Some(error) = form_error {
        page = page.with_form_error(error);
    }
    Ok(templates.render("index.html", &page)?)
}

/// The page again, 422, with the validation message next to the form that failed.
fn invalid(
    todos: &impl Todos,
    templates: &Templates,
    context: &Context<'_>,
    filter: Filter,
    todo_id: Option<&str>,
    error: &TitleError,
    draft: &str,
) -> Result<Answer, Failure> {
    let error = FormError {
        message: error.to_string(),
        todo_id: todo_id.map(str::to_owned),
        draft: draft.to_owned(),
    };
    Ok(Answer::Page {
        status: 422,
        html: index(todos, templates, context, filter, Some(error))?,
    })
}

/// Why a form post from a browser is refused as cross-site (403), from its `Sec-Fetch-Site`,
/// `Origin` and `Host` headers; `None` when it is not. Requests without those headers (curl,
/// scripts) carry no ambient browser credentials and pass. Only form posts are checked: the
/// JSON API (`/api/`) is open to other origins on purpose.
pub fn cross_site_refusal(
    method: &str,
    path: &str,
    sec_fetch_site: Option<&str>,
    origin: Option<&str>,
    host: Option<&str>,
) -> Option<String> {
    if matches!(method, "GET" | "HEAD") || path.starts_with("/api/") {
        return None;
    }
    if let Some(site) = sec_fetch_site
        && !matches!(site, "same-origin" | "none")
    {
        return Some(format!("Sec-Fetch-Site is {site:?}"));
    }
    if let Some(origin) = origin {
        let host = host.unwrap_or("");
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        if origin_host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
            return Some(format!("Origin {origin:?} is not this host ({host:?})"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The simplest store: a vector.
    #[derive(Default)]
    struct Memory(Vec<Todo>);

    impl Todos for Memory {
        fn list(&self) -> Result<Vec<Todo>, StoreError> {
            Ok(self.0.clone())
        }
        fn exists(&self, id: &str) -> Result<bool, StoreError> {
            Ok(self.0.iter().any(|t| t.id == id))
        }
        fn add(&mut self, todo: Todo) -> Result<(), StoreError> {
            if !self.exists(&todo.id)? {
                self.0.push(todo);
            }
            Ok(())
        }
        fn set_title(&mut self, id: &str, title: &str) -> Result<(), StoreError> {
            let t = self.0.iter_mut().find(|t| t.id == id);
            t.ok_or(StoreError::NotFound)?.title = title.to_owned();
            Ok(())
        }
        fn set_completed(&mut self, id: &str, completed: bool) -> Result<(), StoreError> {
            let t = self.0.iter_mut().find(|t| t.id == id);
            t.ok_or(StoreError::NotFound)?.completed = completed;
            Ok(())
        }
        fn delete(&mut self, id: &str) -> Result<(), StoreError> {
            let before = self.0.len();
            self.0.retain(|t| t.id != id);
            if self.0.len() == before {
                return Err(StoreError::NotFound);
            }
            Ok(())
        }
        fn clear_completed(&mut self) -> Result<usize, StoreError> {
            let before = self.0.len();
            self.0.retain(|t| !t.completed);
            Ok(before - self.0.len())
        }
    }

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
    const ID: &str = "0192f6a0-7c1e-7aaa-8bbb-00000000000a";

    fn call(store: &mut Memory, method: &str, path: &str, body: &str) -> Answer {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let request = Request {
            method,
            path,
            query,
            content_type: FORM,
            body: body.as_bytes(),
        };
        let context = Context {
            node_name: "test",
            mode: "server",
            pending_changes: 0,
            now_ms: 1,
            new_id: ID,
        };
        handle(request, store, &Templates::embedded(), &context).expect("answers")
    }

    #[test]
    fn forms_apply_and_redirect_back() {
        let mut s = Memory::default();
        let a = call(
            &mut s,
            "POST",
            "/todos",
            "title=+milk+&return_to=%2F%3Ffilter%3Dactive",
        );
        assert_eq!(
            a,
            Answer::Redirect {
                location: "/?filter=active".into()
            }
        );
        assert_eq!(s.0[0].title, "milk");
        assert_eq!(s.0[0].id, ID);
        call(
            &mut s,
            "POST",
            &format!("/todos/{ID}/toggle"),
            "completed=1",
        );
        assert!(s.0[0].completed);
        call(&mut s, "POST", &format!("/todos/{ID}/title"), "title=eggs");
        assert_eq!(s.0[0].title, "eggs");
        let page = call(&mut s, "GET", "/?filter=completed", "");
        assert!(matches!(&page, Answer::Page { status: 200, html } if html.contains("eggs")));
        call(&mut s, "POST", "/todos/clear-completed", "");
        assert!(s.0.is_empty());
    }

    #[test]
    fn bad_input_gets_the_node_answers() {
        let mut s = Memory::default();
        call(&mut s, "POST", "/todos", "title=keep");
        let status = |s: &mut Memory, m: &str, p: &str, b: &str| call(s, m, p, b).status();
        assert_eq!(status(&mut s, "POST", "/todos", "title=+++"), 422);
        assert_eq!(status(&mut s, "POST", "/todos", "titel=typo"), 400);
        assert_eq!(status(&mut s, "POST", "/todos", "title=a&title=b"), 400);
        assert_eq!(status(&mut s, "POST", "/todos", "title=x&id=..%2F"), 400);
        assert_eq!(
            status(&mut s, "POST", "/todos/nope/toggle", "completed=1"),
            404
        );
        assert_eq!(
            status(
                &mut s,
                "POST",
                &format!("/todos/{ID}/toggle"),
                "completed=maybe"
            ),
            400
        );
        assert_eq!(status(&mut s, "POST", "/todos/nope/title", "title="), 404);
        assert_eq!(
            status(&mut s, "POST", &format!("/todos/{ID}/title"), "title="),
            422
        );
        assert_eq!(status(&mut s, "POST", "/todos/nope/delete", ""), 404);
        assert_eq!(status(&mut s, "GET", "/?filter=bogus", ""), 400);
        assert_eq!(status(&mut s, "GET", "/no/such/page", ""), 404);
        assert_eq!(status(&mut s, "GET", "/todos", ""), 405);
        let huge = format!("title={}", "x".repeat(MAX_FORM_BYTES));
        assert_eq!(status(&mut s, "POST", "/todos", &huge), 413);
        let json = Request {
            method: "POST",
            path: "/todos",
            query: "",
            content_type: Some("application/json"),
            body: b"{}",
        };
        let context = Context {
            node_name: "n",
            mode: "server",
            pending_changes: 0,
            now_ms: 0,
            new_id: ID,
        };
        let answer = handle(json, &mut s, &Templates::embedded(), &context).expect("answers");
        assert_eq!(answer.status(), 415);
        assert_eq!(s.0.len(), 1, "nothing changed");
        assert_eq!(s.0[0].title, "keep");
    }

    #[test]
    fn cross_site_posts_are_refused() {
        let check = |site, origin| cross_site_refusal("POST", "/todos", site, origin, Some("h:1"));
        assert!(check(Some("cross-site"), None).is_some());
        assert!(check(None, Some("https://evil.example")).is_some());
        assert!(check(Some("same-origin"), Some("http://h:1")).is_none());
        assert!(check(None, None).is_none());
        assert!(
            cross_site_refusal("POST", "/api/changes", Some("cross-site"), None, None).is_none()
        );
    }
}
