//! `GET /live`: a server-sent event stream that says `update` when a projection applied
//! something new, at most once per `live_interval_ms`. The page's script then fetches the page
//! again and swaps in what changed.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;

use crate::Dashboard;
use crate::pages::{Peer, Signed};

pub async fn events(State(d): State<Dashboard>, headers: HeaderMap, peer: Peer) -> Response {
    // Only a signed-in browser may follow; the stream says nothing but "something changed".
    let signed = match Signed::load(&d, &headers, peer).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let changes = d.state.checkpoints.changes();
    let interval = Duration::from_millis(d.settings.live_interval_ms);
    let session = signed.session;
    let s = stream::unfold(
        (changes, true, tokio::time::Instant::now()),
        move |(mut rx, first, checked)| {
            let (d, session) = (d.clone(), session.clone());
            async move {
                if first {
                    rx.mark_unchanged();
                    let hello = Event::default().comment("live");
                    return Some((Ok::<_, Infallible>(hello), (rx, false, checked)));
                }
                tokio::time::sleep(interval).await;
                // Ends once the session has: signed out, expired, or its key refused.
                let ended = |now| now >= session.expires_at;
                tokio::time::timeout(RECHECK, rx.changed())
                    .await
                    .ok()?
                    .ok()?;
                if ended(d.state.clock.now()) {
                    return None;
                }
                let checked = if checked.elapsed() >= RECHECK {
                    let key = crate::call::As::Session(session.key_id.clone());
                    let me = crate::call::api(&d, &key, None, Method::GET, "/v1/me", None);
                    if !crate::session::live(&d.state.pool, &session, d.state.clock.now()).await
                        || me.await.is_err()
                    {
                        return None;
                    }
                    tokio::time::Instant::now()
                } else {
                    checked
                };
                rx.borrow_and_update();
                // Which projection moved, and how far, is not the member's to know: the data is
                // a constant (a browser drops an event with no data at all).
                Some((
                    Ok(Event::default().event("update").data("changed")),
                    (rx, false, checked),
                ))
            }
        },
    );
    Sse::new(s)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// How often an open stream checks that its session still stands; with no change for this long
/// the stream ends and the browser's `EventSource` opens it again (checking the session anew).
const RECHECK: Duration = Duration::from_secs(60);
