//! `kairos eval next-task`: measures the next-task model ([`kairos_workflows::next`]) on a process
//! log in CSV, offline, with the same code the workflows projection runs.
//!
//! # Input
//!
//! A CSV file with a header row; one event per row, with the case (session) id, the activity (task
//! type) and the time in the columns given by `--case-col`, `--activity-col` and `--time-col`
//! (0-based, as in error messages; default 0, 1, 2). Other columns are ignored. Fields may be
//! quoted (RFC 4180, `""` inside quotes). Times are `YYYY-MM-DD HH:MM:SS`, `YYYY-MM-DDTHH:MM:SS`
//! (both optionally with a fraction, read as UTC) or RFC 3339. The file is refused, with the line
//! and column of the first problem, when a row lacks a column, a case id, activity or time is
//! empty, a time does not parse, a field holds a control character or is longer than
//! [`MAX_FIELD_BYTES`], a line is not UTF-8 or a quote is misplaced.
//!
//! # Protocols
//!
//! - `--mode split` (default; Tax et al. 2017): cases in order of first appearance, each case's
//!   events in file order. The first `round(2/3 × cases)` cases train the model; for each other
//!   case of length `n` and each prefix length `k` from 2 to `n`, the model predicts what follows
//!   the first `k` events: event `k + 1`, or END after the last one. The model does not learn
//!   from the test cases. A case of one event gives no prediction.
//! - `--mode online`: every event of the log in time order (ties in file order; a case's events
//!   in that same order). Each event of a case but its first is predicted from the case's events
//!   before it, then learned. Right after a case's last event (the log says which one it is), END
//!   is predicted from the whole case, then learned. So every case of `n` events gives `n`
//!   predictions (prefix lengths 1 to `n`), and every prediction is made before the model has
//!   seen its answer. The only look-ahead is knowing, at its last event, that a case is complete.
//!
//! # Output
//!
//! One row per prediction, `case_id,prefix_len,actual,predicted` after a header row, END as
//! `END` and an empty `predicted` when the model has nothing to suggest yet, to `--out` or else
//! stdout. The last line on stdout is a JSON summary: `accuracy` (correct / predictions, `null`
//! when there are none), `predictions`, `correct`, `mode`, `events`, `cases`, `train_cases`
//! and `test_cases` (split), `contexts` (kept by the model at the end) and `elapsed_ms`.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail};
use chrono::{DateTime, NaiveDateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};
use kairos_workflows::next::{Config, Model, Next};
use serde::Serialize;

/// The longest field accepted, in bytes.
pub const MAX_FIELD_BYTES: usize = 1024;

/// `kairos eval …`.
#[derive(Debug, Clone, Subcommand)]
pub enum EvalCommand {
    /// Predict the next activity of every case prefix of a process log (CSV) and score it.
    NextTask(NextTaskArgs),
    /// Score every point of a `timestamp,value` series with the streaming anomaly detector;
    /// writes `timestamp,value,anomaly_score` rows (NAB's detector-result format).
    Anomalies(AnomaliesArgs),
    /// Score the detector on a NAB data directory with NAB's method; prints the
    /// reward-low-FN, reward-low-FP and standard scores, the standard one last.
    Nab(NabArgs),
}

/// `kairos eval anomalies` options.
#[derive(Debug, Clone, clap::Args)]
pub struct AnomaliesArgs {
    /// A CSV with a header naming `timestamp` and `value` columns.
    #[arg(long)]
    pub csv: PathBuf,
    /// Write the scores here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `kairos eval nab` options.
#[derive(Debug, Clone, clap::Args)]
pub struct NabArgs {
    /// The data directory: `<category>/<file>.csv`, as the windows file names them.
    #[arg(long)]
    pub data: PathBuf,
    /// NAB's `combined_windows.json`.
    #[arg(long)]
    pub windows: PathBuf,
    /// NAB's `profiles.json`.
    #[arg(long)]
    pub profiles: PathBuf,
    /// Also write each file's scores under this directory (`<category>/<file>.csv`).
    #[arg(long)]
    pub results: Option<PathBuf>,
}

/// `kairos eval next-task` options.
#[derive(Debug, Clone, clap::Args)]
pub struct NextTaskArgs {
    /// The log: CSV with a header row.
    #[arg(long)]
    pub csv: PathBuf,
    /// Column of the case id (0-based).
    #[arg(long, default_value_t = 0)]
    pub case_col: usize,
    /// Column of the activity (0-based).
    #[arg(long, default_value_t = 1)]
    pub activity_col: usize,
    /// Column of the time (0-based).
    #[arg(long, default_value_t = 2)]
    pub time_col: usize,
    /// Write the predictions here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// `split`: train on the first two thirds of the cases, test on the rest; `online`: predict
    /// every event in time order before learning it.
    #[arg(long, value_enum, default_value_t = Mode::Split)]
    pub mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Split,
    Online,
}

/// The JSON summary line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub mode: Mode,
    pub accuracy: Option<f64>,
    pub predictions: u64,
    pub correct: u64,
    pub events: usize,
    pub cases: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_cases: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_cases: Option<usize>,
    pub contexts: usize,
    pub elapsed_ms: u64,
}

#[derive(Parser)]
#[command(name = "kairos eval")]
struct EvalCli {
    #[command(subcommand)]
    command: EvalCommand,
}

/// Runs `kairos eval` from its arguments after `eval` (e.g. `["next-task", "--csv", "log.csv"]`),
/// as the binary does: predictions (without `--out`) and the summary go to `stdout`.
pub fn run_from<I, S>(args: I, stdout: &mut dyn Write) -> anyhow::Result<()>
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    let argv = std::iter::once("eval".into()).chain(args.into_iter().map(Into::into));
    let cli =
        EvalCli::try_parse_from(argv).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))?;
    run(cli.command, stdout)
}

/// Runs one `kairos eval` command; see the module documentation.
pub fn run(command: EvalCommand, stdout: &mut dyn Write) -> anyhow::Result<()> {
    match command {
        EvalCommand::NextTask(args) => next_task(&args, stdout).map(|_| ()),
        EvalCommand::Anomalies(args) => anomalies(&args, stdout),
        EvalCommand::Nab(args) => nab(&args, stdout),
    }
}

/// `kairos eval anomalies`: the detector the anomalies projection runs, over one series.
pub fn anomalies(args: &AnomaliesArgs, stdout: &mut dyn Write) -> anyhow::Result<()> {
    let rows = kairos_anomalies::nab::read_data_file(&args.csv)?;
    let values: Vec<f64> = rows.iter().map(|(_, v)| *v).collect();
    let scores = kairos_anomalies::detector::score_series(&values);
    match &args.out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let mut w = std::io::BufWriter::new(file);
            kairos_anomalies::detector::write_scores_csv(&mut w, &rows, &scores)?;
            w.flush()
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => {
            let mut w = std::io::BufWriter::new(stdout);
            kairos_anomalies::detector::write_scores_csv(&mut w, &rows, &scores)?;
            w.flush()?;
        }
    }
    Ok(())
}

/// `kairos eval nab`: every series the windows name, scored by the detector, then NAB's scoring
/// (windows, probation, scaled sigmoid, the threshold swept per profile, normalised between the
/// null and perfect detectors).
pub fn nab(args: &NabArgs, stdout: &mut dyn Write) -> anyhow::Result<()> {
    use kairos_anomalies::{detector, nab};
    let windows = nab::read_windows(&args.windows)?;
    let profiles = nab::read_profiles(&args.profiles)?;
    let corpus = nab::read_corpus(&args.data, &windows)?;
    if corpus.is_empty() {
        bail!(
            "no data file of {} is under {}",
            args.windows.display(),
            args.data.display()
        );
    }
    let mut results = nab::Results::new();
    for (key, rows) in &corpus {
        let values: Vec<f64> = rows.iter().map(|(_, v)| *v).collect();
        let scores = detector::score_series(&values);
        if let Some(dir) = &args.results {
            let path = dir.join(key);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let mut w = std::io::BufWriter::new(
                std::fs::File::create(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?,
            );
            detector::write_scores_csv(&mut w, rows, &scores)?;
            w.flush()?;
        }
        results.insert(
            key.clone(),
            rows.iter().map(|(t, _)| *t).zip(scores).collect(),
        );
    }
    let mut scored = nab::score_corpus(&results, &windows, &profiles)?;
    // The standard profile last, the others by name.
    scored.sort_by_key(|p| (p.profile == "standard", p.profile.clone()));
    writeln!(stdout, "{} files scored", results.len())?;
    for p in &scored {
        writeln!(
            stdout,
            "{}: {:.1} (threshold {:.4})",
            p.profile, p.normalised_score, p.threshold
        )?;
    }
    Ok(())
}

/// `kairos eval next-task`.
pub fn next_task(args: &NextTaskArgs, stdout: &mut dyn Write) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let bytes =
        std::fs::read(&args.csv).with_context(|| format!("cannot read {}", args.csv.display()))?;
    let log = parse_log(&bytes, args).with_context(|| args.csv.display().to_string())?;
    let mut summary = match &args.out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let mut w = std::io::BufWriter::new(file);
            let s = evaluate(&log, args.mode, &mut w)?;
            w.flush()
                .with_context(|| format!("cannot write {}", path.display()))?;
            s
        }
        None => {
            let mut w = std::io::BufWriter::new(&mut *stdout);
            let s = evaluate(&log, args.mode, &mut w)?;
            w.flush()?;
            s
        }
    };
    summary.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    writeln!(stdout, "{}", serde_json::to_string(&summary)?)?;
    stdout.flush()?;
    Ok(summary)
}

/// One case: its id and activities, in file order.
struct Case {
    id: String,
    tasks: Vec<String>,
}

/// A parsed log: the cases in order of first appearance and every event as
/// `(time, case index, index in the case)` in file order.
struct Log {
    cases: Vec<Case>,
    events: Vec<(DateTime<Utc>, usize, usize)>,
}

fn evaluate(log: &Log, mode: Mode, out: &mut dyn Write) -> anyhow::Result<Summary> {
    writeln!(out, "case_id,prefix_len,actual,predicted")?;
    let mut model = Model::new(Config::default());
    let mut score = Score::default();
    let (mut train_cases, mut test_cases) = (None, None);
    match mode {
        Mode::Split => {
            // round(2n/3): 2n/3 is never halfway between integers, so (2n + 1) / 3 is it.
            let train = (2 * log.cases.len() + 1) / 3;
            for case in &log.cases[..train] {
                model.learn_session(&case.tasks);
            }
            for case in &log.cases[train..] {
                for k in 2..=case.tasks.len() {
                    let actual = case
                        .tasks
                        .get(k)
                        .map_or(Next::End, |t| Next::Task(t.clone()));
                    score.predict(&model, &case.id, &case.tasks[..k], &actual, out)?;
                }
            }
            train_cases = Some(train);
            test_cases = Some(log.cases.len() - train);
        }
        Mode::Online => {
            let mut order: Vec<usize> = (0..log.events.len()).collect();
            // Stable: ties keep file order.
            order.sort_by_key(|&i| log.events[i].0);
            let mut so_far: Vec<Case> = log
                .cases
                .iter()
                .map(|c| Case {
                    id: c.id.clone(),
                    tasks: Vec::with_capacity(c.tasks.len()),
                })
                .collect();
            for i in order {
                let (_, c, j) = log.events[i];
                let task = Next::Task(log.cases[c].tasks[j].clone());
                let case = &mut so_far[c];
                if !case.tasks.is_empty() {
                    score.predict(&model, &case.id, &case.tasks, &task, out)?;
                }
                model.learn(&case.tasks, &task);
                case.tasks.push(log.cases[c].tasks[j].clone());
                if case.tasks.len() == log.cases[c].tasks.len() {
                    score.predict(&model, &case.id, &case.tasks, &Next::End, out)?;
                    model.learn(&case.tasks, &Next::End);
                }
            }
        }
    }
    let accuracy = (score.predictions > 0).then(|| score.correct as f64 / score.predictions as f64);
    Ok(Summary {
        mode,
        accuracy,
        predictions: score.predictions,
        correct: score.correct,
        events: log.events.len(),
        cases: log.cases.len(),
        train_cases,
        test_cases,
        contexts: model.len(),
        elapsed_ms: 0,
    })
}

#[derive(Default)]
struct Score {
    predictions: u64,
    correct: u64,
}

impl Score {
    /// Predicts what follows `prefix` of case `id`; `actual` is what did.
    fn predict(
        &mut self,
        model: &Model,
        id: &str,
        prefix: &[String],
        actual: &Next,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let predicted = model.predict(prefix, 1).into_iter().next().map(|s| s.next);
        self.predictions += 1;
        if predicted.as_ref() == Some(actual) {
            self.correct += 1;
        }
        writeln!(
            out,
            "{},{},{},{}",
            csv_field(id),
            prefix.len(),
            csv_field(actual.label()),
            csv_field(predicted.as_ref().map_or("", Next::label)),
        )?;
        Ok(())
    }
}

fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

fn parse_log(bytes: &[u8], args: &NextTaskArgs) -> anyhow::Result<Log> {
    let needed = args.case_col.max(args.activity_col).max(args.time_col) + 1;
    let mut lines = bytes.split(|b| *b == b'\n').enumerate().peekable();
    let Some((_, header)) = lines.next().filter(|(_, l)| !l.is_empty()) else {
        bail!("the file is empty (a header row is expected)");
    };
    let header = parse_row(header, 1)?;
    if header.len() < needed {
        bail!(
            "line 1 (header): {} columns, but --case-col {}, --activity-col {} and --time-col {} \
             need {needed}",
            header.len(),
            args.case_col,
            args.activity_col,
            args.time_col
        );
    }
    let name = |col: usize| header[col].clone();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut log = Log {
        cases: Vec::new(),
        events: Vec::new(),
    };
    while let Some((i, line)) = lines.next() {
        let n = i + 1;
        if line.is_empty() || line == b"\r" {
            if lines.peek().is_none() {
                break;
            }
            bail!("line {n}: empty line");
        }
        let row = parse_row(line, n)?;
        if row.len() < needed {
            bail!(
                "line {n}: {} columns, {needed} expected (no column {})",
                row.len(),
                row.len()
            );
        }
        let field = |col: usize| -> anyhow::Result<&str> {
            let v = row[col].as_str();
            if v.is_empty() {
                bail!("line {n}, column {col} ({}): empty", name(col));
            }
            Ok(v)
        };
        let case = field(args.case_col)?;
        let task = field(args.activity_col)?;
        let raw_time = field(args.time_col)?;
        let Some(time) = parse_time(raw_time) else {
            bail!(
                "line {n}, column {} ({}): cannot read {} as a time (YYYY-MM-DD HH:MM:SS or RFC \
                 3339 expected)",
                args.time_col,
                name(args.time_col),
                shown(raw_time)
            );
        };
        let c = match index.get(case) {
            Some(&c) => c,
            None => {
                index.insert(case.to_owned(), log.cases.len());
                log.cases.push(Case {
                    id: case.to_owned(),
                    tasks: Vec::new(),
                });
                log.cases.len() - 1
            }
        };
        log.events.push((time, c, log.cases[c].tasks.len()));
        log.cases[c].tasks.push(task.to_owned());
    }
    Ok(log)
}

/// The fields of one line (`n` is its 1-based number), strictly: RFC 4180 quoting, no control
/// character, no field over [`MAX_FIELD_BYTES`].
fn parse_row(line: &[u8], n: usize) -> anyhow::Result<Vec<String>> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        bail!("line {n}: not UTF-8");
    };
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let col = fields.len();
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => bail!("line {n}, column {col}: unterminated quoted field"),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
                check_field(&field, n, col)?;
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => {}
                Some(_) => bail!("line {n}, column {col}: text after a closing quote"),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        check_field(&field, n, col)?;
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => bail!("line {n}, column {col}: a quote inside an unquoted field"),
                    Some(c) => field.push(c),
                }
                check_field(&field, n, col)?;
            }
        }
        check_field(&field, n, col)?;
        fields.push(field);
    }
}

fn check_field(field: &str, n: usize, col: usize) -> anyhow::Result<()> {
    if field.len() > MAX_FIELD_BYTES {
        bail!("line {n}, column {col}: field longer than {MAX_FIELD_BYTES} bytes");
    }
    if let Some(c) = field.chars().last().filter(|c| c.is_control()) {
        bail!(
            "line {n}, column {col}: control character {} in {}",
            c.escape_unicode(),
            shown(field)
        );
    }
    Ok(())
}

/// Input quoted for an error message: escaped and cut short.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(40).collect();
    let more = if cut.len() < s.len() { "…" } else { "" };
    format!("\"{}{more}\"", cut.escape_debug())
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_every_accepted_form() {
        for s in [
            "2012-04-03 16:55:38",
            "2012-04-03T16:55:38",
            "2012-04-03T16:55:38.250",
            "2012-04-03 16:55:38.250",
            "2012-04-03T16:55:38Z",
            "2012-04-03T18:55:38+02:00",
        ] {
            let t = parse_time(s).unwrap_or_else(|| panic!("{s} parses"));
            assert_eq!(
                t.format("%Y-%m-%d %H:%M:%S").to_string(),
                "2012-04-03 16:55:38"
            );
        }
        for s in [
            "2012-04-03",
            "2012-13-03 16:55:38",
            "yesterday",
            "2012-04-03 16:55",
        ] {
            assert!(parse_time(s).is_none(), "{s} refused");
        }
    }

    #[test]
    fn rows_follow_rfc_4180() {
        let row = parse_row(br#"a,"b,c","d""e","#, 2).map_err(|e| e.to_string());
        assert_eq!(
            row,
            Ok(vec!["a".into(), "b,c".into(), "d\"e".into(), String::new()])
        );
        for bad in [&b"a,\"b"[..], b"a,b\"c", b"\"a\"b", b"a\tb", b"\xff"] {
            assert!(parse_row(bad, 2).is_err(), "{bad:?} refused");
        }
    }
}
