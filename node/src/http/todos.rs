//! The todo list page and its form actions, answered by `app::site::handle` — the one code path
//! the browser peer and the edge worker answer them with too — over the node's cr-sqlite store.
//! Each action answers 303 to the page it came from (its `return_to` field), so the browser
//! shows the updated list after any post, with or without JavaScript; a title that fails
//! validation gets the page again, 422, with the message and what was typed.

use app::Todo;
use app::site::{self, Answer, Context, StoreError, Todos};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use super::{AppError, AppState};
use crate::db::{self, Store};

/// `GET /`, every form action and every unknown address (404).
pub async fn page(State(state): State<AppState>, request: Request) -> Result<Response, AppError> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match Bytes::from_request(request, &state).await {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(AppError::PayloadTooLarge(format!(
                "The form is larger than {} bytes.",
                site::MAX_FORM_BYTES
            )));
        }
        Err(rejection) => return Err(AppError::BadRequest(rejection.body_text())),
    };
    let templates = state.templates.clone();
    let node_name = state.node_name.clone();
    let answer = state
        .with_store(move |store| {
            let new_id = uuid::Uuid::now_v7().to_string();
            let context = Context {
                node_name: &node_name,
                mode: "server",
                pending_changes: 0,
                now_ms: now_millis(),
                new_id: &new_id,
            };
            let request = site::Request {
                method: &method,
                path: &path,
                query: &query,
                content_type: content_type.as_deref(),
                body: &body,
            };
            Ok(site::handle(
                request,
                &mut NodeTodos(store),
                &templates,
                &context,
            ))
        })
        .await?
        .map_err(|e| AppError::Internal(e.into()))?;
    Ok(respond(answer))
}

/// The site's answer as an HTTP response: 303 with `Location`, or a page.
pub fn respond(answer: Answer) -> Response {
    match answer {
        Answer::Redirect { location } => {
            let mut response = StatusCode::SEE_OTHER.into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        Answer::Page { status, html } => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Html(html),
        )
            .into_response(),
    }
}

/// The node's store as the site's todos.
struct NodeTodos<'a>(&'a Store);

fn store_error(e: db::StoreError) -> StoreError {
    match e {
        db::StoreError::NotFound(_) => StoreError::NotFound,
        db::StoreError::Refused(reason) => StoreError::Refused(reason.to_string()),
        other => StoreError::Failed(Box::new(other)),
    }
}

impl Todos for NodeTodos<'_> {
    fn list(&self) -> Result<Vec<Todo>, StoreError> {
        self.0.list().map_err(store_error)
    }

    fn exists(&self, id: &str) -> Result<bool, StoreError> {
        match self.0.get(id) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(store_error(e)),
        }
    }

    fn add(&mut self, todo: Todo) -> Result<(), StoreError> {
        let added = self
            .0
            .add(&todo.title, todo.created_at, Some(todo.id))
            .map_err(store_error)?;
        tracing::info!(id = %added.id, "todo added");
        Ok(())
    }

    fn set_title(&mut self, id: &str, title: &str) -> Result<(), StoreError> {
        self.0.set_title(id, title).map_err(store_error)
    }

    fn set_completed(&mut self, id: &str, completed: bool) -> Result<(), StoreError> {
        self.0.set_completed(id, completed).map_err(store_error)
    }

    fn delete(&mut self, id: &str) -> Result<(), StoreError> {
        self.0.delete(id).map_err(store_error)
    }

    fn clear_completed(&mut self) -> Result<usize, StoreError> {
        let removed = self.0.clear_completed().map_err(store_error)?;
        tracing::info!(removed, "cleared completed todos");
        Ok(removed)
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
