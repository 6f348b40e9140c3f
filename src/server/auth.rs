//! Who may talk to the server: the bearer token (header or `?token=`), compared in constant
//! time, and the browser `Origin` check (the server's own origin, else the allowlist). Applied
//! to every route but `/healthz` and the dashboard's static files (`/ui`). Repeated failures
//! from one address are throttled (`throttle`).

use super::ServerState;
use super::throttle::{self, Verdict};
use anyhow::{Result, bail};
use axum::Json;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Without a token, only loopback addresses may be served.
pub fn check_exposure(addr: SocketAddr, has_token: bool) -> Result<()> {
    if !has_token && !addr.ip().is_loopback() {
        bail!(
            "refusing to listen on {addr} without an auth token: set server.token or \
             server.token_file in the config, or CCX_TOKEN, or listen on a loopback address"
        );
    }
    Ok(())
}

/// The axum middleware: the Origin check (a browser page from another origin is refused with
/// 403, whatever route it targets: `/ws`, `/mcp`, …; the server's own pages, the dashboard, are
/// not another origin), then the token (401 when missing or wrong).
pub(super) async fn guard(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let allowed = origin.to_str().is_ok_and(|o| {
            is_own_origin(o, host, state.config.has_auth())
                || state.config.allowed_origins.iter().any(|a| a == o)
        });
        if !allowed {
            refused(
                &state,
                "origin",
                peer_of(&request),
                &request,
                "origin not allowed",
            );
            return refuse(StatusCode::FORBIDDEN, "origin not allowed");
        }
    }
    let mut request = request;
    let peer = peer_of(&request);
    let open_scrape = state.config.metrics.open_on_loopback
        && request.uri().path() == "/metrics"
        && peer.is_some_and(|p| p.ip().is_loopback());
    if state.config.has_auth() && !open_scrape {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned)
            .or_else(|| {
                Query::<HashMap<String, String>>::try_from_uri(request.uri())
                    .ok()
                    .and_then(|Query(mut q)| q.remove("token"))
            });
        let Some(presented) = presented else {
            return failed(&state, peer, &request, "missing token");
        };
        // Every token is compared, so the time taken does not say which one matched.
        let mut label = None;
        for (l, expected) in state.config.credentials() {
            if token_matches(presented.trim(), expected) && label.is_none() {
                label = Some(l.to_string());
            }
        }
        match label {
            Some(l) => {
                request.extensions_mut().insert(TokenLabel(l));
            }
            None => return failed(&state, peer, &request, "invalid token"),
        }
    }
    next.run(request).await
}

/// Answers a missing or wrong token: 401 (counted and audited), or 429 with `Retry-After`
/// once the peer has failed too often (see `throttle`). Nothing here logs the token.
fn failed(
    state: &ServerState,
    peer: Option<SocketAddr>,
    request: &Request,
    why: &'static str,
) -> Response {
    let verdict = match peer {
        Some(p) => state
            .auth_throttle
            .failed(p.ip(), std::time::Instant::now()),
        None => Verdict::Refuse,
    };
    let retry_after = match verdict {
        Verdict::Refuse => {
            refused(state, "auth", peer, request, why);
            return refuse(StatusCode::UNAUTHORIZED, why);
        }
        Verdict::StartThrottling(after) => {
            tracing::warn!(
                peer = ?peer.map(|p| p.ip()),
                failures = throttle::FAILURES_ALLOWED,
                window_s = throttle::WINDOW.as_secs(),
                "too many failed authentications from this address: answering 429 until its window ends"
            );
            refused(
                state,
                "auth",
                peer,
                request,
                "throttled after repeated bad tokens",
            );
            after
        }
        Verdict::Throttled(after) => {
            state.exec.metrics().refused("auth");
            after
        }
    };
    let mut response = refuse(
        StatusCode::TOO_MANY_REQUESTS,
        "too many failed authentications from this address; try again later",
    );
    // Whole seconds, rounded up (RFC 9110 §10.2.3).
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(secs.max(1)));
    response
}

fn peer_of(request: &Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| *a)
}

/// Counts a refused request and writes it to the audit log (rate-limited per peer there).
fn refused(
    state: &ServerState,
    reason: &'static str,
    peer: Option<SocketAddr>,
    request: &Request,
    detail: &str,
) {
    let peer = peer.map(|p| p.to_string());
    let body = json!({
        "detail": detail,
        "method": request.method().as_str(),
        "path": request.uri().path(),
    });
    state.exec.refused(reason, peer.as_deref(), body);
}

/// Whether `origin` is the server's own as the browser reached it: `http://` or `https://`
/// followed by the request's `Host` (the dashboard at `/ui` talking to `/ws` and `/hooks`).
/// Without a token, only for a `Host` that is an IP address or `localhost`: a name could be
/// an attacker's, pointed at 127.0.0.1 (DNS rebinding), and then nothing else would stop its
/// page. With a token such a page still has none to present.
fn is_own_origin(origin: &str, host: Option<&str>, has_auth: bool) -> bool {
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return false;
    };
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    if !rest.is_some_and(|r| r.eq_ignore_ascii_case(host)) {
        return false;
    }
    has_auth || {
        // `[::1]:8003`, `127.0.0.1:8003`, `localhost:8003`: the name without the port.
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(n, _)| n),
        };
        name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
    }
}

/// The label of the token a request presented (`default` for `server.token`), set by
/// [`guard`] for the handlers behind it.
#[derive(Debug, Clone)]
pub struct TokenLabel(pub String);

/// Compares without an early exit (`subtle`), so timing says nothing about where a guess went
/// wrong. Only the length may leak, which a fixed-format token does not hide anyway.
fn token_matches(presented: &str, expected: &str) -> bool {
    presented.as_bytes().ct_eq(expected.as_bytes()).into()
}

pub(super) fn refuse(status: StatusCode, why: &str) -> Response {
    (status, Json(json!({"error": why}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::{is_own_origin, token_matches};

    #[test]
    fn the_servers_own_origin_passes() {
        let own = |o, h: Option<&str>, auth| is_own_origin(o, h, auth);
        assert!(own("http://127.0.0.1:8003", Some("127.0.0.1:8003"), false));
        assert!(own("https://ccx.example", Some("ccx.example"), true));
        assert!(own("http://[::1]:8003", Some("[::1]:8003"), false));
        assert!(own("http://localhost:8003", Some("LOCALHOST:8003"), false));
        // Another origin, another port or scheme, or no Host at all.
        assert!(!own("http://evil.example", Some("127.0.0.1:8003"), true));
        assert!(!own("http://127.0.0.1:9000", Some("127.0.0.1:8003"), true));
        assert!(!own("ftp://127.0.0.1:8003", Some("127.0.0.1:8003"), true));
        assert!(!own("http://127.0.0.1:8003", None, true));
        assert!(!own("http://", Some(""), true));
        // A name that could be rebound to 127.0.0.1, on a server without a token.
        assert!(!own(
            "http://rebound.example:8003",
            Some("rebound.example:8003"),
            false
        ));
        assert!(own(
            "http://rebound.example:8003",
            Some("rebound.example:8003"),
            true
        ));
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches("secret", "secret"));
        assert!(!token_matches("secret", "secreT"));
        assert!(!token_matches("secret", "secret2"));
        assert!(!token_matches("", "x"));
    }
}
