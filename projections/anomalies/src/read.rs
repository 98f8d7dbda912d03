//! Reads of the anomalies tables: the endpoints' and the router's.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Row};

/// One alert.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Alert {
    pub id: String,
    pub series: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub severity: String,
    /// `open` or `resolved`.
    pub status: String,
    pub raised_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    /// The value of the point that raised it.
    pub value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_low: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_high: Option<f64>,
    pub score: f64,
    pub peak: f64,
    /// `warn`, `circuit_breaker` or `lower_limit`.
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolve_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// The stream sequence of the event whose point raised it.
    pub raised_seq: i64,
}

/// What `GET /v1/anomalies` filters by.
#[derive(Debug, Default)]
pub struct AlertFilter {
    pub status: Option<String>,
    pub series: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Only these projects' alerts, and the models' (`None`: every alert).
    pub projects: Option<Vec<String>>,
    pub limit: i64,
}

macro_rules! alert_columns {
    () => {
        "id, series, kind, project, model, severity, status, raised_at, resolved_at, value, \
         expected_low, expected_high, score, peak, action, resolve_reason, acknowledged_by, \
         acknowledged_at, raised_seq"
    };
}

fn alert(r: &sqlx::postgres::PgRow) -> Result<Alert, sqlx::Error> {
    Ok(Alert {
        id: r.try_get("id")?,
        series: r.try_get("series")?,
        kind: r.try_get("kind")?,
        project: r.try_get("project")?,
        model: r.try_get("model")?,
        severity: r.try_get("severity")?,
        status: r.try_get("status")?,
        raised_at: r.try_get("raised_at")?,
        resolved_at: r.try_get("resolved_at")?,
        value: r.try_get("value")?,
        expected_low: r.try_get("expected_low")?,
        expected_high: r.try_get("expected_high")?,
        score: r.try_get("score")?,
        peak: r.try_get("peak")?,
        action: r.try_get("action")?,
        resolve_reason: r.try_get("resolve_reason")?,
        acknowledged_by: r.try_get("acknowledged_by")?,
        acknowledged_at: r.try_get("acknowledged_at")?,
        raised_seq: r.try_get("raised_seq")?,
    })
}

/// Alerts, newest raised first.
pub async fn alerts(pool: &PgPool, f: &AlertFilter) -> Result<Vec<Alert>, sqlx::Error> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        alert_columns!(),
        " FROM anomalies.alerts
         WHERE ($1::text IS NULL OR status = $1)
           AND ($2::text IS NULL OR series = $2)
           AND ($3::timestamptz IS NULL OR raised_at >= $3)
           AND ($4::timestamptz IS NULL OR raised_at < $4)
           AND ($5::text[] IS NULL OR project IS NULL OR project = ANY($5))
         ORDER BY raised_at DESC, id LIMIT $6"
    ))
    .bind(&f.status)
    .bind(&f.series)
    .bind(f.from)
    .bind(f.to)
    .bind(&f.projects)
    .bind(f.limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(alert).collect()
}

/// One alert by id.
pub async fn alert_by_id(pool: &PgPool, id: &str) -> Result<Option<Alert>, sqlx::Error> {
    let row = sqlx::query(concat!(
        "SELECT ",
        alert_columns!(),
        " FROM anomalies.alerts WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(alert).transpose()
}

/// One series as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Series {
    pub id: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub labels: Option<Value>,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    pub points: i64,
    pub last_value: f64,
    pub last_score: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_alert: Option<String>,
    /// Points that came out of order and were not scored.
    pub dropped: i64,
}

/// The series, those with an open alert first, then by id.
pub async fn series(
    pool: &PgPool,
    projects: Option<&[String]>,
    kind: Option<&str>,
    limit: i64,
) -> Result<Vec<Series>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, kind, project, model, metric, labels, first_at, last_at, points, last_value,
                last_score, open_alert, dropped
         FROM anomalies.series
         WHERE ($1::text[] IS NULL OR project IS NULL OR project = ANY($1))
           AND ($2::text IS NULL OR kind = $2)
         ORDER BY open_alert IS NULL, id LIMIT $3",
    )
    .bind(projects)
    .bind(kind)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Series {
                id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                project: r.try_get("project")?,
                model: r.try_get("model")?,
                metric: r.try_get("metric")?,
                labels: r.try_get("labels")?,
                first_at: r.try_get("first_at")?,
                last_at: r.try_get("last_at")?,
                points: r.try_get("points")?,
                last_value: r.try_get("last_value")?,
                last_score: r.try_get("last_score")?,
                open_alert: r.try_get("open_alert")?,
                dropped: r.try_get("dropped")?,
            })
        })
        .collect()
}

/// The project of a series (`Some(None)`: a model's series; `None`: no such series).
pub async fn series_project(
    pool: &PgPool,
    id: &str,
) -> Result<Option<Option<String>>, sqlx::Error> {
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT project FROM anomalies.series WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|r| r.0))
}

/// One scored point.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Scored {
    pub n: i64,
    pub at: DateTime<Utc>,
    pub value: f64,
    pub anomaly_score: f64,
}

/// A series' scored points in `[from, to)`, oldest first: the newest `limit` of them.
pub async fn scores(
    pool: &PgPool,
    id: &str,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<Scored>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT n, at, value, score FROM (
             SELECT p.n, p.at, p.value, p.score
             FROM anomalies.points p JOIN anomalies.series s ON s.sid = p.sid
             WHERE s.id = $1 AND ($2::timestamptz IS NULL OR at >= $2)
               AND ($3::timestamptz IS NULL OR at < $3)
             ORDER BY p.n DESC LIMIT $4) newest
         ORDER BY n",
    )
    .bind(id)
    .bind(from)
    .bind(to)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Scored {
                n: r.try_get("n")?,
                at: r.try_get("at")?,
                value: r.try_get("value")?,
                anomaly_score: r.try_get("score")?,
            })
        })
        .collect()
}

/// A model's circuit breaker as the router sees it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Breaker {
    /// `open` or `half_open`.
    pub state: String,
    pub alerts: Vec<String>,
    pub since: DateTime<Utc>,
    pub reason: String,
    pub probe_calls: u32,
    pub probe_window_ms: i64,
}

/// A project's lowered budget limit.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Limit {
    pub alert_id: String,
    pub factor: f64,
    pub since: DateTime<Utc>,
}

/// What the anomalies projection tells the router: the breakers not closed, by model, and the
/// lowered limits, by project.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Circuit {
    pub breakers: HashMap<String, Breaker>,
    pub limits: HashMap<String, Limit>,
}

/// The breakers and lowered limits in force.
pub async fn circuit(pool: &PgPool) -> Result<Circuit, sqlx::Error> {
    let mut c = Circuit::default();
    let rows = sqlx::query(
        "SELECT model, state, alerts, since, reason, probe_calls, probe_window_ms
         FROM anomalies.breakers",
    )
    .fetch_all(pool)
    .await?;
    for r in rows {
        let probe: i32 = r.try_get("probe_calls")?;
        c.breakers.insert(
            r.try_get("model")?,
            Breaker {
                state: r.try_get("state")?,
                alerts: r.try_get("alerts")?,
                since: r.try_get("since")?,
                reason: r.try_get("reason")?,
                probe_calls: u32::try_from(probe).unwrap_or(0),
                probe_window_ms: r.try_get("probe_window_ms")?,
            },
        );
    }
    let rows = sqlx::query("SELECT project, alert_id, factor, since FROM anomalies.limits")
        .fetch_all(pool)
        .await?;
    for r in rows {
        c.limits.insert(
            r.try_get("project")?,
            Limit {
                alert_id: r.try_get("alert_id")?,
                factor: r.try_get("factor")?,
                since: r.try_get("since")?,
            },
        );
    }
    Ok(c)
}
