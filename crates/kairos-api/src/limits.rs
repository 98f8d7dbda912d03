//! Abuse limits: a token bucket per API key and per client address, and the security headers every answer carries.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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

/// Token buckets per key and per client address (`None` when limiting is off), and the addresses
/// that spent their bucket on failed keys, refused any key until their bucket refills.
#[derive(Clone)]
pub(crate) struct Limiter(
    Option<Arc<DefaultKeyedRateLimiter<Caller>>>,
    Arc<Mutex<HashMap<Option<IpAddr>, Instant>>>,
    /// How long a guessing address stays blocked: the time its bucket takes to fill up again.
    std::time::Duration,
);

impl Limiter {
    pub(crate) fn new(per_second: u32, burst: u32) -> Self {
        let quota = NonZeroU32::new(per_second).map(|rate| {
            Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate))
        });
        let refill = std::time::Duration::from_secs_f64(
            f64::from(burst.max(1)) / f64::from(per_second.max(1)),
        );
        Self(
            quota.map(|q| Arc::new(RateLimiter::keyed(q))),
            Arc::default(),
            refill.max(std::time::Duration::from_secs(1)),
        )
    }

    fn blocked(&self) -> std::sync::MutexGuard<'_, HashMap<Option<IpAddr>, Instant>> {
        self.1
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Refuses an address that is guessing keys, before its next key is even looked up: once
    /// blocked, a right guess is refused like a wrong one.
    pub(crate) fn guessing(&self, ip: Option<IpAddr>) -> Result<(), Limited> {
        let mut blocked = self.blocked();
        match blocked.get(&ip) {
            Some(until) if *until > Instant::now() => {
                let wait = until.saturating_duration_since(Instant::now());
                Err(Limited(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)))
            }
            Some(_) => {
                blocked.remove(&ip);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// A key from `ip` failed: spends the address's bucket, and once it is spent blocks the
    /// address until the bucket would be full again.
    pub(crate) fn failed(&self, ip: Option<IpAddr>) -> Result<(), Limited> {
        let spent = self.check(&Caller::Ip(ip));
        if spent.is_err() {
            let mut blocked = self.blocked();
            if blocked.len() > 100_000 {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
            }
            blocked.insert(ip, Instant::now() + self.2);
        }
        spent
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
    // A dashboard session's request is limited per key too.
    if !req.headers().contains_key(header::AUTHORIZATION)
        && req.extensions().get::<crate::Delegated>().is_none()
    {
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
