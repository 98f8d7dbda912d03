//! Streaming anomaly detection per series, alerts with hysteresis, circuit breakers for the
//! router, and the Numenta Anomaly Benchmark's scoring.
//!
//! The pure parts: [`detector`] (one streaming detector per series: a score in `[0, 1]` per point
//! from the points up to it), [`alert`] (scores into raise/resolve events), [`series`] (which
//! series the events give, and the buckets of the derived ones) and [`nab`] (NAB's windows,
//! sigmoid weights, threshold sweep and normalisation, plus readers for its files). The module:
//! [`projection`] (the fold), [`read`] (the endpoints' and the router's reads) and its routes.

pub mod alert;
pub mod detector;
pub mod nab;
pub mod series;

mod api;
pub mod projection;
pub mod read;
pub mod webhook;

pub use api::{AnomaliesModule, AnomalySettings, MODULE};

/// The name of the projection: consumer, checkpoint, schema and dead-letter subject.
pub const NAME: &str = "anomalies";
