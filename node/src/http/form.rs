//! `HtmlForm<T>`: axum's `Form`, with rejections answered as the contract says:
//! malformed → 400, too large → 413, wrong content type → 415, each as an HTML error page.

use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::AppError;

pub struct HtmlForm<T>(pub T);

impl<S, T> FromRequest<S> for HtmlForm<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Form::<T>::from_request(req, state).await {
            Ok(axum::Form(value)) => Ok(Self(value)),
            Err(rejection) => Err(map_rejection(rejection)),
        }
    }
}

fn map_rejection(rejection: FormRejection) -> AppError {
    match rejection {
        FormRejection::InvalidFormContentType(_) => AppError::UnsupportedMediaType(
            "Forms must be sent as application/x-www-form-urlencoded.".to_owned(),
        ),
        FormRejection::FailedToDeserializeForm(e) => {
            AppError::BadRequest(format!("The form could not be read: {}", e.body_text()))
        }
        FormRejection::FailedToDeserializeFormBody(e) => {
            AppError::BadRequest(format!("The form could not be read: {}", e.body_text()))
        }
        FormRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            AppError::PayloadTooLarge(format!(
                "The form is larger than {} bytes.",
                super::MAX_BODY_BYTES
            ))
        }
        other => AppError::BadRequest(other.body_text()),
    }
}
