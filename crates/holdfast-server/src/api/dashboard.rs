//! `/dashboard`: the live page, served from the binary (no CDN, no build step). It signs in
//! with the operator token and draws `GET /v1/events`; the page itself is public, since it
//! holds no data. Scripts and styles come only from this server (a strict
//! Content-Security-Policy), so nothing on the page runs what a sale's name might contain.

use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::routes::Routes;

const PAGE: &str = include_str!("../dashboard/index.html");
const SCRIPT: &str = include_str!("../dashboard/dashboard.js");
const STYLE: &str = include_str!("../dashboard/dashboard.css");
const ICON: &str = include_str!("../dashboard/favicon.svg");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
    form-action 'none'";

/// The page and what it loads: path, content type, body (the OpenAPI document describes them
/// from this table).
pub const ASSETS: [(&str, &str, &str); 4] = [
    ("/dashboard", "text/html; charset=utf-8", PAGE),
    (
        "/dashboard/dashboard.js",
        "text/javascript; charset=utf-8",
        SCRIPT,
    ),
    ("/dashboard/dashboard.css", "text/css; charset=utf-8", STYLE),
    ("/dashboard/favicon.svg", "image/svg+xml", ICON),
];

pub fn routes() -> Routes {
    ASSETS
        .into_iter()
        .fold(Routes::default(), |routes, (path, content_type, body)| {
            let serve = get(move || async move { asset(content_type, body) });
            routes.add(path, &[Method::GET], serve)
        })
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    let headers: [(HeaderName, HeaderValue); 5] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body)
}
