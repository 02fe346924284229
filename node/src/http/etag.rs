//! Unchanged pages are free: `GET /` is tagged with what its content depends on — the
//! replica's db_version as of its last commit (kept in memory by the store), the query, the
//! node's name and this build's templates and assets — and a request whose `If-None-Match`
//! holds that tag is answered 304 before SQLite or the templates are touched.
//!
//! The version is read before the page is rendered, so a write that commits in between makes
//! the page newer than its tag: the next request then carries a tag that no longer matches and
//! gets the page again. A page is never older than its tag, so a 304 never hides a change.
//! The tag is weak (`W/`): the same page may go out compressed in several ways.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::AppState;

pub async fn tag_pages(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() != Method::GET {
        return next.run(request).await;
    }
    let tag = page_tag(
        state.store.committed_version(),
        request.uri().path_and_query().map_or("", |p| p.as_str()),
        &state.node_name,
    );
    let Ok(tag_value) = HeaderValue::from_str(&tag) else {
        return next.run(request).await;
    };
    if request
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .any(|v| matches_tag(v, &tag))
    {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response.headers_mut().insert(header::ETAG, tag_value);
        return response;
    }
    let mut response = next.run(request).await;
    if response.status() == StatusCode::OK {
        let headers = response.headers_mut();
        headers.insert(header::ETAG, tag_value);
        // Revalidate every time: the tag makes that cheap, and a change is seen at once.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}

fn page_tag(db_version: u64, path_and_query: &str, node_name: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(super::build_version().as_bytes());
    hasher.update([0]);
    hasher.update(node_name.as_bytes());
    hasher.update([0]);
    hasher.update(path_and_query.as_bytes());
    format!(
        "W/\"{db_version}-{}\"",
        hex::encode(&hasher.finalize()[..8])
    )
}

/// `If-None-Match` is `*` or a list of tags; compared weakly (with or without `W/`).
fn matches_tag(header: &HeaderValue, tag: &str) -> bool {
    let Ok(header) = header.to_str() else {
        return false;
    };
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let ours = opaque(tag);
    header
        .split(',')
        .any(|candidate| candidate.trim() == "*" || opaque(candidate) == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_differ_by_version_query_and_name() {
        let base = page_tag(7, "/", "a");
        assert!(base.starts_with("W/\"7-"));
        assert_ne!(base, page_tag(8, "/", "a"));
        assert_ne!(base, page_tag(7, "/?filter=active", "a"));
        assert_ne!(base, page_tag(7, "/", "b"));
        assert_eq!(base, page_tag(7, "/", "a"));
    }

    #[test]
    fn if_none_match_is_compared_weakly_and_as_a_list() {
        let tag = page_tag(3, "/", "a");
        let strong = tag.trim_start_matches("W/").to_owned();
        for header in [
            tag.clone(),
            strong.clone(),
            format!("\"other\", {tag}"),
            "*".to_owned(),
        ] {
            assert!(
                matches_tag(&HeaderValue::from_str(&header).expect("value"), &tag),
                "{header}"
            );
        }
        for header in ["\"other\"", "W/\"3-\"", ""] {
            assert!(
                !matches_tag(&HeaderValue::from_str(header).expect("value"), &tag),
                "{header}"
            );
        }
    }
}
