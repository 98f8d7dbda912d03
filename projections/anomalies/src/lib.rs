//! Streaming anomaly detection per series, alerts with hysteresis, and the Numenta Anomaly
//! Benchmark's scoring.
//!
//! The pure parts: [`detector`] (one streaming detector per series: a score in `[0, 1]` per point
//! from the points up to it), [`alert`] (scores into raise/resolve events) and [`nab`] (NAB's
//! windows, sigmoid weights, threshold sweep and normalisation, plus readers for its files).
//! No I/O happens here except reading NAB's files and writing score CSVs to a caller's writer.

pub mod alert;
pub mod detector;
pub mod nab;
