//! The token a dashboard or metrics endpoint asks for. Bound to loopback,
//! one may go without (the Host guard keeps other sites' pages out); bound
//! beyond it, one is required, or the service does not start.
//!
//! A request carries the token as `Authorization: Bearer TOKEN`, as a
//! `troupe_token` cookie, or as `?token=TOKEN` in the URL, which also sets
//! the cookie (so the page's own requests, server-sent events included,
//! carry it). `/healthz` needs none: it says nothing about the runtime.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State as Extract};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::DashboardError;

/// The cookie the page's requests carry the token in.
const COOKIE: &str = "troupe_token";

/// What requests must prove.
#[derive(Clone, Debug, Default)]
pub(crate) struct Auth {
    token: Option<Arc<str>>,
}

impl Auth {
    pub(crate) fn new(token: Option<&str>) -> Result<Auth, DashboardError> {
        let token = token.filter(|t| !t.is_empty());
        if let Some(t) = token {
            let plain = t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !plain || t.len() < 16 {
                return Err(DashboardError::BadToken);
            }
        }
        Ok(Auth {
            token: token.map(Arc::from),
        })
    }

    /// Refuses to serve beyond loopback without a token.
    pub(crate) fn check(&self, addr: SocketAddr) -> Result<(), DashboardError> {
        if self.token.is_none() && !addr.ip().is_loopback() {
            return Err(DashboardError::NoToken { addr });
        }
        Ok(())
    }
}

/// Compares in constant time (for equal lengths): how much of a guess
/// matched does not show in the time an answer takes.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token a request carries, and whether it came in the URL.
fn offered(request: &Request) -> Option<(&str, bool)> {
    let headers = request.headers();
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some((bearer.trim(), false));
    }
    let from_cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='));
    if let Some(token) = from_cookie {
        return Some((token, false));
    }
    request
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("token="))
        .map(|token| (token, true))
}

/// The middleware: passes requests that carry the token (or any, with
/// none set, and `/healthz` always).
pub(crate) async fn require(
    Extract(auth): Extract<Auth>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = auth.token.clone() else {
        return next.run(request).await;
    };
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    match offered(&request) {
        Some((given, in_url)) if same(given.as_bytes(), token.as_bytes()) => {
            let mut response = next.run(request).await;
            if in_url {
                let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
                if let Ok(value) = HeaderValue::from_str(&cookie) {
                    response.headers_mut().append(header::SET_COOKIE, value);
                }
            }
            response
        }
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "this server needs its token: open /?token=TOKEN, or send Authorization: Bearer TOKEN\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_compared_whole_and_required_beyond_loopback() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        let open = Auth::new(None).unwrap();
        assert!(open.check("127.0.0.1:1".parse().unwrap()).is_ok());
        assert!(matches!(
            open.check("0.0.0.0:1".parse().unwrap()),
            Err(DashboardError::NoToken { .. })
        ));
        let guarded = Auth::new(Some("0123456789abcdef")).unwrap();
        assert!(guarded.check("0.0.0.0:1".parse().unwrap()).is_ok());
        assert!(matches!(
            Auth::new(Some("short")),
            Err(DashboardError::BadToken)
        ));
        assert!(matches!(
            Auth::new(Some("has spaces in it, sixteen+")),
            Err(DashboardError::BadToken)
        ));
    }
}
