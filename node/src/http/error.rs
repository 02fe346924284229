//! Errors as responses. Clients see a status and a plain message; the cause of a 500 is logged,
//! never sent.

use std::sync::OnceLock;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use crate::db::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => Self::NotFound("No todo has that id.".to_owned()),
            StoreError::Refused(reason) => {
                Self::Conflict(format!("Nothing was changed: {reason}."))
            }
            other => Self::Internal(other.into()),
        }
    }
}

impl From<app::RenderError> for AppError {
    fn from(e: app::RenderError) -> Self {
        Self::Internal(e.into())
    }
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn public_message(&self) -> String {
        match self {
            Self::Internal(_) => {
                "Something went wrong on the server. Nothing was changed; please try again."
                    .to_owned()
            }
            other => other.to_string(),
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "Not found",
            Self::BadRequest(_) => "Bad request",
            Self::Forbidden(_) => "Forbidden",
            Self::Conflict(_) => "Cannot change this todo",
            Self::PayloadTooLarge(_) => "Too large",
            Self::UnsupportedMediaType(_) => "Unsupported form encoding",
            Self::Internal(_) => "Server error",
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let Self::Internal(cause) = &self {
            tracing::error!(error = ?cause, "request failed");
        }
        let status = self.status();
        let page = app::ErrorPage {
            status: status.as_u16(),
            title: self.title().to_owned(),
            message: self.public_message(),
        };
        // The error page uses the embedded templates: if rendering itself is what failed,
        // a plain-text answer still goes out.
        static TEMPLATES: OnceLock<app::Templates> = OnceLock::new();
        match TEMPLATES
            .get_or_init(app::Templates::embedded)
            .render("error.html", &page)
        {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => (status, page.message).into_response(),
        }
    }
}

/// The same errors for the JSON API: `{"error": "..."}` with the same status.
#[derive(Debug)]
pub struct JsonError(pub AppError);

impl<E: Into<AppError>> From<E> for JsonError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for JsonError {
    fn into_response(self) -> Response {
        if let AppError::Internal(cause) = &self.0 {
            tracing::error!(error = ?cause, "api request failed");
        }
        let body = serde_json::json!({ "error": self.0.public_message() });
        (self.0.status(), Json(body)).into_response()
    }
}
