//! The dashboard at `/ui`: one HTML page, its script and its style sheet, compiled into the
//! binary (`include_str!`), no CDN and nothing fetched at run time.
//!
//! The three files hold no data, so they are served without the token, as `/healthz` is: a
//! page reloaded after it took `?token=` out of its address bar, or opened with a wrong token,
//! can then say so instead of being a bare 401. Everything the page shows comes through the
//! guarded routes with the token it keeps in `sessionStorage`: `list_jobs` and `attach` over
//! `/ws`, `GET /hooks` and `GET /health` (see `ui/app.js`). Its requests carry its own
//! `Origin`, which the Origin check lets through (see `auth`).
//!
//! Every response says `Cache-Control: no-store` (a page and a binary of another version never
//! mix) and carries a Content-Security-Policy that allows only the page's own files and
//! connections back to its own host: no inline script, no other origin, no framing.

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// `GET /ui`.
pub(super) async fn index(headers: HeaderMap) -> Response {
    asset(&headers, "text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/`: the page lives at `/ui` (its relative links assume it).
pub(super) async fn slash() -> Redirect {
    Redirect::permanent("/ui")
}

/// `GET /ui/app.js`.
pub(super) async fn script(headers: HeaderMap) -> Response {
    asset(&headers, "text/javascript; charset=utf-8", APP_JS)
}

/// `GET /ui/style.css`.
pub(super) async fn style(headers: HeaderMap) -> Response {
    asset(&headers, "text/css; charset=utf-8", STYLE_CSS)
}

fn asset(headers: &HeaderMap, content_type: &'static str, body: &'static str) -> Response {
    let csp = content_security_policy(headers.get(header::HOST).and_then(|h| h.to_str().ok()));
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The first request's address holds the token: never pass it on.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    response
}

/// The page's policy. `connect-src 'self'` covers its WebSocket in current browsers (CSP
/// level 3); the explicit `ws://HOST` and `wss://HOST` are for older ones, and only when the
/// `Host` header is a plain host and port.
fn content_security_policy(host: Option<&str>) -> String {
    let mut connect = String::from("'self'");
    if let Some(host) = host.filter(|h| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    }) {
        connect.push_str(&format!(" ws://{host} wss://{host}"));
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

#[cfg(test)]
mod tests {
    use super::content_security_policy;

    #[test]
    fn the_policy_names_only_a_plain_host() {
        let p = content_security_policy(Some("127.0.0.1:8003"));
        assert!(
            p.contains("connect-src 'self' ws://127.0.0.1:8003 wss://127.0.0.1:8003;"),
            "{p}"
        );
        assert!(p.contains("script-src 'self';"), "{p}");
        let p = content_security_policy(Some("x; script-src *"));
        assert!(p.contains("connect-src 'self';"), "{p}");
        assert!(!p.contains('*'), "{p}");
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = super::INDEX_HTML;
        assert!(!html.contains("<script>"), "inline script");
        assert!(!html.contains("<style"), "inline style");
        assert!(!html.contains(" style="), "inline style attribute");
        // ` onclick=`, ` onload=` …: an attribute name of `on` and letters.
        let handler = html.match_indices(" on").any(|(at, _)| {
            let name: String = html[at + 3..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase())
                .collect();
            !name.is_empty() && html[at + 3 + name.len()..].starts_with('=')
        });
        assert!(!handler, "inline event handler");
        assert!(html.contains("src=\"ui/app.js\""));
    }
}
