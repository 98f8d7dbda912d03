//! `GET /live`: a server-sent event stream that says `update` when a projection applied
//! something new, at most once per `live_interval_ms`. The page's script then fetches the page
//! again and swaps in what changed.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;

use crate::Dashboard;
use crate::pages::{Peer, Signed};

pub async fn events(State(d): State<Dashboard>, headers: HeaderMap, peer: Peer) -> Response {
    // Only a signed-in browser may follow; the stream says nothing but "something changed".
    if let Err(r) = Signed::load(&d, &headers, peer).await {
        return r;
    }
    let changes = d.checkpoints.changes();
    let interval = Duration::from_millis(d.settings.live_interval_ms);
    let s = stream::unfold((changes, true), move |(mut rx, first)| async move {
        if first {
            rx.mark_unchanged();
            return Some((
                Ok::<_, Infallible>(Event::default().comment("live")),
                (rx, false),
            ));
        }
        tokio::time::sleep(interval).await;
        rx.changed().await.ok()?;
        let upto: u64 = rx.borrow_and_update().values().copied().max().unwrap_or(0);
        Some((
            Ok(Event::default().event("update").data(upto.to_string())),
            (rx, false),
        ))
    });
    Sse::new(s)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
