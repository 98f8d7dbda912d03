//! Scores the default detector with NAB's scorer on generated series with known anomalies: a
//! check that does not reuse NAB's own files (so a change that helps only there shows up).
//!
//! Each series: a level, optional daily (288 points) and weekly cycles, noise of one of three
//! kinds (uniform, Gaussian-like, spiky heavy-tailed), and one anomaly of one kind (or none), with
//! a NAB-style window (10% of the series, centred on the onset).
//!
//! `cargo run --release -p kairos-anomalies --example synthetic [-- --detail]`

use chrono::TimeDelta;
use kairos_anomalies::detector::score_series;
use kairos_anomalies::nab::{self, Results, Window, Windows};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Roughly standard normal (sum of 4 uniforms).
    fn gauss(&mut self) -> f64 {
        (0..4).map(|_| self.next()).sum::<f64>() * 3f64.sqrt() - 2.0 * 3f64.sqrt()
    }
}

const KINDS: [&str; 9] = [
    "none",
    "spike",
    "shift_up",
    "shift_down",
    "variance",
    "flatten",
    "phase",
    "drift",
    "dropout",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let detail = std::env::args().any(|a| a == "--detail");
    let t0 = nab::parse_timestamp("2020-01-01 00:00:00")?;
    let mut results = Results::new();
    let mut windows = Windows::new();
    let profiles = nab::parse_profiles(
        r#"{"standard": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.11}},
            "reward_low_FP_rate": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.22}},
            "reward_low_FN_rate": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 2.0, "fpWeight": 0.11}}}"#,
    )?;
    for (k, kind) in KINDS.iter().enumerate() {
        for variant in 0..8u64 {
            let mut rng = Rng(1000 * k as u64 + variant + 7);
            let n = [4032, 6000, 8064, 10_000][variant as usize % 4];
            let seasonal = variant % 2 == 0;
            let noise_kind = variant / 2 % 3;
            let level = 10.0 + 90.0 * rng.next();
            let daily = if seasonal {
                level * (0.2 + 0.3 * rng.next())
            } else {
                0.0
            };
            let sigma = level * (0.02 + 0.08 * rng.next());
            let onset = (n as f64 * (0.45 + 0.4 * rng.next())) as usize;
            let mut values = Vec::with_capacity(n);
            let mut drift = 0.0;
            for i in 0..n {
                let phase = i as f64 * std::f64::consts::TAU / 288.0;
                let weekday = (i / 288) % 7;
                let week = if seasonal && weekday >= 5 { 0.7 } else { 1.0 };
                let mut cycle = daily * phase.sin() * week;
                let mut e = match noise_kind {
                    0 => (rng.next() * 2.0 - 1.0) * sigma * 1.7,
                    1 => rng.gauss() * sigma,
                    _ => {
                        let spike = if rng.next() < 0.01 {
                            4.0 * sigma * rng.next()
                        } else {
                            0.0
                        };
                        rng.gauss() * sigma * 0.7 + spike
                    }
                };
                let mut extra = 0.0;
                let spread = daily.max(3.0 * sigma);
                if i >= onset {
                    match *kind {
                        "spike" if i < onset + 2 => extra = 2.5 * spread + 4.0 * sigma,
                        "shift_up" => extra = 0.6 * spread + 3.0 * sigma,
                        "shift_down" => extra = -(0.6 * spread + 3.0 * sigma),
                        "variance" => e *= 4.0,
                        "flatten" if i < onset + 288 => {
                            cycle = if seasonal { 0.0 } else { cycle };
                            if !seasonal {
                                e *= 0.1;
                            }
                        }
                        "phase" if seasonal => cycle = daily * (phase * 2.0).sin() * week,
                        "phase" => {
                            e = (i as f64 * std::f64::consts::TAU / 20.0).sin() * sigma * 3.0
                        }
                        "drift" => {
                            drift += spread / 300.0;
                            extra = drift;
                        }
                        "dropout" if i < onset + 30 => {
                            extra = -level - cycle;
                            cycle = 0.0;
                            e = 0.0;
                        }
                        _ => {}
                    }
                }
                values.push(level + cycle + e + extra);
            }
            let key = format!("{kind}/{kind}_{variant}.csv");
            let at = |i: usize| t0 + TimeDelta::minutes(5 * i as i64);
            let half = n / 20;
            let w = if *kind == "none" {
                vec![]
            } else {
                vec![Window {
                    start: at(onset.saturating_sub(half)),
                    end: at((onset + half).min(n - 1)),
                }]
            };
            windows.insert(key.clone(), w);
            let scores = score_series(&values);
            results.insert(key, (0..n).map(at).zip(scores).collect());
        }
    }
    let mut scores = nab::score_corpus(&results, &windows, &profiles)?;
    scores.sort_by_key(|p| p.profile == "standard");
    for p in &scores {
        print!(
            "{:<20} thr {:.4} all {:.1} |",
            p.profile, p.threshold, p.normalised_score
        );
        for kind in &KINDS[1..] {
            print!(" {kind} {:.0}", p.normalised_for(|k| k.starts_with(kind)));
        }
        println!();
    }
    if let Some(standard) = scores.last() {
        let fp: usize = standard.files.iter().map(|f| f.fp).sum();
        let det: usize = standard.files.iter().map(|f| f.detected_windows).sum();
        let win: usize = standard.files.iter().map(|f| f.windows).sum();
        println!("standard: {det}/{win} windows, {fp} fp rows");
        if detail {
            for f in &standard.files {
                println!(
                    "{:<28} score {:>7.3} windows {}/{} fp {:>3} first {:?}",
                    f.key, f.score, f.detected_windows, f.windows, f.fp, f.first_detections
                );
            }
        }
    }
    Ok(())
}
