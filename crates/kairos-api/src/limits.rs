//! Abuse limits: a token bucket per member and per client address, the client's address behind
//! trusted proxies, and the security headers every answer carries.

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

/// Whose bucket a request spends: its member's (once its key is known: one bucket for all the
/// member's keys), else its address's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Caller {
    Ip(Option<IpAddr>),
    /// The member's id.
    Member(String),
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

/// Limits requests without a key per client address (requests with one are limited per member,
/// after routing, by the auth middleware, or per address by [`unrouted`] when no route matches).
pub(crate) async fn rate_limit(
    State(limiter): State<Limiter>,
    mut req: Request,
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
    } else {
        req.extensions_mut().insert(limiter);
    }
    next.run(req).await
}

/// A request no route answers spends its address's bucket even with a key (no route means no
/// member's bucket was spent): otherwise anyone could send unlimited requests by adding an
/// `Authorization` header.
pub(crate) fn unrouted(parts: &axum::http::request::Parts) -> Result<(), Limited> {
    match parts.extensions.get::<Limiter>() {
        Some(limiter) => limiter.check(&Caller::Ip(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        )),
        None => Ok(()),
    }
}

/// Reverse proxies whose `X-Forwarded-For` is believed (`http.trusted_proxies`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<[ipnet::IpNet]>);

impl TrustedProxies {
    /// Parses addresses (`10.0.0.7`) and ranges (`10.0.0.0/8`); names the first that is neither.
    pub fn parse(items: &[String]) -> Result<Self, String> {
        items
            .iter()
            .map(|item| {
                let item = item.trim();
                item.parse::<ipnet::IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        format!(
                            "http.trusted_proxies: {} is not an address or a range like 10.0.0.0/8",
                            kairos_events::printable(item, 60)
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|nets| Self(nets.into()))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the TCP peer, unless the peer is a trusted proxy; then the
    /// rightmost address of `X-Forwarded-For` (every proxy appends the one it heard from) that
    /// is not a trusted proxy. A header that does not parse is not believed.
    pub fn client(&self, peer: IpAddr, headers: &axum::http::HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let mut hops = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            let Some(text) = value.to_str().ok() else {
                return peer;
            };
            for hop in text.split(',') {
                match hop.trim().parse::<IpAddr>() {
                    Ok(ip) => hops.push(ip),
                    Err(_) => return peer,
                }
            }
        }
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            client = hop;
            if !self.trusts(hop) {
                break;
            }
        }
        client
    }
}

/// Puts the client's address ([`TrustedProxies::client`]) where the connection's was, so rate
/// limits, audit entries and the dashboard all see the client behind a trusted proxy.
pub async fn client_address(trusted: TrustedProxies, mut req: Request, next: Next) -> Response {
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() {
        let client = trusted.client(peer.ip(), req.headers());
        if client != peer.ip() {
            req.extensions_mut()
                .insert(ConnectInfo(SocketAddr::new(client, 0)));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(values: &[&str]) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_client_is_the_rightmost_address_no_trusted_proxy_added() {
        let trusted =
            TrustedProxies::parse(&["10.0.0.0/8".into(), " 192.168.1.5 ".into()]).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let proxy = ip("10.1.2.3");
        // Spoofed hops on the left are ignored: the first untrusted one from the right counts.
        let h = forwarded(&["6.6.6.6, 1.2.3.4", "192.168.1.5"]);
        assert_eq!(trusted.client(proxy, &h), ip("1.2.3.4"));
        // A peer that is not a proxy is the client, whatever it forwards.
        assert_eq!(trusted.client(ip("8.8.8.8"), &h), ip("8.8.8.8"));
        // Only proxies: the leftmost.
        assert_eq!(
            trusted.client(proxy, &forwarded(&["10.9.9.9"])),
            ip("10.9.9.9")
        );
        // No header, or one that does not parse: the proxy itself.
        assert_eq!(trusted.client(proxy, &forwarded(&[])), proxy);
        assert_eq!(
            trusted.client(proxy, &forwarded(&["1.2.3.4, nonsense"])),
            proxy
        );
        // An IPv4 peer seen as IPv6 is the same address.
        assert_eq!(trusted.client(ip("::ffff:10.1.2.3"), &h), ip("1.2.3.4"));
        assert!(
            TrustedProxies::parse(&["10.0.0.0/33".into()])
                .unwrap_err()
                .contains("http.trusted_proxies")
        );
    }
}
