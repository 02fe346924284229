//! Cross-site form posts are refused. Browsers send `Sec-Fetch-Site` (modern ones) and `Origin`
//! on every POST; a post whose headers say it came from another site is answered 403 before any
//! handler runs. Requests without those headers (curl, scripts) carry no ambient browser
//! credentials, so they are let through. The JSON API (`/api/`) is exempt: it takes JSON, not
//! forms, uses no ambient credentials, and is open to other origins by CORS on purpose.

use axum::extract::Request;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppError;

pub async fn same_origin_posts(request: Request, next: Next) -> Response {
    let unsafe_method = request.method() != Method::GET && request.method() != Method::HEAD;
    let api = request.uri().path().starts_with("/api/");
    if unsafe_method
        && !api
        && let Err(reason) = check(&request)
    {
        tracing::warn!(%reason, "refused cross-site request");
        return AppError::Forbidden(format!("Refused a cross-site request: {reason}."))
            .into_response();
    }
    next.run(request).await
}

fn check(request: &Request) -> Result<(), String> {
    let headers = request.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("");
        if !matches!(site, "same-origin" | "none") {
            return Err(format!("Sec-Fetch-Site is {site:?}"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        if origin_host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
            return Err(format!("Origin {origin:?} is not this host ({host:?})"));
        }
    }
    Ok(())
}
