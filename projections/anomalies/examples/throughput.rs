//! Measures the detector's throughput over many series at once, points interleaved as a
//! service receives them.
//!
//! `cargo run --release -p kairos-anomalies --example throughput -- [series] [points per series]`

use std::time::Instant;

use kairos_anomalies::detector::Detector;

fn main() {
    let mut args = std::env::args().skip(1);
    let series: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let points: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3000);
    let mut detectors: Vec<Detector> = (0..series).map(|_| Detector::default()).collect();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let started = Instant::now();
    let mut checksum = 0.0;
    for i in 0..points {
        for (s, d) in detectors.iter_mut().enumerate() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state >> 11) as f64 / (1u64 << 53) as f64;
            let phase = (i + 37 * s) as f64 * std::f64::consts::TAU / 288.0;
            checksum += d.update(10.0 + 3.0 * phase.sin() + noise);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = series * points;
    println!(
        "{series} series x {points} points = {total} points in {elapsed:.2} s: {:.0} points/s \
         ({:.2} us/point), {} bytes of state per series, {} bytes saved (checksum {checksum:.1})",
        total as f64 / elapsed,
        elapsed * 1e6 / total as f64,
        detectors[0].state_bytes(),
        detectors[0].to_bytes().len()
    );
}
