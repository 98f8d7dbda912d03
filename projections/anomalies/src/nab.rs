//! The Numenta Anomaly Benchmark's scoring, reimplemented from `numenta/NAB` (`nab/sweeper.py`,
//! `nab/optimizer.py`, `nab/runner.py`), so a detector can be scored without Python.
//!
//! # What is implemented
//!
//! For every file, and every profile (a cost matrix `A_tp`, `A_fp`, `A_fn`):
//!
//! * **Probationary period**: the first `min(floor(0.15 * rows), 0.15 * 5000)` rows, i.e. at most 750
//!   (`Sweeper._getProbationaryLength`). Those rows are dropped before the sweep, whatever their
//!   score or window.
//! * **Windows**: each window `[start, end]` of `combined_windows.json` covers the rows whose
//!   timestamp lies in it; `width` = number of rows. Windows are taken in order of start.
//! * **Per-row weights** (`Sweeper.calcSweepScore`), with `σ(x) = 2 / (1 + e^{5x}) - 1` and
//!   `σ(x) = -1` for `x >= 3`:
//!   * a row `i` inside a window whose last row is `r` weighs
//!     `A_tp * σ(-(r - i + 1) / width) / σ(-1)`: exactly `A_tp` at the window's first row, about
//!     `0.86 * A_tp` half-way, and `A_tp * σ(-1 / width) / σ(-1)` (near `0`) at its last;
//!   * a row outside every window, after a window whose last row is `r` and width `w`, weighs
//!     `A_fp * σ(|r - i| / (w - 1))`: about `0` just after the window, `-A_fp` far from it;
//!   * a row before any window weighs `A_fp * σ(3) = -A_fp`.
//! * **Score at a threshold** `t` (rows with `anomaly_score >= t` are detections): each window
//!   contributes the largest weight among its detections (so only the earliest counts), or
//!   `-A_fn` if it has none; every detection outside windows adds its (negative) weight.
//! * **Threshold sweep** (`Sweeper.calcScoreByThreshold` over all files' rows together, as
//!   `optimizer.optimizeThreshold` does): thresholds are `1.1` (nothing detected) and every distinct
//!   anomaly score, visited from the highest down; the best total wins, ties going to the higher
//!   threshold (Python's stable sort of the candidate list by score).
//! * **Normalisation** (`Runner.normalize`): `100 * (raw - null) / (perfect - null)` with
//!   `perfect = A_tp * windows` and `null = -A_fn * windows` (the null detector's best threshold
//!   is the one that detects nothing).
//!
//! # Where this departs from, or had to guess at, NAB
//!
//! * NAB enters a window only at a row whose timestamp *equals* the window's start, and looks its
//!   end up with `timestamps.index(end)`; a label that does not fall on a row would make NAB skip
//!   the window (and every later one) or crash. Here a window covers the rows whose timestamp lies
//!   within it, which is the same thing for NAB's own labels (they fall on rows) and sane otherwise.
//!   A window covering no row is ignored.
//! * A window of one row makes NAB divide by zero (`w - 1 = 0`) when weighing later false
//!   positives; here those weigh `-A_fp`, as if far from it.
//! * A window that lies wholly in the probationary period has no scorable row; NAB then leaves it
//!   out of the raw score (no `-A_fn`) but still counts it in `perfect`; this does the same. NAB's
//!   corpus has no such window.
//! * `perfect` and `null` count the windows of the files being scored; NAB counts every window of
//!   the label file, which is the same when the results cover the corpus.
//! * Thresholds are compared as `f64`; NAB's CSV round trip can make two scores that differ in the
//!   last digits equal. Scores are best written with enough digits (see
//!   [`write_scores_csv`](crate::detector::write_scores_csv)).
//! * `tnWeight` is read but, as in NAB, unused.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};

/// NAB's probationary fraction of each file.
pub const PROBATION_PERCENT: f64 = 0.15;

/// The threshold at which nothing is detected, the first one NAB's sweep records.
const NO_DETECTION_THRESHOLD: f64 = 1.1;

/// An error reading or scoring NAB inputs, with the file or key at fault.
#[derive(Debug)]
pub enum NabError {
    /// A file could not be read.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A JSON file is not in NAB's format.
    Json { path: PathBuf, message: String },
    /// A CSV row or header is malformed.
    Csv {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A timestamp is neither `YYYY-MM-DD HH:MM:SS` nor `YYYY-MM-DD HH:MM:SS.ffffff`.
    Timestamp { value: String },
    /// A results file has no labels, or labels name no results.
    MissingFile { key: String },
    /// Nothing to score.
    Empty,
}

impl fmt::Display for NabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            Self::Json { path, message } => {
                write!(f, "{} is not NAB JSON: {message}", path.display())
            }
            Self::Csv {
                path,
                line,
                message,
            } => {
                write!(f, "{} line {line}: {message}", path.display())
            }
            Self::Timestamp { value } => write!(
                f,
                "timestamp {value:?} is not `YYYY-MM-DD HH:MM:SS[.ffffff]`"
            ),
            Self::MissingFile { key } => write!(f, "no labelled windows for results file {key}"),
            Self::Empty => write!(f, "no results to score"),
        }
    }
}

impl std::error::Error for NabError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Parses NAB's timestamps, with or without fractional seconds.
pub fn parse_timestamp(value: &str) -> Result<NaiveDateTime, NabError> {
    let trimmed = value.trim();
    NaiveDateTime::parse_from_str(trimmed, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(trimmed, "%Y-%m-%dT%H:%M:%S%.f"))
        .map_err(|_| NabError::Timestamp {
            value: value.to_owned(),
        })
}

/// One labelled anomaly window, both ends inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    pub start: NaiveDateTime,
    pub end: NaiveDateTime,
}

/// Windows per file key (`"realKnownCause/nyc_taxi.csv"`), as in `combined_windows.json`.
pub type Windows = BTreeMap<String, Vec<Window>>;

/// A profile's weights (`profiles.json`'s `CostMatrix`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CostMatrix {
    #[serde(rename = "tpWeight")]
    pub tp_weight: f64,
    #[serde(rename = "fpWeight")]
    pub fp_weight: f64,
    #[serde(rename = "fnWeight")]
    pub fn_weight: f64,
    #[serde(rename = "tnWeight", default)]
    pub tn_weight: f64,
}

#[derive(Deserialize)]
struct ProfileJson {
    #[serde(rename = "CostMatrix")]
    cost_matrix: CostMatrix,
}

/// Profiles by name (`standard`, `reward_low_FP_rate`, `reward_low_FN_rate`).
pub type Profiles = BTreeMap<String, CostMatrix>;

/// One detector output row: a timestamp and its anomaly score.
pub type ScoredRow = (NaiveDateTime, f64);

/// Detector outputs per file key.
pub type Results = BTreeMap<String, Vec<ScoredRow>>;

fn read_text(path: &Path) -> Result<String, NabError> {
    std::fs::read_to_string(path).map_err(|source| NabError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Parses `combined_windows.json`: `{"dir/file.csv": [["start", "end"], ...], ...}`.
pub fn parse_windows(json: &str) -> Result<Windows, String> {
    let raw: BTreeMap<String, Vec<(String, String)>> =
        serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut windows = Windows::new();
    for (key, limits) in raw {
        let mut list = Vec::with_capacity(limits.len());
        for (start, end) in limits {
            let start = parse_timestamp(&start).map_err(|e| format!("{key}: {e}"))?;
            let end = parse_timestamp(&end).map_err(|e| format!("{key}: {e}"))?;
            list.push(Window { start, end });
        }
        list.sort();
        windows.insert(key, list);
    }
    Ok(windows)
}

/// Reads `combined_windows.json`.
pub fn read_windows(path: &Path) -> Result<Windows, NabError> {
    parse_windows(&read_text(path)?).map_err(|message| NabError::Json {
        path: path.to_owned(),
        message,
    })
}

/// Parses `profiles.json`: `{"standard": {"CostMatrix": {"tpWeight": 1.0, ...}}, ...}`.
pub fn parse_profiles(json: &str) -> Result<Profiles, String> {
    let raw: BTreeMap<String, ProfileJson> =
        serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(raw.into_iter().map(|(k, v)| (k, v.cost_matrix)).collect())
}

/// Reads `profiles.json`.
pub fn read_profiles(path: &Path) -> Result<Profiles, NabError> {
    parse_profiles(&read_text(path)?).map_err(|message| NabError::Json {
        path: path.to_owned(),
        message,
    })
}

/// Reads a CSV with a header naming a `timestamp` column and `column`, returning those two.
pub fn read_csv_column(path: &Path, column: &str) -> Result<Vec<ScoredRow>, NabError> {
    let text = read_text(path)?;
    let csv_error = |line: usize, message: String| NabError::Csv {
        path: path.to_owned(),
        line,
        message,
    };
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> = match lines.next() {
        Some((_, h)) => h.split(',').map(str::trim).collect(),
        None => return Err(csv_error(1, "empty file".into())),
    };
    let position = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| csv_error(1, format!("no `{name}` column in header")))
    };
    let ts_col = position("timestamp")?;
    let value_col = position(column)?;
    let mut rows = Vec::new();
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let (Some(ts), Some(v)) = (fields.get(ts_col), fields.get(value_col)) else {
            return Err(csv_error(n + 1, "too few fields".into()));
        };
        let ts = parse_timestamp(ts).map_err(|e| csv_error(n + 1, e.to_string()))?;
        let v: f64 = v
            .trim()
            .parse()
            .map_err(|_| csv_error(n + 1, format!("`{}` is not a number", v.trim())))?;
        rows.push((ts, v));
    }
    Ok(rows)
}

/// Reads a NAB data file (`timestamp,value`).
pub fn read_data_file(path: &Path) -> Result<Vec<ScoredRow>, NabError> {
    read_csv_column(path, "value")
}

/// Reads every data file under `data_dir` that `windows` names, keyed as in `windows`.
pub fn read_corpus(data_dir: &Path, windows: &Windows) -> Result<Results, NabError> {
    let mut corpus = Results::new();
    for key in windows.keys() {
        let path = data_dir.join(key);
        if path.is_file() {
            corpus.insert(key.clone(), read_data_file(&path)?);
        }
    }
    Ok(corpus)
}

/// Reads a results directory laid out as NAB's (`DIR/<category>/<detector>_<file>.csv`, or
/// `DIR/<category>/<file>.csv`), each with `timestamp` and `anomaly_score` columns, for every file
/// `windows` names that has one.
pub fn read_results_dir(dir: &Path, windows: &Windows) -> Result<Results, NabError> {
    let mut results = Results::new();
    for key in windows.keys() {
        let relative = Path::new(key);
        let (Some(category), Some(file)) = (relative.parent(), relative.file_name()) else {
            continue;
        };
        let file = file.to_string_lossy();
        let folder = dir.join(category);
        let direct = folder.join(&*file);
        let found = if direct.is_file() {
            Some(direct)
        } else {
            std::fs::read_dir(&folder).ok().and_then(|entries| {
                let suffix = format!("_{file}");
                let mut matches: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().ends_with(&suffix))
                    })
                    .collect();
                matches.sort();
                matches.into_iter().next()
            })
        };
        if let Some(path) = found {
            results.insert(key.clone(), read_csv_column(&path, "anomaly_score")?);
        }
    }
    Ok(results)
}

/// NAB's scaled sigmoid of a relative position (`-1` = a window's start, `0` its end, `> 0` past
/// it).
pub fn scaled_sigmoid(relative_position: f64) -> f64 {
    if relative_position >= 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * relative_position).exp()) - 1.0
    }
}

/// Where a row falls relative to the labels.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RowKind {
    Probation,
    /// Inside window number `.0` of its file.
    Window(usize),
    Outside,
}

/// One file's rows, weighed once per profile.
struct FileRows {
    kinds: Vec<RowKind>,
    /// The window-position weight of each row with unit `A_tp` and `A_fp` (sign included).
    unit_weights: Vec<f64>,
    scores: Vec<f64>,
    windows: usize,
    /// Windows with at least one scorable row.
    scorable_windows: Vec<bool>,
}

fn probationary_length(rows: usize) -> usize {
    let by_fraction = (PROBATION_PERCENT * rows as f64).floor();
    by_fraction.min(PROBATION_PERCENT * 5000.0) as usize
}

fn weigh_file(rows: &[ScoredRow], windows: &[Window]) -> FileRows {
    let n = rows.len();
    let probation = probationary_length(n);
    // Row ranges of the windows; empty ones are dropped.
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for w in windows {
        let first = rows.iter().position(|(t, _)| *t >= w.start);
        let last = rows.iter().rposition(|(t, _)| *t <= w.end);
        if let (Some(a), Some(b)) = (first, last)
            && a <= b
        {
            ranges.push((a, b));
        }
    }
    let max_tp = scaled_sigmoid(-1.0);
    let mut kinds = Vec::with_capacity(n);
    let mut unit_weights = Vec::with_capacity(n);
    let mut next = 0;
    let mut current: Option<usize> = None;
    let mut previous: Option<(usize, usize)> = None; // (last row, width)
    for i in 0..n {
        if current.is_none() && next < ranges.len() && ranges[next].0 == i {
            current = Some(next);
            next += 1;
        }
        let weight = match current {
            Some(w) => {
                let (a, b) = ranges[w];
                let width = (b - a + 1) as f64;
                let position = -((b as f64) - (i as f64) + 1.0) / width;
                scaled_sigmoid(position) / max_tp
            }
            None => match previous {
                None => scaled_sigmoid(3.0),
                Some((_, width)) if width <= 1 => -1.0,
                Some((last, width)) => {
                    scaled_sigmoid((i as f64 - last as f64).abs() / (width as f64 - 1.0))
                }
            },
        };
        let kind = if i < probation {
            RowKind::Probation
        } else {
            match current {
                Some(w) => RowKind::Window(w),
                None => RowKind::Outside,
            }
        };
        kinds.push(kind);
        unit_weights.push(weight);
        if let Some(w) = current
            && ranges[w].1 == i
        {
            let (a, b) = ranges[w];
            previous = Some((b, b - a + 1));
            current = None;
        }
    }
    let mut scorable_windows = vec![false; ranges.len()];
    for k in &kinds {
        if let RowKind::Window(w) = k {
            scorable_windows[*w] = true;
        }
    }
    FileRows {
        kinds,
        unit_weights,
        scores: rows.iter().map(|(_, s)| *s).collect(),
        windows: ranges.len(),
        scorable_windows,
    }
}

/// One file's outcome at a profile's chosen threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileScore {
    pub key: String,
    /// The file's raw NAB score (its windows' and false positives' sum).
    pub score: f64,
    /// Windows (with scorable rows) and how many were detected.
    pub windows: usize,
    pub detected_windows: usize,
    /// Row counts, as NAB reports them (rows after the probationary period).
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
    pub tn: usize,
    /// Index (in the file's rows) of the first detection in each detected window.
    pub first_detections: Vec<usize>,
}

/// A profile's result over a corpus.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileScore {
    pub profile: String,
    pub cost: CostMatrix,
    /// Scores at or above it are detections.
    pub threshold: f64,
    pub raw_score: f64,
    pub null_score: f64,
    pub perfect_score: f64,
    /// `100 * (raw - null) / (perfect - null)`.
    pub normalised_score: f64,
    pub files: Vec<FileScore>,
}

impl ProfileScore {
    /// The normalised score of the files `keep` selects, at this profile's threshold (NAB's
    /// per-category figures are computed this way).
    pub fn normalised_for(&self, keep: impl Fn(&str) -> bool) -> f64 {
        let (raw, windows) = self
            .files
            .iter()
            .filter(|f| keep(&f.key))
            .fold((0.0, 0usize), |(r, w), f| (r + f.score, w + f.windows));
        normalise(raw, windows, &self.cost)
    }
}

fn normalise(raw: f64, windows: usize, cost: &CostMatrix) -> f64 {
    let perfect = cost.tp_weight * windows as f64;
    let null = -cost.fn_weight * windows as f64;
    if perfect == null {
        0.0
    } else {
        100.0 * (raw - null) / (perfect - null)
    }
}

/// Scores a corpus of detector results against its windows for every profile: NAB's threshold
/// sweep over all files together, then each file's detail at the chosen threshold.
///
/// ```
/// use kairos_anomalies::nab::{parse_profiles, parse_timestamp, score_corpus, Results, Window, Windows};
/// let t = |m: u32| parse_timestamp(&format!("2020-01-01 00:{m:02}:00")).unwrap();
/// let rows: Vec<_> = (0..40).map(|m| (t(m), if m == 30 { 1.0 } else { 0.0 })).collect();
/// let windows = Windows::from([("a/f.csv".to_owned(), vec![Window { start: t(30), end: t(34) }])]);
/// let profiles = parse_profiles(r#"{"standard": {"CostMatrix":
///     {"tpWeight": 1.0, "fpWeight": 0.11, "fnWeight": 1.0, "tnWeight": 1.0}}}"#).unwrap();
/// let scores = score_corpus(&Results::from([("a/f.csv".to_owned(), rows)]), &windows, &profiles).unwrap();
/// assert!((scores[0].normalised_score - 100.0).abs() < 1e-9);
/// ```
pub fn score_corpus(
    results: &Results,
    windows: &Windows,
    profiles: &Profiles,
) -> Result<Vec<ProfileScore>, NabError> {
    if results.is_empty() {
        return Err(NabError::Empty);
    }
    let mut files = Vec::with_capacity(results.len());
    for (key, rows) in results {
        let file_windows = windows
            .get(key)
            .ok_or_else(|| NabError::MissingFile { key: key.clone() })?;
        files.push((key.as_str(), weigh_file(rows, file_windows)));
    }
    let total_windows: usize = files.iter().map(|(_, f)| f.windows).sum();
    // Every scorable row of the corpus, highest score first (stable, like Python's sort).
    let mut order: Vec<(usize, usize)> = files
        .iter()
        .enumerate()
        .flat_map(|(fi, (_, f))| {
            f.kinds
                .iter()
                .enumerate()
                .filter(|(_, k)| **k != RowKind::Probation)
                .map(move |(ri, _)| (fi, ri))
        })
        .collect();
    order.sort_by(|a, b| {
        let sa = files[a.0].1.scores[a.1];
        let sb = files[b.0].1.scores[b.1];
        sb.total_cmp(&sa)
    });

    let mut out = Vec::with_capacity(profiles.len());
    for (name, cost) in profiles {
        let threshold = sweep(&files, &order, cost);
        let mut file_scores = Vec::with_capacity(files.len());
        for (key, f) in &files {
            file_scores.push(score_file(key, f, cost, threshold));
        }
        let raw: f64 = file_scores.iter().map(|f| f.score).sum();
        out.push(ProfileScore {
            profile: name.clone(),
            cost: *cost,
            threshold,
            raw_score: raw,
            null_score: -cost.fn_weight * total_windows as f64,
            perfect_score: cost.tp_weight * total_windows as f64,
            normalised_score: normalise(raw, total_windows, cost),
            files: file_scores,
        });
    }
    Ok(out)
}

/// NAB's sweep: the threshold with the best corpus score, ties to the higher threshold.
fn sweep(files: &[(&str, FileRows)], order: &[(usize, usize)], cost: &CostMatrix) -> f64 {
    // Each window's current part of the score, initially a miss.
    let mut parts: Vec<Vec<f64>> = files
        .iter()
        .map(|(_, f)| {
            f.scorable_windows
                .iter()
                .map(|s| if *s { -cost.fn_weight } else { 0.0 })
                .collect()
        })
        .collect();
    let mut total: f64 = parts.iter().flatten().sum();
    let mut best = (total, NO_DETECTION_THRESHOLD);
    let mut current = NO_DETECTION_THRESHOLD;
    for &(fi, ri) in order {
        let f = &files[fi].1;
        let score = f.scores[ri];
        if score != current {
            if total > best.0 {
                best = (total, current);
            }
            current = score;
        }
        match f.kinds[ri] {
            RowKind::Window(w) => {
                let weight = f.unit_weights[ri] * cost.tp_weight;
                let part = &mut parts[fi][w];
                if weight > *part {
                    total += weight - *part;
                    *part = weight;
                }
            }
            RowKind::Outside => total += f.unit_weights[ri] * cost.fp_weight,
            RowKind::Probation => {}
        }
    }
    if total > best.0 {
        best = (total, current);
    }
    best.1
}

fn score_file(key: &str, f: &FileRows, cost: &CostMatrix, threshold: f64) -> FileScore {
    let mut parts: Vec<Option<(f64, usize)>> = vec![None; f.windows];
    let (mut tp, mut fp, mut fn_, mut tn) = (0, 0, 0, 0);
    let mut fp_score = 0.0;
    for (i, kind) in f.kinds.iter().enumerate() {
        let detected = f.scores[i] >= threshold;
        match (kind, detected) {
            (RowKind::Probation, _) => {}
            (RowKind::Window(w), true) => {
                tp += 1;
                if parts[*w].is_none() {
                    parts[*w] = Some((f.unit_weights[i] * cost.tp_weight, i));
                }
            }
            (RowKind::Window(_), false) => fn_ += 1,
            (RowKind::Outside, true) => {
                fp += 1;
                fp_score += f.unit_weights[i] * cost.fp_weight;
            }
            (RowKind::Outside, false) => tn += 1,
        }
    }
    let mut score = fp_score;
    let mut first_detections = Vec::new();
    let mut detected_windows = 0;
    let mut windows = 0;
    for (w, part) in parts.iter().enumerate() {
        if !f.scorable_windows[w] {
            continue;
        }
        windows += 1;
        match part {
            Some((weight, i)) => {
                score += weight;
                detected_windows += 1;
                first_detections.push(*i);
            }
            None => score -= cost.fn_weight,
        }
    }
    FileScore {
        key: key.to_owned(),
        score,
        windows,
        detected_windows,
        tp,
        fp,
        fn_,
        tn,
        first_detections,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn t(i: usize) -> NaiveDateTime {
        let base = parse_timestamp("2020-01-01 00:00:00").unwrap();
        base + chrono::Duration::minutes(i as i64)
    }

    fn standard() -> Profiles {
        parse_profiles(
            r#"{"standard": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 1.0,
                "fpWeight": 0.11, "tnWeight": 1.0}},
               "reward_low_FN_rate": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 2.0,
                "fpWeight": 0.11, "tnWeight": 1.0}}}"#,
        )
        .unwrap()
    }

    /// 100 rows (probation 15), one window over rows 50..=59.
    fn corpus(scores: impl Fn(usize) -> f64) -> (Results, Windows) {
        let rows = (0..100).map(|i| (t(i), scores(i))).collect();
        let windows = Windows::from([(
            "a/f.csv".to_owned(),
            vec![Window {
                start: t(50),
                end: t(59),
            }],
        )]);
        (Results::from([("a/f.csv".to_owned(), rows)]), windows)
    }

    fn standard_of(scores: impl Fn(usize) -> f64) -> ProfileScore {
        let (results, windows) = corpus(scores);
        score_corpus(&results, &windows, &standard())
            .unwrap()
            .into_iter()
            .find(|p| p.profile == "standard")
            .unwrap()
    }

    #[test]
    fn sigmoid_matches_nab_reference_points() {
        assert!((scaled_sigmoid(-1.0) - 0.986_614_298_151_430_3).abs() < 1e-12);
        assert!((scaled_sigmoid(-0.5) - 0.848_283_639_957_512_9).abs() < 1e-12);
        assert!(scaled_sigmoid(0.0).abs() < 1e-12);
        assert_eq!(scaled_sigmoid(3.0), -1.0);
    }

    #[test]
    fn probation_is_fifteen_percent_capped_at_750() {
        assert_eq!(probationary_length(100), 15);
        assert_eq!(probationary_length(4032), 604);
        assert_eq!(probationary_length(22695), 750);
    }

    #[test]
    fn perfect_detector_scores_100_and_null_0() {
        let perfect = standard_of(|i| if i == 50 { 1.0 } else { 0.0 });
        assert!((perfect.normalised_score - 100.0).abs() < 1e-9);
        assert!((perfect.raw_score - 1.0).abs() < 1e-12);
        assert_eq!(perfect.files[0].first_detections, vec![50]);
        let null = standard_of(|_| 0.5);
        assert!(null.normalised_score.abs() < 1e-9);
        assert_eq!(null.threshold, NO_DETECTION_THRESHOLD);
        assert!((null.raw_score + 1.0).abs() < 1e-12);
    }

    #[test]
    fn detection_at_window_end_is_worth_less_than_at_start() {
        // At the last row: σ(-1/10) / σ(-1).
        let late = standard_of(|i| if i == 59 { 1.0 } else { 0.0 });
        let expected = scaled_sigmoid(-0.1) / scaled_sigmoid(-1.0);
        assert!((late.raw_score - expected).abs() < 1e-12);
        assert!((late.normalised_score - 50.0 * (1.0 + expected)).abs() < 1e-9);
        // Only the earliest detection in a window counts.
        let both = standard_of(|i| if i == 50 || i == 59 { 1.0 } else { 0.0 });
        assert!((both.raw_score - 1.0).abs() < 1e-12);
        assert_eq!(both.files[0].tp, 2);
    }

    #[test]
    fn false_positive_cost_grows_with_distance_from_window() {
        // A detection in the window plus one false positive at the given row.
        let with_fp = |row: usize| {
            let (results, windows) = corpus(|i| if i == 50 || i == row { 1.0 } else { 0.0 });
            score_corpus(&results, &windows, &standard()).unwrap()[1].clone()
        };
        // Just after the window (row 60, one row past the last row 59): σ(1/9) * 0.11.
        let near = with_fp(60);
        assert_eq!(near.profile, "standard");
        let expected_near = 1.0 + 0.11 * scaled_sigmoid(1.0 / 9.0);
        assert!((near.raw_score - expected_near).abs() < 1e-12);
        // Far after it (≥ 3 widths): the full -0.11.
        let far = with_fp(95);
        assert!((far.raw_score - 0.89).abs() < 1e-12);
        // Before any window: -0.11 as well.
        let before = with_fp(20);
        assert!((before.raw_score - 0.89).abs() < 1e-12);
        assert!(near.raw_score > far.raw_score);
        // A false positive in the probationary period costs nothing.
        let probation = with_fp(10);
        assert!((probation.raw_score - 1.0).abs() < 1e-12);
    }

    #[test]
    fn sweep_picks_the_best_threshold_over_all_files() {
        // File a: the window's start scores 0.9, three early false positives 0.95.
        // Lowering the threshold to 0.9 gains 2 (a miss becomes a hit) and costs 0.33.
        let (mut results, mut windows) = corpus(|i| match i {
            50 => 0.9,
            20..=22 => 0.95,
            _ => 0.0,
        });
        let (b, wb) = corpus(|i| if i == 55 { 0.8 } else { 0.0 });
        results.insert("b/g.csv".into(), b["a/f.csv"].clone());
        windows.insert("b/g.csv".into(), wb["a/f.csv"].clone());
        let p = &score_corpus(&results, &windows, &standard()).unwrap()[1];
        assert_eq!(p.threshold, 0.8);
        let b_part = scaled_sigmoid(-5.0 / 10.0) / scaled_sigmoid(-1.0);
        assert!((p.raw_score - (1.0 - 0.33 + b_part)).abs() < 1e-12);
        let a_only = p.normalised_for(|k| k.starts_with("a/"));
        assert!((a_only - 100.0 * (2.0 - 0.33) / 2.0).abs() < 1e-9);
    }

    #[test]
    fn reward_low_fn_rate_doubles_the_miss() {
        let (results, windows) = corpus(|_| 0.0);
        let p = &score_corpus(&results, &windows, &standard()).unwrap()[0];
        assert_eq!(p.profile, "reward_low_FN_rate");
        assert!((p.raw_score + 2.0).abs() < 1e-12);
        assert!(p.normalised_score.abs() < 1e-9);
    }

    #[test]
    fn reads_nab_json() {
        let w = parse_windows(
            r#"{"x/a.csv": [["2014-04-10 07:15:00.000000", "2014-04-11 16:45:00.000000"]],
                "x/b.csv": []}"#,
        )
        .unwrap();
        assert_eq!(
            w["x/a.csv"][0].start,
            parse_timestamp("2014-04-10 07:15:00").unwrap()
        );
        assert!(w["x/b.csv"].is_empty());
        assert!(parse_timestamp("10/04/2014").is_err());
    }
}
