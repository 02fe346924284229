//! Cross-site form posts are refused (403) before any handler runs, by the rule every replica
//! applies (`app::site::cross_site_refusal`): a POST whose `Sec-Fetch-Site` or `Origin` says it
//! came from another site. Requests without those headers (curl, scripts) carry no ambient
//! browser credentials, so they are let through; the JSON API (`/api/`) is exempt, open to other
//! origins by CORS on purpose.

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppError;

pub async fn same_origin_posts(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let header = |name| headers.get(name).map(|v| v.to_str().unwrap_or(""));
    if let Some(reason) = app::site::cross_site_refusal(
        request.method().as_str(),
        request.uri().path(),
        header(header::HeaderName::from_static("sec-fetch-site")),
        header(header::ORIGIN),
        header(header::HOST),
    ) {
        tracing::warn!(%reason, "refused cross-site request");
        return AppError::Forbidden(format!("Refused a cross-site request: {reason}."))
            .into_response();
    }
    next.run(request).await
}
