//! Static assets: the CSS, the PWA's manifest, icon, app script and offline shell (from
//! templates/static), the PNG icons node/build.rs renders from that icon's SVG, the browser
//! peer's wasm bundle (built by ci/build-wasm.sh), and the service worker. Embedded in release builds (read from disk in debug builds). ETags let
//! browsers revalidate cheaply; `no-cache` makes them always revalidate, so a deploy is seen at
//! once. The service worker's cache is named after [`build_version`], a digest of every asset,
//! so a deploy that changes any of them installs a new worker that replaces the old cache.

use std::borrow::Cow;
use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::Embed;
use sha2::{Digest, Sha256};

use super::AppError;

#[derive(Embed)]
#[folder = "../templates/static/"]
#[exclude = "sw.js"]
struct Assets;

/// The browser peer; node/build.rs checks the bundle is there and names its folder.
#[derive(Embed)]
#[folder = "$WASM_BUNDLE_DIR"]
#[include = "*.js"]
#[include = "*.wasm"]
struct WasmBundle;

/// The PNG icons, rendered from icons/icon.svg by node/build.rs.
#[derive(Embed)]
#[folder = "$OUT_DIR/icons/"]
struct Icons;

/// The service worker's source; `__BUILD_VERSION__` is replaced with [`build_version`].
const SERVICE_WORKER: &str = include_str!("../../../templates/static/sw.js");

/// A digest of every embedded asset and the service worker's source.
pub fn build_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let mut hasher = Sha256::new();
        let files = Assets::iter()
            .filter_map(|p| Assets::get(&p).map(|f| (p, f)))
            .chain(WasmBundle::iter().filter_map(|p| WasmBundle::get(&p).map(|f| (p, f))))
            .chain(Icons::iter().filter_map(|p| Icons::get(&p).map(|f| (p, f))));
        for (path, file) in files {
            hasher.update(path.as_bytes());
            hasher.update(file.metadata.sha256_hash());
        }
        hasher.update(SERVICE_WORKER.as_bytes());
        hex::encode(&hasher.finalize()[..8])
    })
}

/// Writes every asset this node serves into `dir` as the node serves it: `dir/static/…` (the
/// PWA's files, the icons, `wasm/` the browser peer) and `dir/sw.js` (named after this build).
/// Returns how many files. The edge worker serves that folder, so a page from the edge is
/// the same app, with the same service worker cache, as a page from a node.
pub fn export_assets(dir: &std::path::Path) -> std::io::Result<usize> {
    let mut files: Vec<(String, Cow<'static, [u8]>)> = Vec::new();
    files.extend(Assets::iter().filter_map(|p| Assets::get(&p).map(|f| (p.into_owned(), f.data))));
    files.extend(
        WasmBundle::iter()
            .filter_map(|p| WasmBundle::get(&p).map(|f| (format!("wasm/{p}"), f.data))),
    );
    // After the source icons: the rendered PNGs win, as in `serve`.
    files.extend(
        Icons::iter().filter_map(|p| Icons::get(&p).map(|f| (format!("icons/{p}"), f.data))),
    );
    for (path, data) in &files {
        let target = dir.join("static").join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(target, data)?;
    }
    let worker = SERVICE_WORKER.replace("__BUILD_VERSION__", build_version());
    std::fs::write(dir.join("sw.js"), worker)?;
    Ok(files.len() + 1)
}

pub async fn serve(Path(path): Path<String>, headers: HeaderMap) -> Result<Response, AppError> {
    let file = if let Some(bundle_path) = path.strip_prefix("wasm/") {
        WasmBundle::get(bundle_path)
    } else if let Some(icon) = path.strip_prefix("icons/") {
        Icons::get(icon).or_else(|| Assets::get(&path))
    } else {
        Assets::get(&path)
    };
    let file =
        file.ok_or_else(|| AppError::NotFound("There is no file at this address.".into()))?;
    let content_type = with_charset(file.metadata.mimetype());
    Ok(respond(
        &content_type,
        file.data,
        &file.metadata.sha256_hash(),
        &headers,
    ))
}

/// `GET /sw.js`: at the root, so its scope is the whole app.
pub async fn service_worker(headers: HeaderMap) -> Response {
    let body = SERVICE_WORKER.replace("__BUILD_VERSION__", build_version());
    let hash = Sha256::digest(body.as_bytes());
    respond(
        "text/javascript; charset=utf-8",
        Cow::Owned(body.into_bytes()),
        &hash,
        &headers,
    )
}

fn respond(
    content_type: &str,
    data: Cow<'static, [u8]>,
    sha256: &[u8],
    headers: &HeaderMap,
) -> Response {
    let etag = format!("\"{}\"", hex::encode(&sha256[..16]));
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut response = data.into_owned().into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    response
}

/// The type rust-embed guessed from the file name (mime_guess), with the charset for text:
/// every text asset here is UTF-8, and without it a browser could guess another.
fn with_charset(mimetype: &str) -> Cow<'_, str> {
    if mimetype.starts_with("text/") {
        Cow::Owned(format!("{mimetype}; charset=utf-8"))
    } else {
        Cow::Borrowed(mimetype)
    }
}
