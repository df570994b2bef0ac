//! The dashboard's static files, compiled into meshd: one page and its script and
//! style, no CDN. The browser is told to load nothing from anywhere else
//! (`Content-Security-Policy`), and the page is read-only: its data comes from the
//! `GET` routes under `/ui/api/`.
//!
//! Must not: serve anything but these files, or anything that changes the mesh.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/style.css");

/// Nothing from another origin: scripts, styles, data and images come from meshd.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn serve(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /ui`: the page.
pub async fn page() -> Response {
    serve(INDEX, "text/html; charset=utf-8")
}

/// `GET /ui/FILE`: the script, the style, or the page again (`/ui/index.html`).
pub async fn file(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => serve(SCRIPT, "text/javascript; charset=utf-8"),
        "style.css" => serve(STYLE, "text/css; charset=utf-8"),
        "index.html" => serve(INDEX, "text/html; charset=utf-8"),
        _ => (StatusCode::NOT_FOUND, "no such file in the dashboard\n").into_response(),
    }
}
