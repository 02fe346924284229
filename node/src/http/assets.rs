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

/// Brotli and gzip twins of the text assets and the wasm bundle, made by node/build.rs:
/// `<name>.br`, `<name>.gz`, named as [`serve`] names the asset.
#[derive(Embed)]
#[folder = "$OUT_DIR/compressed/"]
struct Compressed;

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
    let sha256 = file.metadata.sha256_hash();
    let twin = preferred_encodings(&headers).find_map(|encoding| {
        Compressed::get(&format!("{path}.{}", encoding.suffix)).map(|twin| (encoding, twin))
    });
    let mut response = match twin {
        // Each representation has its own ETag: a cache must not answer a gzip request with
        // the brotli bytes it revalidated.
        Some((encoding, twin)) => {
            let mut response =
                respond_as(&content_type, twin.data, &sha256, encoding.suffix, &headers);
            response.headers_mut().insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(encoding.name),
            );
            response
        }
        None => respond(&content_type, file.data, &sha256, &headers),
    };
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    Ok(response)
}

struct Encoding {
    name: &'static str,
    suffix: &'static str,
}

/// Brotli first (smaller), then gzip: those of them the request's `Accept-Encoding` allows,
/// that is, names it (or `*`) with a q-value above zero.
fn preferred_encodings(headers: &HeaderMap) -> impl Iterator<Item = Encoding> + '_ {
    let accepted = |name: &str| {
        headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|item| {
                let mut parts = item.split(';');
                let coding = parts.next()?.trim();
                let q = parts
                    .filter_map(|p| p.trim().strip_prefix("q="))
                    .find_map(|q| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                Some((coding.to_ascii_lowercase(), q))
            })
            // An explicit entry for the coding wins over `*`.
            .fold(None, |found: Option<(bool, f32)>, (coding, q)| {
                match (coding == name, coding == "*", found) {
                    (true, _, _) => Some((true, q)),
                    (false, true, None) => Some((false, q)),
                    _ => found,
                }
            })
            .is_some_and(|(_, q)| q > 0.0)
    };
    [
        Encoding {
            name: "br",
            suffix: "br",
        },
        Encoding {
            name: "gzip",
            suffix: "gz",
        },
    ]
    .into_iter()
    .filter(move |e| accepted(e.name))
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
    respond_as(content_type, data, sha256, "", headers)
}

/// `data` with an ETag made of the asset's digest and the `variant` it is (an encoding).
fn respond_as(
    content_type: &str,
    data: Cow<'static, [u8]>,
    sha256: &[u8],
    variant: &str,
    headers: &HeaderMap,
) -> Response {
    let etag = if variant.is_empty() {
        format!("\"{}\"", hex::encode(&sha256[..16]))
    } else {
        format!("\"{}-{variant}\"", hex::encode(&sha256[..16]))
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chosen(accept_encoding: Option<&str>) -> Vec<&'static str> {
        let mut headers = HeaderMap::new();
        if let Some(v) = accept_encoding {
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(v).expect("a header value"),
            );
        }
        preferred_encodings(&headers).map(|e| e.name).collect()
    }

    #[test]
    fn encodings_follow_accept_encoding() {
        assert_eq!(chosen(None), Vec::<&str>::new());
        assert_eq!(chosen(Some("identity")), Vec::<&str>::new());
        assert_eq!(chosen(Some("gzip, deflate, br, zstd")), ["br", "gzip"]);
        assert_eq!(chosen(Some("gzip")), ["gzip"]);
        assert_eq!(chosen(Some("BR;q=0.5")), ["br"]);
        assert_eq!(chosen(Some("br;q=0, gzip")), ["gzip"]);
        assert_eq!(chosen(Some("*")), ["br", "gzip"]);
        assert_eq!(chosen(Some("*, br;q=0")), ["gzip"]);
        assert_eq!(chosen(Some("gzip;q=0, *;q=0.1")), ["br"]);
    }
}
