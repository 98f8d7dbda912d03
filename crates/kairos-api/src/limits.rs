//! Abuse limits: a token bucket per API key and per client address, and the security headers every answer carries.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::ApiError;

/// Whose bucket a request spends: its key's (once it presents one), else its address's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Caller {
    Ip(Option<IpAddr>),
    /// The key's lookup prefix (never the key).
    Key(String),
}

/// Token buckets per key and per client address; `None` when limiting is off.
#[derive(Clone)]
pub(crate) struct Limiter(Option<Arc<DefaultKeyedRateLimiter<Caller>>>);

impl Limiter {
    pub(crate) fn new(per_second: u32, burst: u32) -> Self {
        let quota = NonZeroU32::new(per_second).map(|rate| {
            Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate))
        });
        Self(quota.map(|q| Arc::new(RateLimiter::keyed(q))))
    }

    /// Spends one token of `caller`'s bucket, or says how long to wait.
    pub(crate) fn check(&self, caller: &Caller) -> Result<(), Limited> {
        let Some(limiter) = &self.0 else {
            return Ok(());
        };
        if let Err(not_until) = limiter.check_key(caller) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(Limited(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)));
        }
        // Keep memory bounded under many callers.
        if limiter.len() > 100_000 {
            limiter.retain_recent();
        }
        Ok(())
    }
}

/// A spent bucket: seconds until the next token.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limited(u64);

impl IntoResponse for Limited {
    /// `429` with `Retry-After`.
    fn into_response(self) -> Response {
        let mut response = ApiError::RateLimited(self.0).into_response();
        if let Ok(v) = HeaderValue::from_str(&self.0.max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

/// Limits requests without a key per client address (requests with one are limited per key,
/// after routing, by the auth middleware).
pub(crate) async fn rate_limit(
    State(limiter): State<Limiter>,
    req: Request,
    next: Next,
) -> Response {
    if !req.headers().contains_key(header::AUTHORIZATION) {
        // Without connection info (a router served without it) every caller shares one bucket.
        let ip = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        if let Err(limited) = limiter.check(&Caller::Ip(ip)) {
            return limited.into_response();
        }
    }
    next.run(req).await
}

/// Answers `431` when a request's headers together exceed `limit` bytes.
pub(crate) async fn header_limit(limit: usize, req: Request, next: Next) -> Response {
    let size: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > limit {
        return ApiError::HeadersTooLarge { limit }.into_response();
    }
    next.run(req).await
}

/// The headers that make a browser treat answers as data, never as a page to run or frame.
pub(crate) const SECURITY_HEADERS: [(HeaderName, &str); 4] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'",
    ),
];

pub(crate) fn header_layer(
    name: HeaderName,
    value: &'static str,
) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
}
