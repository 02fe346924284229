//! The todo list page and its form actions. Each action answers 303 to the page it came from
//! (its `return_to` field), so the browser shows the updated list after any post, with or
//! without JavaScript. A title that fails validation gets the page again, 422, with the message
//! and what was typed.

use app::{
    Filter, FormError, IndexPage, parse_client_id, parse_completed, return_target, validate_title,
};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::form::HtmlForm;
use super::{AppError, AppState};

#[derive(Debug, Deserialize)]
pub struct IndexQuery {
    #[serde(default)]
    filter: Option<String>,
}

pub async fn index(
    State(state): State<AppState>,
    Query(query): Query<IndexQuery>,
) -> Result<Html<String>, AppError> {
    let filter: Filter = query
        .filter
        .as_deref()
        .unwrap_or("")
        .parse()
        .map_err(|e: app::FilterParseError| AppError::BadRequest(e.to_string()))?;
    let page = page(&state, filter).await?;
    Ok(Html(state.templates.render("index.html", &page)?))
}

async fn page(state: &AppState, filter: Filter) -> Result<IndexPage, AppError> {
    let todos = state.with_store(|s| s.list()).await?;
    Ok(IndexPage::new(&todos, filter, &state.node_name))
}

#[derive(Debug, Deserialize)]
pub struct TitleForm {
    title: String,
    #[serde(default)]
    return_to: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct NewTodoForm {
    title: String,
    /// Set by the page's script (a fresh UUID per submission): a retried or offline-replayed
    /// post then creates the same todo once. Without it the node picks the id.
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    return_to: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    HtmlForm(form): HtmlForm<NewTodoForm>,
) -> Result<Response, AppError> {
    let (filter, target) = return_target(form.return_to.as_deref());
    let id = match form.id.as_deref().filter(|id| !id.is_empty()) {
        Some(id) => Some(parse_client_id(id).map_err(AppError::BadRequest)?),
        None => None,
    };
    let title = match validate_title(&form.title) {
        Ok(title) => title,
        Err(e) => return invalid(&state, filter, None, e, form.title).await,
    };
    let created_at = now_millis();
    let todo = state
        .with_store(move |s| s.add(&title, created_at, id))
        .await?;
    tracing::info!(id = %todo.id, "todo added");
    Ok(Redirect::to(target).into_response())
}

pub async fn retitle(
    State(state): State<AppState>,
    Path(id): Path<String>,
    HtmlForm(form): HtmlForm<TitleForm>,
) -> Result<Response, AppError> {
    let (filter, target) = return_target(form.return_to.as_deref());
    let title = match validate_title(&form.title) {
        Ok(title) => title,
        Err(e) => {
            // An edit of a todo that does not exist is a 404 whatever the title says.
            let lookup = id.clone();
            state.with_store(move |s| s.get(&lookup)).await?;
            return invalid(&state, filter, Some(id), e, form.title).await;
        }
    };
    state.with_store(move |s| s.set_title(&id, &title)).await?;
    Ok(Redirect::to(target).into_response())
}

#[derive(Debug, Deserialize)]
pub struct ToggleForm {
    /// The state to set ("1" done, "0" not done): a resubmitted form sets the same state again
    /// instead of flipping it back.
    completed: String,
    #[serde(default)]
    return_to: Option<String>,
}

pub async fn toggle(
    State(state): State<AppState>,
    Path(id): Path<String>,
    HtmlForm(form): HtmlForm<ToggleForm>,
) -> Result<Response, AppError> {
    let (_, target) = return_target(form.return_to.as_deref());
    let completed = parse_completed(&form.completed).map_err(AppError::BadRequest)?;
    state
        .with_store(move |s| s.set_completed(&id, completed))
        .await?;
    Ok(Redirect::to(target).into_response())
}

#[derive(Debug, Deserialize)]
pub struct ReturnForm {
    #[serde(default)]
    return_to: Option<String>,
}

pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    HtmlForm(form): HtmlForm<ReturnForm>,
) -> Result<Response, AppError> {
    let (_, target) = return_target(form.return_to.as_deref());
    state.with_store(move |s| s.delete(&id)).await?;
    Ok(Redirect::to(target).into_response())
}

pub async fn clear_completed(
    State(state): State<AppState>,
    HtmlForm(form): HtmlForm<ReturnForm>,
) -> Result<Response, AppError> {
    let (_, target) = return_target(form.return_to.as_deref());
    let removed = state.with_store(|s| s.clear_completed()).await?;
    tracing::info!(removed, "cleared completed todos");
    Ok(Redirect::to(target).into_response())
}

pub async fn not_found() -> AppError {
    AppError::NotFound("There is no page at this address.".to_owned())
}

/// The page again, 422, with the validation message next to the form that failed.
async fn invalid(
    state: &AppState,
    filter: Filter,
    todo_id: Option<String>,
    error: app::TitleError,
    draft: String,
) -> Result<Response, AppError> {
    let page = page(state, filter).await?.with_form_error(FormError {
        message: error.to_string(),
        todo_id,
        draft,
    });
    let html = state.templates.render("index.html", &page)?;
    Ok((StatusCode::UNPROCESSABLE_ENTITY, Html(html)).into_response())
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
