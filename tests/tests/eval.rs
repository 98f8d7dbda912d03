//! `kairos eval next-task` on generated process logs, on malformed ones and, when the shared data
//! is there, on the Helpdesk log.
//!
//! The commands run in process through `kairos::eval::run_from`, which is all the binary's `eval`
//! arm does. The binary's exit code and error line are checked too when a `kairos` binary that
//! knows `eval` sits in this test's target directory (an integration test of another package
//! gets no `CARGO_BIN_EXE_kairos`); otherwise that part is skipped with a note.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// A fresh directory for one test's files.
fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kairos-eval-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `eval` + `args` in process: (stdout, summary) or the error as one line.
fn eval(args: &[&str]) -> Result<(String, Value), String> {
    let mut out = Vec::new();
    kairos::eval::run_from(args, &mut out).map_err(|e| format!("{e:#}"))?;
    let out = String::from_utf8(out).unwrap();
    let last = out.lines().last().unwrap();
    let summary: Value = serde_json::from_str(last).unwrap();
    Ok((out, summary))
}

/// A `kairos` binary of this target directory (this profile's, else the release one) that has
/// `eval`.
fn binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile = exe.parent()?.parent()?;
    let candidates = [
        profile.join("kairos"),
        profile.parent()?.join("release/kairos"),
    ];
    let found = candidates.iter().find(|bin| {
        Command::new(bin)
            .args(["eval", "next-task", "--help"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        println!(
            "note: no kairos binary with `eval` in {}; exit codes checked in process only",
            profile.display()
        );
    }
    found.cloned()
}

/// A log of `cases` cases: a choice at the first step decides the fifth, a loop whose number of
/// rounds the case type decides, and every fifth case id quoted with a comma in it.
fn generated_log(cases: usize) -> String {
    let mut csv = String::from("CaseID,ActivityID,CompleteTimestamp,Resource\n");
    let mut seconds = 0u64;
    for c in 0..cases {
        let id = if c % 5 == 0 {
            format!("\"case {c}, \"\"urgent\"\"\"")
        } else {
            format!("c{c}")
        };
        let kind = ["small", "large"][c % 2];
        let mut tasks = vec!["register", kind, "triage"];
        for _ in 0..(1 + c % 2) {
            tasks.extend(["work", "check"]);
        }
        tasks.push(if kind == "small" { "close" } else { "escalate" });
        if c % 7 == 0 {
            tasks.truncate(1);
        }
        for t in tasks {
            seconds += 37;
            let time = chrono::DateTime::from_timestamp(1_600_000_000 + seconds as i64, 0).unwrap();
            csv.push_str(&format!(
                "{id},{t},{},r1\n",
                time.format("%Y-%m-%d %H:%M:%S")
            ));
        }
    }
    csv
}

/// Splits one output row, honouring the quoting of the first field.
fn row_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut rest = line;
    while !rest.is_empty() || fields.len() < 4 {
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut field = String::new();
            let mut chars = quoted.char_indices().peekable();
            let mut end = quoted.len();
            while let Some((i, ch)) = chars.next() {
                if ch == '"' {
                    if chars.peek().map(|(_, c)| *c) == Some('"') {
                        chars.next();
                        field.push('"');
                    } else {
                        end = i + 1;
                        break;
                    }
                } else {
                    field.push(ch);
                }
            }
            fields.push(field);
            rest = quoted[end..].strip_prefix(',').unwrap_or(&quoted[end..]);
        } else {
            let (field, tail) = rest.split_once(',').unwrap_or((rest, ""));
            fields.push(field.to_owned());
            rest = tail;
            if tail.is_empty() && fields.len() >= 4 {
                break;
            }
        }
    }
    fields
}

/// The rows of a predictions file after its header: (case, prefix_len, actual, predicted).
fn rows(text: &str) -> Vec<(String, usize, String, String)> {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("case_id,prefix_len,actual,predicted"));
    lines
        .filter(|l| !l.starts_with('{'))
        .map(|l| {
            let f = row_fields(l);
            assert_eq!(f.len(), 4, "{l}");
            (
                f[0].clone(),
                f[1].parse().unwrap(),
                f[2].clone(),
                f[3].clone(),
            )
        })
        .collect()
}

#[test]
fn split_mode_writes_one_row_per_prediction_and_a_matching_summary() {
    let dir = temp_dir();
    let csv = dir.join("log.csv");
    std::fs::write(&csv, generated_log(300)).unwrap();
    let (stdout, summary) = eval(&["next-task", "--csv", csv.to_str().unwrap()]).unwrap();
    let rows = rows(&stdout);
    let correct = rows.iter().filter(|r| r.2 == r.3).count();
    assert_eq!(summary["mode"], "split");
    assert_eq!(summary["cases"], 300);
    assert_eq!(summary["train_cases"], 200);
    assert_eq!(summary["test_cases"], 100);
    assert_eq!(summary["predictions"], rows.len());
    assert_eq!(summary["correct"], correct);
    let accuracy = summary["accuracy"].as_f64().unwrap();
    assert!((accuracy - correct as f64 / rows.len() as f64).abs() < 1e-12);
    // Test cases are 200..300; the truncated ones (every 7th) give no prediction.
    let predicted_cases = (200..300).filter(|c| c % 7 != 0).count();
    let mut cases: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    cases.dedup();
    assert_eq!(cases.len(), predicted_cases);
    assert!(
        cases.contains(&"case 205, \"urgent\""),
        "quoted ids survive: {cases:?}"
    );
    assert!(rows.iter().all(|r| r.1 >= 2));
    assert!(rows.iter().any(|r| r.2 == "END" && r.3 == "END"));
    // The structure is learnable: the loop and the long-range choice are predicted.
    assert!(accuracy > 0.95, "{summary}");
    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with('{'), "the summary is the last line");
}

#[test]
fn online_mode_predicts_every_event_and_every_end_once() {
    let dir = temp_dir();
    let csv = dir.join("log.csv");
    let out = dir.join("predictions.csv");
    std::fs::write(&csv, generated_log(90)).unwrap();
    let args = [
        "next-task",
        "--csv",
        csv.to_str().unwrap(),
        "--mode",
        "online",
        "--out",
        out.to_str().unwrap(),
    ];
    let (stdout, summary) = eval(&args).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "only the summary on stdout: {stdout}"
    );
    let rows = rows(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(summary["mode"], "online");
    assert_eq!(summary["predictions"], summary["events"]);
    assert_eq!(rows.len() as u64, summary["events"].as_u64().unwrap());
    let ends = rows.iter().filter(|r| r.2 == "END").count();
    assert_eq!(ends, 90);
    let correct = rows.iter().filter(|r| r.2 == r.3).count();
    assert_eq!(summary["correct"], correct);
    assert!(rows.iter().all(|r| r.1 >= 1));
}

#[test]
fn columns_can_be_chosen() {
    let dir = temp_dir();
    let csv = dir.join("log.csv");
    let text = "when,what,who\n2020-01-01T10:00:00Z,a,1\n2020-01-01T10:00:01.5,b,1\n\
                2020-01-01 10:00:02,a,2\n2020-01-01 10:00:03,b,2\n2020-01-01 10:00:04,a,3\n";
    std::fs::write(&csv, text).unwrap();
    let args = [
        "next-task",
        "--csv",
        csv.to_str().unwrap(),
        "--case-col",
        "2",
        "--activity-col",
        "1",
        "--time-col",
        "0",
    ];
    let (stdout, summary) = eval(&args).unwrap();
    assert_eq!(summary["cases"], 3);
    assert_eq!(summary["train_cases"], 2);
    // Case 3 has one event: no prediction.
    assert_eq!(summary["predictions"], 0);
    assert_eq!(summary["accuracy"], Value::Null);
    assert_eq!(rows(&stdout).len(), 0);
}

#[test]
fn malformed_logs_are_refused_with_the_line_and_column() {
    let dir = temp_dir();
    let good = "CaseID,ActivityID,CompleteTimestamp\n1,a,2012-04-03 16:55:38\n";
    let huge = "x".repeat(100_000);
    let cases: Vec<(&str, String, &str)> = vec![
        ("missing column", format!("{good}2,b\n"), "line 3"),
        (
            "bad time",
            format!("{good}2,b,2012-13-03 16:55:38\n"),
            "line 3, column 2",
        ),
        (
            "empty case id",
            format!("{good},b,2012-04-03 16:55:38\n"),
            "line 3, column 0",
        ),
        (
            "control character",
            format!("{good}2,b\u{7},2012-04-03 16:55:38\n"),
            "line 3, column 1",
        ),
        (
            "huge field",
            format!("{good}2,{huge},2012-04-03 16:55:38\n"),
            "line 3, column 1",
        ),
        (
            "unterminated quote",
            format!("{good}\"2,b,2012-04-03 16:55:38\n"),
            "line 3",
        ),
        ("empty file", String::new(), "empty"),
        ("header only short", "CaseID,ActivityID\n".into(), "line 1"),
        (
            "blank line inside",
            format!("{good}\n2,b,2012-04-03 16:55:38\n"),
            "line 3",
        ),
    ];
    let bin = binary();
    for (what, text, expected) in &cases {
        let csv = dir.join("bad.csv");
        std::fs::write(&csv, text).unwrap();
        let err = eval(&["next-task", "--csv", csv.to_str().unwrap()])
            .expect_err(&format!("{what} is refused"));
        assert!(err.contains(expected), "{what}: {err}");
        assert!(!err.contains('\n'), "{what}: one line: {err}");
        assert!(err.len() < 300, "{what}: short: {err}");
        if let Some(bin) = &bin {
            let out = Command::new(bin)
                .args(["eval", "next-task", "--csv", csv.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(!out.status.success(), "{what}: non-zero exit");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(stderr.trim_end().lines().count(), 1, "{what}: {stderr}");
            assert!(stderr.contains(expected), "{what}: {stderr}");
        }
    }
    let bytes = [good.as_bytes(), b"2,\xff\xfe,2012-04-03 16:55:38\n"].concat();
    let csv = dir.join("latin1.csv");
    std::fs::write(&csv, bytes).unwrap();
    let err = eval(&["next-task", "--csv", csv.to_str().unwrap()]).unwrap_err();
    assert!(err.contains("line 3: not UTF-8"), "{err}");
    let err = eval(&[
        "next-task",
        "--csv",
        dir.join("absent.csv").to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn helpdesk_reaches_the_accuracy_target() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/process-logs/helpdesk.csv");
    if !path.is_file() {
        println!(
            "note: {} is absent; Helpdesk accuracy not checked",
            path.display()
        );
        return;
    }
    let (stdout, summary) = eval(&["next-task", "--csv", path.to_str().unwrap()]).unwrap();
    assert_eq!(summary["events"], 13_710);
    assert_eq!(summary["cases"], 3_804);
    let rows = rows(&stdout);
    let correct = rows.iter().filter(|r| r.2 == r.3).count();
    assert_eq!(summary["predictions"], rows.len());
    let accuracy = summary["accuracy"].as_f64().unwrap();
    assert!((accuracy - correct as f64 / rows.len() as f64).abs() < 1e-12);
    assert!(accuracy >= 0.80, "{summary}");
    println!("helpdesk split: {summary}");
    let (_, online) = eval(&[
        "next-task",
        "--csv",
        path.to_str().unwrap(),
        "--mode",
        "online",
    ])
    .unwrap();
    println!("helpdesk online: {online}");
}

/// `eval` + `args` in process: the whole output, or the error as one line.
fn eval_text(args: &[&str]) -> Result<String, String> {
    let mut out = Vec::new();
    kairos::eval::run_from(args, &mut out).map_err(|e| format!("{e:#}"))?;
    Ok(String::from_utf8(out).unwrap())
}

/// `kairos eval anomalies`: one `timestamp,value,anomaly_score` row per point, scores in [0, 1],
/// the spike of a flat noisy series scored highest; a malformed series is refused.
#[test]
fn anomalies_scores_every_point_and_the_spike_most() {
    let dir = temp_dir();
    let mut csv = String::from("timestamp,value\n");
    for i in 0..2000u32 {
        let noise = f64::from((i * 7919) % 13) / 13.0;
        let value = if i == 1500 { 80.0 } else { 10.0 + noise };
        csv.push_str(&format!(
            "2026-01-{:02} {:02}:{:02}:00,{value}\n",
            1 + i / 1440,
            (i / 60) % 24,
            i % 60
        ));
    }
    let path = dir.join("series.csv");
    std::fs::write(&path, csv).unwrap();
    let out = eval_text(&["anomalies", "--csv", path.to_str().unwrap()]).unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("timestamp,value,anomaly_score"));
    let scores: Vec<f64> = lines
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(scores.len(), 2000);
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)), "{scores:?}");
    let top = scores
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert_eq!(top, 1500, "the spike scores highest");

    std::fs::write(&path, "timestamp,value\n2026-01-01 00:00:00,abc\n").unwrap();
    let err = eval_text(&["anomalies", "--csv", path.to_str().unwrap()]).unwrap_err();
    assert!(
        err.contains("line 2") && err.contains("not a number"),
        "{err}"
    );
    std::fs::write(&path, "time,value\n").unwrap();
    let err = eval_text(&["anomalies", "--csv", path.to_str().unwrap()]).unwrap_err();
    assert!(err.contains("timestamp"), "{err}");
}

/// `kairos eval nab` on two of the shared NAB series (when ../shared is there): the three
/// profiles, the standard one last, each a normalised score.
#[test]
fn nab_prints_the_three_profiles_standard_last() {
    let nab = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/nab");
    if !nab.join("combined_windows.json").is_file() {
        eprintln!("note: {} is absent; skipped", nab.display());
        return;
    }
    let dir = temp_dir();
    for key in [
        "artificialWithAnomaly/art_daily_jumpsup.csv",
        "artificialNoAnomaly/art_daily_small_noise.csv",
    ] {
        std::fs::create_dir_all(dir.join(key).parent().unwrap()).unwrap();
        std::fs::copy(nab.join(key), dir.join(key)).unwrap();
    }
    let out = eval_text(&[
        "nab",
        "--data",
        dir.to_str().unwrap(),
        "--windows",
        nab.join("combined_windows.json").to_str().unwrap(),
        "--profiles",
        nab.join("profiles.json").to_str().unwrap(),
    ])
    .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "2 files scored", "{out}");
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[3].starts_with("standard: "), "{out}");
    for l in &lines[1..] {
        let score: f64 = l
            .split(": ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(score.is_finite() && score <= 100.0, "{l}");
    }
    // The jump in art_daily_jumpsup is found: the standard score beats the null detector's 0.
    let standard: f64 = lines[3][10..].split(' ').next().unwrap().parse().unwrap();
    assert!(standard > 0.0, "{out}");
}
