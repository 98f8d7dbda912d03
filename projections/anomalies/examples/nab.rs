//! Runs the default detector over a NAB data directory and prints NAB's three profile scores
//! (standard last), overall and per category.
//!
//! `cargo run --release -p kairos-anomalies --example nab -- /work/shared/data/nab [--detail]`

use std::path::PathBuf;
use std::time::Instant;

use kairos_anomalies::detector::{Detector, score_series, write_scores_csv};
use kairos_anomalies::nab::{self, Results};

/// Selects the files of a category by key.
type Keep = fn(&str) -> bool;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "/work/shared/data/nab".into()),
    );
    let rest: Vec<String> = args.collect();
    let detail = rest.iter().any(|a| a == "--detail");
    let out = rest
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| rest.get(i + 1))
        .map(PathBuf::from);
    let windows = nab::read_windows(&dir.join("combined_windows.json"))?;
    let profiles = nab::read_profiles(&dir.join("profiles.json"))?;
    let corpus = nab::read_corpus(&dir, &windows)?;

    let started = Instant::now();
    let mut points = 0usize;
    let mut results = Results::new();
    for (key, rows) in &corpus {
        let values: Vec<f64> = rows.iter().map(|(_, v)| *v).collect();
        points += values.len();
        let scores = if std::env::var("NAB_DEBUG").is_ok_and(|k| *key == k) {
            let mut d = Detector::default();
            values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let s = d.update(*v);
                    let p = d.last_parts();
                    println!(
                        "{i} {v:.2} raw {:.3} avg {:.3} lik {:.3} spatial {} damped {} -> {s:.3}",
                        p.raw, p.average, p.likelihood, p.range_novel, p.damped
                    );
                    s
                })
                .collect()
        } else {
            score_series(&values)
        };
        if let Some(out) = &out {
            let path = out.join(key);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
            write_scores_csv(&mut file, rows, &scores)?;
        }
        results.insert(
            key.clone(),
            rows.iter().map(|(t, _)| *t).zip(scores).collect(),
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{} files, {points} points scored in {elapsed:.3} s ({:.0} points/s)",
        corpus.len(),
        points as f64 / elapsed
    );

    let subsets: [(&str, Keep); 3] = [
        ("all", |_| true),
        ("realKnownCause", |k| k.starts_with("realKnownCause/")),
        ("artificial", |k| k.starts_with("artificial")),
    ];
    let mut scores = nab::score_corpus(&results, &windows, &profiles)?;
    // Standard last.
    scores.sort_by_key(|p| p.profile == "standard");
    for p in &scores {
        print!("{:<20} threshold {:.6}", p.profile, p.threshold);
        for (name, keep) in &subsets {
            print!("  {name} {:.1}", p.normalised_for(keep));
        }
        println!();
    }
    // Each category with its own optimal threshold, as a NAB run on that category alone.
    for (name, keep) in &subsets[1..] {
        let subset: Results = results
            .iter()
            .filter(|(k, _)| keep(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut own = nab::score_corpus(&subset, &windows, &profiles)?;
        own.sort_by_key(|p| p.profile == "standard");
        let line: Vec<String> = own
            .iter()
            .map(|p| format!("{} {:.1}", p.profile, p.normalised_score))
            .collect();
        println!("{name} alone (own threshold): {}", line.join(", "));
    }
    if detail && let Some(standard) = scores.last() {
        for f in &standard.files {
            println!(
                "{:<58} score {:>7.3}  windows {}/{}  fp rows {:>3}  first {:?}",
                f.key, f.score, f.detected_windows, f.windows, f.fp, f.first_detections
            );
        }
    }
    Ok(())
}
