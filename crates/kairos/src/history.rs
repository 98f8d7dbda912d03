//! `kairos events tail | export | import`: the stream itself, for inspection and archiving.

use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kairos_bus::{Bus, ReadFrom};
use kairos_events::{ProjectId, StreamSeq};

/// Which events to show or export.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only this CloudEvent type.
    pub ty: Option<String>,
    /// Only this project.
    pub project: Option<ProjectId>,
}

impl Selection {
    fn filter(&self, bus: &Bus) -> Option<String> {
        self.project
            .as_ref()
            .map(|p| format!("{}.events.*.{p}", bus.config().subject_prefix))
    }

    fn wants(&self, payload: &[u8]) -> bool {
        let Some(ty) = &self.ty else { return true };
        serde_json::from_slice::<serde_json::Value>(payload)
            .is_ok_and(|v| v["type"].as_str() == Some(ty.as_str()))
    }
}

/// Writes the stored JSON of every selected event stored in `[from, to]` as one line each;
/// returns how many. The lines are exactly what was stored, so `import` restores them.
pub async fn export(
    bus: &Bus,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    sel: &Selection,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let last = bus.last_seq().await?;
    if last.0 == 0 {
        return Ok(0);
    }
    let start = from.map_or(ReadFrom::Seq(StreamSeq(1)), ReadFrom::Time);
    let mut reader = bus.read(start, sel.filter(bus)).await?;
    let mut n = 0;
    while let Some(m) = reader.next(Duration::from_secs(2)).await? {
        if to.is_some_and(|to| m.stored_at > to) {
            break;
        }
        if sel.wants(&m.payload) {
            out.write_all(&m.payload)?;
            out.write_all(b"\n")?;
            n += 1;
        }
        if m.seq >= last {
            break;
        }
    }
    out.flush()?;
    Ok(n)
}

/// Prints events as they are stored, until interrupted.
pub async fn tail(
    bus: &Bus,
    sel: &Selection,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut reader = bus.read(ReadFrom::New, sel.filter(bus)).await?;
    loop {
        let Some(m) = reader.next(Duration::from_secs(3600)).await? else {
            continue;
        };
        if !sel.wants(&m.payload) {
            continue;
        }
        if json {
            out.write_all(&m.payload)?;
            writeln!(out)?;
        } else {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            writeln!(
                out,
                "{:>8}  {}  {:<40}  {:<20}  {}",
                m.seq.0,
                m.stored_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                v["type"].as_str().unwrap_or("<not a CloudEvent>"),
                v["subject"].as_str().unwrap_or("-"),
                v["id"].as_str().unwrap_or("-"),
            )?;
        }
        out.flush()?;
    }
}
