//! Who may talk to the server: the bearer token (header or `?token=`), compared in constant
//! time, and the browser `Origin` allowlist. Applied to every route but `/healthz`.

use super::ServerState;
use anyhow::{Result, bail};
use axum::Json;
use axum::extract::{Query, Request, State};
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
/// 403, whatever route it targets: `/ws`, `/mcp`, …), then the token (401 when missing or
/// wrong).
pub(super) async fn guard(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|o| state.config.allowed_origins.iter().any(|a| a == o));
        if !allowed {
            return refuse(StatusCode::FORBIDDEN, "origin not allowed");
        }
    }
    let mut request = request;
    if state.config.has_auth() {
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
            return refuse(StatusCode::UNAUTHORIZED, "missing token");
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
            None => return refuse(StatusCode::UNAUTHORIZED, "invalid token"),
        }
    }
    next.run(request).await
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
    use super::token_matches;

    #[test]
    fn token_comparison() {
        assert!(token_matches("secret", "secret"));
        assert!(!token_matches("secret", "secreT"));
        assert!(!token_matches("secret", "secret2"));
        assert!(!token_matches("", "x"));
    }
}
