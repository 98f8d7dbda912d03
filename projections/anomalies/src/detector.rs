//! One streaming anomaly detector per series: [`Detector::update`] takes the next point and
//! returns an anomaly score in `[0, 1]` computed from the points up to it, never after.
//!
//! # Method
//!
//! Three stages, each a known idea from the anomaly-detection literature:
//!
//! 1. **Pattern novelty (k-means, as Netdata's ML detector does).** Every point gets a feature
//!    vector describing the recent shape of the series at two resolutions: the last
//!    [`DetectorConfig::fine_lags`] values, and the means of the last
//!    [`DetectorConfig::coarse_lags`] blocks of [`DetectorConfig::coarse_block`] values, all
//!    centred on the median and divided by a robust scale (MAD) of the training history. Every
//!    [`DetectorConfig::retrain_every`] points, k-means (linfa, k-means++ with a fixed seed) is
//!    fitted on a subsample of the last [`DetectorConfig::history`] points' vectors. A point's raw
//!    score is its distance to the nearest centroid relative to the 99th percentile of the
//!    training vectors' distances, squashed into `[0, 1)`: `1 - exp(-(d / d99)² / 2)`.
//! 2. **Anomaly likelihood (Numenta's HTM post-processing).** The raw score's short moving average
//!    (the last [`DetectorConfig::short_window`] points) is compared with the distribution of that
//!    average over the last [`DetectorConfig::history`] points, estimated robustly (median and
//!    MAD, re-estimated every 100 points, spread at least
//!    [`DetectorConfig::min_average_spread`]): the Gaussian tail probability `q` of an average at
//!    least that high becomes the score
//!    `ln(q + 1e-10) / ln(1e-10)` (HTM's log-likelihood; `0.5` at `q = 1e-5`). As in HTM, only the
//!    first point of a run of very unlikely averages keeps its value; the rest of the run is
//!    reported as merely unusual (`q = 1e-3`).
//! 3. **Range novelty (Numenta's "spatial anomaly").** A value beyond the range seen so far by more
//!    than [`DetectorConfig::spatial_tolerance`] of that range scores `1`.
//!
//! Stages 1 and 2 run at every time scale of [`DetectorConfig::scales`] (by default the raw
//! points and block means of 8 points): the coarse scale's features span `8 × 32 = 256` points,
//! so it sees changes of shape over hours to a day (a flattened or shifted cycle, a slow drift)
//! that windows of 32 raw points cannot. The scales' tail probabilities are combined by
//! Bonferroni's correction (`min q × scales`), so adding a scale does not add false alarms.
//! The score is the larger of 2 and 3. After a score of at least [`ALERT_LEVEL`], the detector
//! reports scores damped by [`DetectorConfig::refractory_damping`] for
//! [`DetectorConfig::refractory`] points: one anomaly, one confident detection.
//!
//! # Bounds
//!
//! Memory per detector is fixed at construction ([`Detector::state_bytes`]): per scale, a ring
//! of `history + context` values, `history` averages, `short_window` raw scores,
//! `clusters × dims` centroids and a few dozen scalars, plus shared scratch space — about
//! 82 KiB with the default configuration, whatever the series length. The saved form
//! ([`Detector::to_bytes`]: postcard, every float as its eight bytes) is about 65 KB.
//! A point costs a nearest-centroid search (`clusters × dims` multiply-adds); a retraining
//! (`subsample × clusters × dims × iterations`) is amortised over `retrain_every` points.
//! The detector counts points, not time: a gap in timestamps is just the next point.

use std::io::Write;

use linfa::DatasetBase;
use linfa::prelude::Fit;
use linfa_clustering::{KMeans, KMeansInit};
use ndarray::Array2;
use serde::{Deserialize, Serialize};

/// Scores at or above this are confident detections: they start the refractory period.
pub const ALERT_LEVEL: f64 = 0.5;

/// The detector's parameters. [`Default`] is the one parameter set used everywhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorConfig {
    /// Aggregation factors of the time scales: each scale sees block means of this many points.
    pub scales: Vec<usize>,
    /// Points (of a scale) before its first non-zero score.
    pub warmup: usize,
    /// Points of history the k-means model is trained on.
    pub history: usize,
    /// Points between retrainings once the history is full (earlier, at doubling counts).
    pub retrain_every: usize,
    /// At most this many feature vectors are used per training (evenly spaced).
    pub train_sample: usize,
    /// Number of k-means clusters.
    pub clusters: usize,
    /// k-means iterations per training.
    pub kmeans_iterations: u64,
    /// Raw values in the feature vector.
    pub fine_lags: usize,
    /// Block means in the feature vector.
    pub coarse_lags: usize,
    /// Values per block.
    pub coarse_block: usize,
    /// Points averaged before the likelihood.
    pub short_window: usize,
    /// The least spread of the averages' distribution: raw scores of normal points span about
    /// `0..0.4`, so an average must stand out by more than this to be unlikely.
    #[serde(with = "bits")]
    pub min_average_spread: f64,
    /// Averages observed before the likelihood is trusted.
    pub likelihood_warmup: usize,
    /// Raw points before range novelty is judged.
    pub spatial_warmup: usize,
    /// Fraction of the range seen so far a value must exceed it by to be range-novel.
    #[serde(with = "bits")]
    pub spatial_tolerance: f64,
    /// Points after a confident detection during which scores are damped.
    pub refractory: usize,
    /// Factor applied to scores during the refractory period.
    #[serde(with = "bits")]
    pub refractory_damping: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            scales: vec![1, 8],
            warmup: 150,
            history: 2000,
            retrain_every: 500,
            train_sample: 500,
            clusters: 12,
            kmeans_iterations: 25,
            fine_lags: 4,
            coarse_lags: 4,
            coarse_block: 8,
            short_window: 10,
            min_average_spread: 0.1,
            likelihood_warmup: 50,
            spatial_warmup: 150,
            spatial_tolerance: 0.05,
            refractory: 200,
            refractory_damping: 0.25,
        }
    }
}

impl DetectorConfig {
    fn dims(&self) -> usize {
        self.fine_lags + self.coarse_lags
    }

    fn context(&self) -> usize {
        self.fine_lags.max(self.coarse_lags * self.coarse_block)
    }
}

/// Serialises `f64`s by their bits, so every value (NaN and infinities too) round-trips exactly:
/// in JSON (human-readable) as the integer of the bits, in the binary saved form
/// ([`encode`]) as the eight bytes themselves.
mod bits {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            v.to_bits().serialize(s)
        } else {
            s.serialize_f64(*v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        if d.is_human_readable() {
            Ok(f64::from_bits(u64::deserialize(d)?))
        } else {
            f64::deserialize(d)
        }
    }

    /// A `Vec<f64>` as one string of its values' bits in hex (16 characters a value) in JSON,
    /// as their little-endian bytes in the binary form.
    pub mod vec {
        use serde::de::{Error, Visitor};
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
            if !s.is_human_readable() {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                return s.serialize_bytes(&bytes);
            }
            // By nibbles: `format!` is several times slower.
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut text = Vec::with_capacity(v.len() * 16);
            for x in v {
                let bits = x.to_bits();
                for shift in (0..16).rev() {
                    text.push(HEX[((bits >> (shift * 4)) & 0xf) as usize]);
                }
            }
            s.serialize_str(std::str::from_utf8(&text).unwrap_or_default())
        }

        struct Floats;

        impl Visitor<'_> for Floats {
            type Value = Vec<f64>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("the little-endian bytes of f64 values")
            }

            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<f64>, E> {
                if !v.len().is_multiple_of(8) {
                    return Err(E::custom("not a whole number of f64 values"));
                }
                Ok(v.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()))
                    .collect())
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
            if !d.is_human_readable() {
                return d.deserialize_bytes(Floats);
            }
            let text = String::deserialize(d)?;
            if !text.len().is_multiple_of(16) || !text.is_ascii() {
                return Err(D::Error::custom("not a hex string of f64 bits"));
            }
            (0..text.len() / 16)
                .map(|i| {
                    u64::from_str_radix(&text[i * 16..(i + 1) * 16], 16)
                        .map(f64::from_bits)
                        .map_err(D::Error::custom)
                })
                .collect()
        }
    }
}

/// The first byte of the binary saved form; the JSON form, which states saved before it were
/// written in and which [`decode`] still reads, starts with `{`.
const BINARY_FORM: u8 = 1;

/// A state in its saved form: a version byte, then postcard (every float as its eight bytes):
/// about half the size of the JSON form with the floats in hex, and faster to write and read.
pub fn encode<T: Serialize>(state: &T) -> Vec<u8> {
    let mut bytes = vec![BINARY_FORM];
    // Writing into a `Vec` fails only on a serialiser error, which these types never raise.
    if let Ok(body) = postcard::to_stdvec(state) {
        bytes.extend(body);
    }
    bytes
}

/// Reads a state saved by [`encode`], or by the JSON form of earlier versions.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.first() {
        Some(&BINARY_FORM) => postcard::from_bytes(&bytes[1..]).map_err(|e| e.to_string()),
        Some(b'{') => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        _ => Err("not a saved state".into()),
    }
}

/// A fixed-capacity ring of `f64`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ring {
    #[serde(with = "bits::vec")]
    data: Vec<f64>,
    head: usize,
    len: usize,
}

impl Ring {
    fn new(capacity: usize) -> Self {
        Self {
            data: vec![0.0; capacity.max(1)],
            head: 0,
            len: 0,
        }
    }

    fn push(&mut self, v: f64) {
        self.data[self.head] = v;
        self.head = (self.head + 1) % self.data.len();
        self.len = (self.len + 1).min(self.data.len());
    }

    fn is_full(&self) -> bool {
        self.len == self.data.len()
    }

    /// The value `back` points before the newest (`0` = newest).
    fn back(&self, back: usize) -> f64 {
        let cap = self.data.len();
        self.data[(self.head + cap - 1 - back % cap) % cap]
    }

    fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<f64>()
    }

    /// Whether a restored ring is one [`Ring::push`] and [`Ring::back`] can use.
    fn consistent(&self) -> bool {
        !self.data.is_empty() && self.head < self.data.len() && self.len <= self.data.len()
    }
}

/// The trained pattern model: normalisation, centroids and the distance scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Model {
    #[serde(with = "bits")]
    centre: f64,
    #[serde(with = "bits")]
    scale: f64,
    /// `clusters × dims`, row-major; fewer rows if training found fewer distinct centroids.
    #[serde(with = "bits::vec")]
    centroids: Vec<f64>,
    rows: usize,
    #[serde(with = "bits")]
    d_ref: f64,
}

/// How the last score was reached, to explain a detection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreParts {
    /// The pattern-novelty score of the point at the finest scale, in `[0, 1)`.
    #[serde(with = "bits")]
    pub raw: f64,
    /// The short moving average of `raw` the likelihood judged.
    #[serde(with = "bits")]
    pub average: f64,
    /// The log-likelihood score combined over the scales.
    #[serde(with = "bits")]
    pub likelihood: f64,
    /// Whether the value was outside the range seen before.
    pub range_novel: bool,
    /// Whether the score was damped by the refractory period.
    pub damped: bool,
}

/// One time scale: pattern novelty and its likelihood on block means of `factor` points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Scale {
    factor: usize,
    #[serde(with = "bits")]
    block_sum: f64,
    block_len: usize,
    values: Ring,
    raw: Ring,
    #[serde(with = "bits")]
    raw_sum: f64,
    seen: usize,
    model: Option<Model>,
    next_training: usize,
    averages: Ring,
    #[serde(with = "bits")]
    centre_avg: f64,
    #[serde(with = "bits")]
    spread_avg: f64,
    was_red: bool,
    #[serde(with = "bits")]
    last_raw: f64,
    #[serde(with = "bits")]
    last_average: f64,
}

/// What a scale reported for its latest completed block.
struct Report {
    /// The tail probability of the short average, after HTM's red filter.
    tail: f64,
}

/// The streaming detector of one series. Its whole state is plain data: [`Detector::to_bytes`]
/// and [`Detector::from_bytes`] save and restore it exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detector {
    last: ScoreParts,
    config: DetectorConfig,
    scales: Vec<Scale>,
    seen: usize,
    #[serde(with = "bits")]
    min: f64,
    #[serde(with = "bits")]
    max: f64,
    refractory_left: usize,
    /// Scratch space (feature vectors, medians): not state.
    #[serde(skip)]
    scratch: Scratch,
}

#[derive(Debug, Clone, Default)]
struct Scratch {
    features: Vec<f64>,
    values: Vec<f64>,
}

impl PartialEq for Scratch {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Default for Detector {
    fn default() -> Self {
        Self::new(DetectorConfig::default())
    }
}

/// Sub-distance below which no pattern is novel, in robust-scale units.
const MIN_DISTANCE_SCALE: f64 = 0.1;
/// Points between re-estimations of the averages' distribution (HTM's period).
const LIKELIHOOD_REESTIMATION: usize = 100;
/// HTM's red and yellow tail probabilities.
const RED_TAIL: f64 = 1e-5;
const YELLOW_TAIL: f64 = 1e-3;

impl Detector {
    pub fn new(config: DetectorConfig) -> Self {
        let scales = config
            .scales
            .iter()
            .map(|f| Scale::new(*f, &config))
            .collect();
        Self {
            scales,
            seen: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            refractory_left: 0,
            scratch: Scratch::default(),
            last: ScoreParts::default(),
            config,
        }
    }

    /// The parts of the last score.
    pub fn last_parts(&self) -> ScoreParts {
        self.last
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Points seen so far.
    pub fn points(&self) -> usize {
        self.seen
    }

    /// The detector's whole state, to restore with [`Detector::from_bytes`] ([`encode`]: every
    /// float by its bits, so it round-trips exactly).
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Restores a detector saved by [`Detector::to_bytes`]: it scores the next points exactly
    /// as the saved one would have.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let d: Self = decode(bytes)?;
        d.check()?;
        Ok(d)
    }

    /// Whether a restored detector is one [`Detector::update`] can run: its rings, models and
    /// scales as a detector of its configuration makes them (a state that was tampered with is
    /// refused rather than left to panic).
    pub fn check(&self) -> Result<(), String> {
        let dims = self.config.dims();
        let fits = self.scales.len() == self.config.scales.len()
            && self.scales.iter().all(|s| {
                s.factor >= 1
                    && s.values.consistent()
                    && s.raw.consistent()
                    && s.averages.consistent()
                    && s.model
                        .as_ref()
                        .is_none_or(|m| m.rows >= 1 && m.centroids.len() == m.rows * dims)
            });
        match fits {
            true => Ok(()),
            false => Err("the saved detector state is inconsistent".into()),
        }
    }

    /// Bytes held by this detector (its struct and every buffer), fixed at construction.
    pub fn state_bytes(&self) -> usize {
        let c = &self.config;
        let f64s = std::mem::size_of::<f64>();
        let per_scale: usize = self
            .scales
            .iter()
            .map(|s| {
                std::mem::size_of::<Scale>()
                    + s.values.bytes()
                    + s.raw.bytes()
                    + s.averages.bytes()
                    // The model's centroids are allocated at most `clusters × dims` at a time.
                    + std::mem::size_of::<Model>()
                    + c.clusters * c.dims() * f64s
            })
            .sum();
        // Scratch: a feature vector and the values of a history (medians, training).
        std::mem::size_of::<Self>()
            + c.scales.capacity() * std::mem::size_of::<usize>()
            + per_scale
            + (c.dims() + c.history + c.context()) * f64s
    }

    /// Takes the next value (timestamps only order the points, so none is needed) and returns
    /// its anomaly score in `[0, 1]`. Non-finite values score `0` and are not learned.
    pub fn update(&mut self, value: f64) -> f64 {
        if !value.is_finite() {
            return 0.0;
        }
        // Range novelty is judged against the range before this point.
        let spatial = self.seen >= self.config.spatial_warmup && self.is_range_novel(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.seen += 1;

        // Šidák/Bonferroni: the least tail over the scales, times the number of scales.
        let mut least = 1.0f64;
        for scale in &mut self.scales {
            if let Some(r) = scale.update(value, &self.config, &mut self.scratch) {
                least = least.min(r.tail);
            }
        }
        let tail = (least * self.scales.len() as f64).min(1.0);
        let likelihood = if least < 1.0 {
            ((tail + 1e-10).ln() / 1e-10f64.ln()).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let score = if spatial { 1.0 } else { likelihood };
        let (raw, average) = self
            .scales
            .first()
            .map_or((0.0, 0.0), |s| (s.last_raw, s.last_average));
        self.last = ScoreParts {
            raw,
            average,
            likelihood,
            range_novel: spatial,
            damped: self.refractory_left > 0,
        };
        self.refract(score)
    }

    fn is_range_novel(&self, value: f64) -> bool {
        let range = self.max - self.min;
        if range.is_nan() || range <= 0.0 {
            return false;
        }
        let tolerance = range * self.config.spatial_tolerance;
        value > self.max + tolerance || value < self.min - tolerance
    }

    /// One anomaly, one confident detection: scores after one are damped for a while.
    fn refract(&mut self, score: f64) -> f64 {
        if self.refractory_left > 0 {
            self.refractory_left -= 1;
            return score * self.config.refractory_damping;
        }
        if score >= ALERT_LEVEL {
            self.refractory_left = self.config.refractory;
        }
        score
    }
}

impl Scale {
    fn new(factor: usize, c: &DetectorConfig) -> Self {
        Self {
            factor: factor.max(1),
            block_sum: 0.0,
            block_len: 0,
            values: Ring::new(c.history + c.context()),
            raw: Ring::new(c.short_window),
            raw_sum: 0.0,
            seen: 0,
            model: None,
            next_training: c.warmup.max(c.context() + 2),
            averages: Ring::new(c.history),
            centre_avg: f64::NAN,
            spread_avg: 0.0,
            was_red: false,
            last_raw: 0.0,
            last_average: 0.0,
        }
    }

    /// Takes the next raw value; reports when it completes a block.
    fn update(&mut self, value: f64, c: &DetectorConfig, scratch: &mut Scratch) -> Option<Report> {
        self.block_sum += value;
        self.block_len += 1;
        if self.block_len < self.factor {
            return None;
        }
        let value = self.block_sum / self.factor as f64;
        self.block_sum = 0.0;
        self.block_len = 0;
        self.values.push(value);
        self.seen += 1;

        if self.seen >= self.next_training {
            self.train(c, scratch);
            self.next_training = if self.seen < c.history {
                (self.seen * 2).min(c.history)
            } else {
                self.seen + c.retrain_every
            };
        }

        let raw = self.raw_score(c, scratch);
        if self.raw.is_full() {
            self.raw_sum -= self.raw.back(self.raw.data.len() - 1);
        }
        self.raw.push(raw);
        self.raw_sum += raw;

        let average = self.raw_sum / self.raw.len as f64;
        self.last_raw = raw;
        self.last_average = average;
        let tail = if self.model.is_some() && self.raw.is_full() {
            self.likelihood_tail(average, c, scratch)
        } else {
            1.0
        };
        Some(Report { tail })
    }

    /// Fills `features` for the point `back` points before the newest.
    fn fill_features(
        &self,
        features: &mut Vec<f64>,
        back: usize,
        c: &DetectorConfig,
        m: (f64, f64),
    ) {
        let (centre, scale) = m;
        features.clear();
        for lag in 0..c.fine_lags {
            features.push((self.values.back(back + lag) - centre) / scale);
        }
        for block in 0..c.coarse_lags {
            let start = back + block * c.coarse_block;
            let sum: f64 = (0..c.coarse_block)
                .map(|j| self.values.back(start + j))
                .sum();
            features.push((sum / c.coarse_block as f64 - centre) / scale);
        }
    }

    fn raw_score(&self, c: &DetectorConfig, scratch: &mut Scratch) -> f64 {
        let Some(model) = &self.model else {
            return 0.0;
        };
        self.fill_features(&mut scratch.features, 0, c, (model.centre, model.scale));
        let d = nearest_distance(&model.centroids, model.rows, &scratch.features);
        let ratio = d / model.d_ref;
        1.0 - (-0.5 * ratio * ratio).exp()
    }

    /// The tail probability of the average, `1` while not judged.
    fn likelihood_tail(&mut self, average: f64, c: &DetectorConfig, scratch: &mut Scratch) -> f64 {
        let samples = self.averages.len;
        if samples >= c.likelihood_warmup
            && (self.centre_avg.is_nan() || self.seen.is_multiple_of(LIKELIHOOD_REESTIMATION))
        {
            self.estimate_average_distribution(&mut scratch.values);
        }
        // Learn the average after judging it.
        self.averages.push(average);
        if samples < c.likelihood_warmup || self.centre_avg.is_nan() {
            return 1.0;
        }
        let std = self.spread_avg.max(c.min_average_spread);
        let tail = if average > self.centre_avg {
            0.5 * erfc((average - self.centre_avg) / (std * std::f64::consts::SQRT_2))
        } else {
            0.5
        };
        // HTM's filter: only the first of a run of very unlikely averages keeps its value.
        let red = tail <= RED_TAIL;
        let reported = if red && self.was_red {
            YELLOW_TAIL
        } else {
            tail
        };
        self.was_red = red;
        reported
    }

    /// Median and MAD (as a standard deviation) of the recent averages: robust, so past
    /// anomalies in the history do not widen what counts as normal.
    fn estimate_average_distribution(&mut self, buf: &mut Vec<f64>) {
        buf.clear();
        buf.extend((0..self.averages.len).map(|b| self.averages.back(b)));
        let centre = median(buf);
        for v in buf.iter_mut() {
            *v = (*v - centre).abs();
        }
        self.spread_avg = median(buf) * 1.4826;
        self.centre_avg = centre;
    }

    fn train(&mut self, c: &DetectorConfig, scratch: &mut Scratch) {
        let context = c.context();
        let available = self.values.len.saturating_sub(context);
        if available < c.clusters * 2 {
            return;
        }
        // Robust centre and scale of the history.
        let recent = &mut scratch.values;
        recent.clear();
        recent.extend((0..self.values.len).map(|b| self.values.back(b)));
        let (lo, hi) = recent
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(*v), hi.max(*v))
            });
        let centre = median(recent);
        for v in recent.iter_mut() {
            *v = (*v - centre).abs();
        }
        let mad = median(recent) * 1.4826;
        let spread = hi - lo;
        let scale = if mad > 0.0 {
            mad
        } else if spread > 0.0 {
            spread / 4.0
        } else {
            return;
        };
        let samples = available.min(c.train_sample);
        let step = available as f64 / samples as f64;
        let dims = c.dims();
        let mut records = Array2::<f64>::zeros((samples, dims));
        for s in 0..samples {
            let back = (s as f64 * step) as usize;
            self.fill_features(&mut scratch.features, back, c, (centre, scale));
            for (d, f) in scratch.features.iter().enumerate() {
                records[[s, d]] = *f;
            }
        }
        let params = KMeans::params(c.clusters)
            .n_runs(1)
            .max_n_iterations(c.kmeans_iterations)
            .tolerance(1e-4)
            .init_method(KMeansInit::KMeansPlusPlus);
        let Ok(fitted) = params.fit(&DatasetBase::from(records.clone())) else {
            return;
        };
        let mut centroids = Vec::with_capacity(c.clusters * dims);
        for row in fitted.centroids().rows() {
            if row.iter().all(|v| v.is_finite()) {
                centroids.extend(row.iter().copied());
            }
        }
        let rows = centroids.len() / dims;
        if rows == 0 {
            return;
        }
        let mut distances: Vec<f64> = records
            .rows()
            .into_iter()
            .map(|r| {
                let r: Vec<f64> = r.iter().copied().collect();
                nearest_distance(&centroids, rows, &r)
            })
            .collect();
        distances.sort_by(f64::total_cmp);
        let q99 = distances[((distances.len() - 1) as f64 * 0.99).round() as usize];
        self.model = Some(Model {
            centre,
            scale,
            centroids,
            rows,
            d_ref: q99.max(MIN_DISTANCE_SCALE),
        });
    }
}

fn nearest_distance(centroids: &[f64], rows: usize, x: &[f64]) -> f64 {
    let dims = x.len();
    let mut best = f64::INFINITY;
    for r in 0..rows {
        let c = &centroids[r * dims..(r + 1) * dims];
        let d: f64 = c.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum();
        best = best.min(d);
    }
    best.sqrt()
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mid = values.len() / 2;
    let (_, m, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    *m
}

/// The complementary error function, with fractional error below 1.2e-7 everywhere
/// (Numerical Recipes' Chebyshev fit), enough for tail probabilities down to `1e-10`.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Scores a whole series with a fresh default detector, one score per value.
pub fn score_series(values: &[f64]) -> Vec<f64> {
    let mut detector = Detector::default();
    values.iter().map(|v| detector.update(*v)).collect()
}

/// Writes `timestamp,value,anomaly_score` rows (NAB's results layout, with its timestamp
/// format and enough digits that distinct scores stay distinct).
pub fn write_scores_csv<W: Write>(
    out: &mut W,
    rows: &[(chrono::NaiveDateTime, f64)],
    scores: &[f64],
) -> std::io::Result<()> {
    writeln!(out, "timestamp,value,anomaly_score")?;
    for ((t, v), s) in rows.iter().zip(scores) {
        writeln!(out, "{},{v},{s:.17}", t.format("%Y-%m-%d %H:%M:%S"))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random sequence in [-1, 1] (SplitMix64).
    pub(crate) fn noise(seed: u64, n: usize) -> Vec<f64> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    fn daily(n: usize, seed: u64) -> Vec<f64> {
        let e = noise(seed, n);
        (0..n)
            .map(|i| 10.0 + 3.0 * (i as f64 * std::f64::consts::TAU / 288.0).sin() + 0.3 * e[i])
            .collect()
    }

    #[test]
    fn erfc_matches_known_values() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-7);
        assert!((erfc(1.0) - 0.157_299_207).abs() < 1e-7);
        assert!((erfc(-1.0) - 1.842_700_793).abs() < 1e-7);
        assert!((erfc(4.0) / 1.541_725_790e-8 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn scores_are_in_unit_interval_and_deterministic() {
        let mut series = daily(5000, 1);
        series[3000] += 30.0;
        let a = score_series(&series);
        let b = score_series(&series);
        assert_eq!(a, b);
        assert!(a.iter().all(|s| (0.0..=1.0).contains(s)));
    }

    #[test]
    fn no_look_ahead_truncated_series_score_the_same() {
        let mut series = daily(4000, 2);
        for v in &mut series[2500..2600] {
            *v += 5.0;
        }
        let full = score_series(&series);
        for cut in [1, 149, 150, 151, 999, 1000, 2001, 2550, 3999] {
            let part = score_series(&series[..cut]);
            assert_eq!(part[..], full[..cut], "differs when truncated at {cut}");
        }
    }

    #[test]
    fn state_size_is_bounded() {
        // Every buffer is allocated at full size at construction; past 8 × (history + context)
        // points (here, with a short history) every ring of every scale has wrapped.
        let small = DetectorConfig {
            history: 300,
            ..DetectorConfig::default()
        };
        let mut d = Detector::new(small);
        let series = daily(6_000, 3);
        for v in &series {
            d.update(*v);
        }
        assert!(
            d.scales
                .iter()
                .all(|s| s.values.is_full() && s.averages.is_full())
        );
        let mut d = Detector::default();
        for v in &series[..1_000] {
            d.update(*v);
        }
        let early = d.state_bytes();
        let early_saved = d.to_bytes().len();
        for v in &series[1_000..] {
            d.update(*v);
        }
        assert_eq!(d.state_bytes(), early);
        assert!(d.scales.iter().all(|s| s.model.is_some()));
        assert_eq!(d.points(), 6_000);
        assert!(early < 96 * 1024, "state is {early} bytes");
        // The saved form holds every ring at full size from the start: it does not grow either.
        let saved = d.to_bytes().len();
        assert!(
            saved <= early_saved + 2_000,
            "{early_saved} then {saved} bytes"
        );
        // The floats' eight bytes each, and little else.
        assert!(saved < 72 * 1024, "saved state is {saved} bytes");
    }

    #[test]
    fn restored_detector_scores_as_the_uninterrupted_one() {
        // A short history, so that every phase (warm-up, early trainings, full and wrapped
        // rings, periodic retraining, the likelihood's re-estimation) is reached quickly.
        let config = DetectorConfig {
            history: 300,
            retrain_every: 100,
            ..DetectorConfig::default()
        };
        let mut series = daily(4_000, 6);
        for v in &mut series[3_000..3_100] {
            *v += 4.0;
        }
        series[3_500] += 20.0;
        let mut d = Detector::new(config.clone());
        let full: Vec<f64> = series.iter().map(|v| d.update(*v)).collect();
        assert!(full[3_000..].iter().any(|s| *s >= ALERT_LEVEL));
        // One pass, the detector saved and restored at every cut (warm-up, early trainings,
        // after the rings wrap, inside the anomaly).
        let cuts = [100, 1_237, 2_990, 3_050];
        let mut d = Detector::new(config);
        let mut resumed = Vec::with_capacity(series.len());
        for (i, v) in series.iter().enumerate() {
            if cuts.contains(&i) {
                let bytes = d.to_bytes();
                d = Detector::from_bytes(&bytes).unwrap();
                assert_eq!(d.to_bytes(), bytes);
            }
            resumed.push(d.update(*v));
        }
        assert_eq!(resumed, full);
        assert!(Detector::from_bytes(b"{}").is_err());
        assert!(Detector::from_bytes(b"").is_err());
        assert!(Detector::from_bytes(&[BINARY_FORM, 7, 7, 7]).is_err());
    }

    #[test]
    fn a_tampered_state_is_refused_not_left_to_panic() {
        let mut d = Detector::default();
        for v in daily(700, 2) {
            d.update(v);
        }
        assert!(Detector::from_bytes(&d.to_bytes()).is_ok());
        let mut bad = d.clone();
        bad.scales[0].values.head = bad.scales[0].values.data.len();
        assert!(Detector::from_bytes(&encode(&bad)).is_err());
        let mut bad = d.clone();
        bad.scales[1].raw.data.clear();
        assert!(Detector::from_bytes(&encode(&bad)).is_err());
        let mut bad = d.clone();
        if let Some(m) = bad.scales[0].model.as_mut() {
            m.centroids.pop();
        }
        assert!(Detector::from_bytes(&encode(&bad)).is_err());
        let mut bad = d;
        bad.scales.pop();
        assert!(Detector::from_bytes(&encode(&bad)).is_err());
    }

    #[test]
    fn a_state_saved_in_the_json_form_still_restores() {
        let series = daily(1_200, 8);
        let mut d = Detector::default();
        for v in &series[..900] {
            d.update(*v);
        }
        let json = serde_json::to_vec(&d).unwrap();
        assert_eq!(json.first(), Some(&b'{'));
        let mut restored = Detector::from_bytes(&json).unwrap();
        // By the bytes, not `==`: a NaN in the state is not equal even to itself.
        assert_eq!(restored.to_bytes(), d.to_bytes());
        assert!(
            d.to_bytes().len() * 3 < json.len() * 2,
            "binary not smaller"
        );
        for v in &series[900..] {
            assert_eq!(restored.update(*v).to_bits(), d.update(*v).to_bits());
        }
    }

    #[test]
    fn constant_series_never_scores() {
        let scores = score_series(&vec![7.0; 5000]);
        assert!(scores.iter().all(|s| *s == 0.0));
    }

    #[test]
    fn spike_and_level_shift_are_detected_once() {
        for (name, change) in [
            (
                "spike",
                Box::new(|i: usize| if i == 3000 { 15.0 } else { 0.0 })
                    as Box<dyn Fn(usize) -> f64>,
            ),
            (
                "level shift",
                Box::new(|i: usize| if i >= 3000 { 8.0 } else { 0.0 }),
            ),
        ] {
            let series: Vec<f64> = daily(6000, 4)
                .iter()
                .enumerate()
                .map(|(i, v)| v + change(i))
                .collect();
            let scores = score_series(&series);
            let before = scores[600..3000].iter().cloned().fold(0.0, f64::max);
            let at = scores[3000..3020].iter().cloned().fold(0.0, f64::max);
            assert!(at >= ALERT_LEVEL, "{name}: max score at the change {at}");
            assert!(before < at, "{name}: {before} before the change");
            let confident = scores[3000..].iter().filter(|s| **s >= ALERT_LEVEL).count();
            assert!(confident <= 3, "{name}: {confident} confident detections");
        }
    }

    #[test]
    fn stationary_noise_rarely_scores_high() {
        let e = noise(5, 20_000);
        let scores = score_series(&e);
        let confident = scores[1000..].iter().filter(|s| **s >= ALERT_LEVEL).count();
        assert!(
            confident <= 4,
            "{confident} confident detections on pure noise"
        );
    }

    #[test]
    fn non_finite_values_are_ignored() {
        let mut d = Detector::default();
        assert_eq!(d.update(f64::NAN), 0.0);
        assert_eq!(d.points(), 0);
    }

    #[test]
    fn writes_nab_results_csv() {
        let t = crate::nab::parse_timestamp("2020-01-01 00:00:00").unwrap();
        let mut out = Vec::new();
        write_scores_csv(&mut out, &[(t, 1.5)], &[0.25]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("timestamp,value,anomaly_score\n2020-01-01 00:00:00,1.5,0.25"));
    }
}
