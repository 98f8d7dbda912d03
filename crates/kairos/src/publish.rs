//! `kairos publish`: JSON lines (one structured CloudEvent each) from a file or stdin, validated
//! exactly as the HTTP door does, published and acknowledged in order.

use std::io::Write;

use kairos_bus::Bus;
use kairos_events::{EventError, MAX_EVENT_BYTES, parse_structured};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// What happened to the lines.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub failed: u64,
}

const CHUNK: usize = 1000;

/// Reads `input` line by line, writes one JSON result per non-empty line to `out`.
pub async fn publish_lines<R: AsyncRead + Unpin>(
    bus: &Bus,
    input: R,
    out: &mut impl Write,
) -> anyhow::Result<Summary> {
    let mut reader = BufReader::new(input);
    let mut summary = Summary::default();
    let mut pending = Vec::new();
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = read_bounded_line(&mut reader, &mut buf).await?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let trimmed = buf.trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        let parsed = if n > MAX_EVENT_BYTES + 2 {
            Err(EventError::new(
                "event_too_large",
                format!("the line is over {MAX_EVENT_BYTES} bytes"),
            ))
        } else {
            parse_structured(trimmed)
        };
        match parsed {
            Ok(event) => pending.push((line_no, event)),
            Err(e) => {
                summary.rejected += 1;
                writeln!(
                    out,
                    "{}",
                    json!({"line": line_no, "status": "rejected",
                    "error": {"code": e.code, "message": e.message, "field": e.field}})
                )?;
            }
        }
        if pending.len() >= CHUNK {
            flush(bus, &mut pending, &mut summary, out).await?;
        }
    }
    flush(bus, &mut pending, &mut summary, out).await?;
    Ok(summary)
}

/// Reads one line but keeps at most `MAX_EVENT_BYTES + 2` bytes of it, returning its full length.
async fn read_bounded_line<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(total);
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = (MAX_EVENT_BYTES + 2).saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        total += take;
        r.consume(take);
        if done {
            return Ok(total);
        }
    }
}

async fn flush(
    bus: &Bus,
    pending: &mut Vec<(u64, kairos_events::Event)>,
    summary: &mut Summary,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let events: Vec<_> = pending.iter().map(|(_, e)| e.clone()).collect();
    let receipts = bus.publish_events(&events).await;
    for ((line, event), receipt) in pending.drain(..).zip(receipts) {
        match receipt {
            Ok(r) => {
                summary.accepted += 1;
                summary.duplicates += u64::from(r.duplicate);
                writeln!(
                    out,
                    "{}",
                    json!({"line": line, "status": "accepted", "id": event.id(),
                    "seq": r.seq.0, "duplicate": r.duplicate})
                )?;
            }
            Err(e) => {
                summary.failed += 1;
                writeln!(
                    out,
                    "{}",
                    json!({"line": line, "status": "failed", "id": event.id(),
                    "error": {"code": "stream_unavailable", "message": e.to_string()}})
                )?;
            }
        }
    }
    Ok(())
}
