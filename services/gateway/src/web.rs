//! The web client: a few static files (`services/gateway/web/`) embedded in the binary
//! and served at `/`, so running the project needs no Node.js and no file on disk.
//!
//! `/` is the page; its scripts, styles and icon live under `/assets/<version>/`, where
//! the version is a hash of the files, so a browser may keep them for a year and still
//! gets new ones with a new binary. The page itself is always revalidated (ETag). Every
//! answer carries a Content-Security-Policy that allows scripts, styles and connections
//! from this origin only: no inline script, no third-party code.
//!
//! These routes are not part of the API and not in its OpenAPI document.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// One embedded file under `/assets/<version>/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/api.js"),
    },
    Asset {
        name: "events.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/events.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../web/style.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../web/icon.svg"),
    },
];

/// Where `index.html` names the asset directory; replaced by `/assets/<version>`.
const ASSET_BASE_PLACEHOLDER: &str = "/assets/VERSION";

/// Scripts, styles, fetches and the event stream from this origin only. Avatars are
/// any http(s) URL a user chose, so images may come from anywhere (never scripts).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' https: http: data:; connect-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A hash of every embedded file: changes whenever any of them does.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut hash = Sha256::new();
    hash.update(include_bytes!("../web/index.html"));
    for asset in ASSETS {
        hash.update(asset.name.as_bytes());
        hash.update(asset.body);
    }
    hex::encode(&hash.finalize()[..6])
});

static INDEX: LazyLock<String> = LazyLock::new(|| {
    include_str!("../web/index.html")
        .replace(ASSET_BASE_PLACEHOLDER, &format!("/assets/{}", *VERSION))
});

/// The version the page refers its assets by (`/assets/<version>/app.js`).
pub fn version() -> &'static str {
    &VERSION
}

/// The web client's routes, to merge into the application.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{version}/{file}", get(asset))
}

async fn index(request_headers: HeaderMap) -> Response {
    let etag = format!("\"{}\"", *VERSION);
    let fresh = request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut headers = security_headers();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    (headers, INDEX.as_str()).into_response()
}

async fn asset(Path((version, file)): Path<(String, String)>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == file) else {
        return ApiError::not_found("no such file").into_response();
    };
    let mut headers = security_headers();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // A page of another version (an old tab during a rollout) still gets a working file,
    // but only files of this exact version may be kept for good.
    let cache = if version == *VERSION {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    (headers, asset.body).into_response()
}

fn security_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_refers_to_every_script_and_style_by_the_current_version() {
        assert!(!INDEX.contains(ASSET_BASE_PLACEHOLDER), "placeholder left");
        for file in ["app.js", "style.css", "icon.svg"] {
            let path = format!("/assets/{}/{file}", version());
            assert!(INDEX.contains(&path), "index.html does not load {path}");
        }
        // ES module imports are relative, so they stay inside the versioned directory.
        let app = std::str::from_utf8(ASSETS[0].body).unwrap();
        for import in ["./api.js", "./events.js"] {
            assert!(app.contains(import), "app.js does not import {import}");
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style_the_policy_would_block() {
        let page = include_str!("../web/index.html");
        assert!(!page.contains("<script>"), "inline script");
        assert!(!page.contains("style=\""), "inline style");
        let handler = page.split(" on").skip(1).find(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(handler.is_none(), "inline event handler: on{handler:?}");
        assert!(!page.contains("javascript:"), "javascript: URL");
    }
}
