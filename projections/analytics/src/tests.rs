//! Unit tests of the fold, pricing, re-pricing and tiling, without NATS or PostgreSQL. Each
//! compares against a brute-force recomputation from the calls themselves.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use kairos_events::Money;
use kairos_events::types::{ModelSpec, PriceSpec};
use proptest::prelude::*;

use super::*;

fn t(s: &str) -> DateTime<Utc> {
    s.parse().expect("an RFC 3339 time")
}

fn money(s: &str) -> Money {
    Money::parse(s).expect("an amount")
}

/// A model with `prices` as (valid_from, input, output per million tokens).
fn spec(name: &str, local: bool, prices: &[(&str, &str, &str)]) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        provider: "p".into(),
        context_window: 100_000,
        max_output_tokens: 1_000,
        local,
        tier: 3,
        tags: Vec::new(),
        retired: false,
        prices: prices
            .iter()
            .map(|(from, i, o)| PriceSpec {
                valid_from: t(from),
                input_per_mtok: money(i),
                output_per_mtok: money(o),
            })
            .collect(),
    }
}

fn call(at: &str, model: &str, input: u64, output: u64, cost: Option<&str>, latency: u64) -> Call {
    Call {
        at: t(at),
        project: "acme".into(),
        model: model.into(),
        provider: "p".into(),
        input_tokens: input,
        output_tokens: output,
        cost: cost.map(money),
        latency_ms: latency,
        error: false,
    }
}

/// What a bucket must hold, computed call by call with `catalog`'s `cost_at`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Expected {
    calls: i64,
    errors: i64,
    input_tokens: i64,
    output_tokens: i64,
    reported_calls: i64,
    reported_cost: i64,
    catalog_cost: i64,
    cost: i64,
    unpriced_calls: i64,
    latencies: Vec<u64>,
}

fn brute_force(calls: &[Call], catalog: &[ModelSpec], grain: Grain) -> BTreeMap<Key, Expected> {
    let mut out: BTreeMap<Key, Expected> = BTreeMap::new();
    for c in calls {
        let e = out.entry(c.key(grain)).or_default();
        let spec = catalog.iter().find(|m| m.name == c.model);
        let priced = spec.and_then(|s| s.cost_at(c.at, c.input_tokens, c.output_tokens));
        e.calls += 1;
        e.errors += i64::from(c.error);
        e.input_tokens += c.input_tokens as i64;
        e.output_tokens += c.output_tokens as i64;
        e.catalog_cost += priced.map_or(0, Money::nanos);
        match c.cost {
            Some(cost) => {
                e.reported_calls += 1;
                e.reported_cost += cost.nanos();
                e.cost += cost.nanos();
            }
            None => match priced {
                Some(p) => e.cost += p.nanos(),
                None => e.unpriced_calls += 1,
            },
        }
        e.latencies.push(c.latency_ms);
    }
    out
}

fn observed(rows: &Rows, grain: Grain) -> BTreeMap<Key, Expected> {
    rows.grains[grain as usize]
        .iter()
        .map(|(k, l)| {
            let b = &l.bucket;
            (
                k.clone(),
                Expected {
                    calls: b.calls,
                    errors: b.errors,
                    input_tokens: b.input_tokens,
                    output_tokens: b.output_tokens,
                    reported_calls: b.reported_calls,
                    reported_cost: b.reported_cost,
                    catalog_cost: b.priced.catalog_cost,
                    cost: b.priced.cost,
                    unpriced_calls: b.priced.unpriced_calls,
                    latencies: Vec::new(),
                },
            )
        })
        .collect()
}

/// The exact order statistic the sketch approximates: rank floor(q * (n - 1)).
fn exact_quantile(values: &[u64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    v[(q * (v.len() as f64 - 1.0)).floor() as usize] as f64
}

fn assert_close(sketched: Option<f64>, exact: f64, what: &str) {
    let s = sketched.expect("a quantile");
    let tolerance = RELATIVE_ERROR * exact + 1e-9;
    assert!(
        (s - exact).abs() <= tolerance,
        "{what}: sketch {s}, exact {exact}"
    );
}

/// Checks every granularity of `rows` against the brute force, sums exactly and percentiles
/// within the stated error.
fn check(rows: &Rows, calls: &[Call], catalog: &[ModelSpec]) {
    for grain in Grain::ALL {
        let mut expected = brute_force(calls, catalog, grain);
        let latencies: HashMap<Key, Vec<u64>> = expected
            .iter_mut()
            .map(|(k, e)| (k.clone(), std::mem::take(&mut e.latencies)))
            .collect();
        assert_eq!(observed(rows, grain), expected, "{grain:?}");
        for (k, values) in latencies {
            let b = rows.get(grain, &k).expect("the bucket");
            for q in [0.5, 0.95, 0.99] {
                assert_close(
                    b.latency.quantile(q),
                    exact_quantile(&values, q),
                    &format!("{grain:?} {k:?} q{q}"),
                );
            }
        }
    }
}

/// The next batch's view of rows written back: as loaded, nothing dirty.
fn stored(rows: &Rows) -> Rows {
    let mut out = rows.clone();
    for g in &mut out.grains {
        for l in g.values_mut() {
            l.dirty = false;
        }
    }
    out
}

/// What `reprice` does in SQL, in memory: the minutes of each span priced at its rate, then
/// every hour and day row set to the sum of its minutes'.
fn reprice_in_memory(rows: &mut Rows, spans: &[Repricing]) {
    for (k, l) in rows.grains[Grain::Minute as usize].iter_mut() {
        if let Some(s) = spans
            .iter()
            .find(|s| s.model == k.model && s.from <= k.start && k.start < s.to)
        {
            let p = s.rate.map(|(i, o)| PriceSpec {
                valid_from: s.from,
                input_per_mtok: i,
                output_per_mtok: o,
            });
            l.bucket.priced = price(&l.bucket, p.as_ref()).expect("priced");
        }
    }
    let minutes: Vec<(Key, Priced)> = rows.grains[Grain::Minute as usize]
        .iter()
        .map(|(k, l)| (k.clone(), l.bucket.priced))
        .collect();
    for grain in [Grain::Hour, Grain::Day] {
        for l in rows.grains[grain as usize].values_mut() {
            l.bucket.priced = Priced::default();
        }
        for (k, p) in &minutes {
            let key = Key {
                start: grain.floor(k.start),
                ..k.clone()
            };
            let row = rows.grains[grain as usize].get_mut(&key).expect("parent");
            row.bucket.priced = row.bucket.priced.checked_add(*p).expect("no overflow");
        }
    }
}

#[test]
fn grains_floor_ceil_and_count_in_utc() {
    let at = t("2026-11-20T13:47:12.5Z");
    assert_eq!(Grain::Minute.floor(at), t("2026-11-20T13:47:00Z"));
    assert_eq!(Grain::Hour.floor(at), t("2026-11-20T13:00:00Z"));
    assert_eq!(Grain::Day.floor(at), t("2026-11-20T00:00:00Z"));
    assert_eq!(Grain::Minute.ceil(at), t("2026-11-20T13:48:00Z"));
    assert_eq!(
        Grain::Day.ceil(t("2026-11-20T00:00:00Z")),
        t("2026-11-20T00:00:00Z")
    );
    // Before 1970 too.
    assert_eq!(
        Grain::Hour.floor(t("1969-12-31T23:59:59Z")),
        t("1969-12-31T23:00:00Z")
    );
    assert_eq!(
        Grain::Minute.count(t("2026-11-20T00:00:30Z"), t("2026-11-20T00:03:00Z")),
        2
    );
    assert_eq!(Grain::Hour.count(at, at + TimeDelta::hours(24)), 24);
    assert_eq!(Grain::Day.count(at, at), 0);
    assert_eq!(Grain::parse("hour"), Some(Grain::Hour));
    assert_eq!(Grain::parse("week"), None);
}

#[test]
fn a_batch_counts_every_call_at_every_granularity() {
    let catalog = vec![
        spec("gpt", false, &[("2026-01-01T00:00:00Z", "2.50", "10.00")]),
        spec("llama", true, &[]),
    ];
    let mut calls = vec![
        call("2026-11-20T10:00:01Z", "gpt", 1_000, 200, Some("0.01"), 120),
        call("2026-11-20T10:00:59Z", "gpt", 3_000, 100, None, 80),
        call("2026-11-20T10:01:00Z", "gpt", 10, 10, None, 0),
        call("2026-11-20T11:30:00Z", "llama", 500, 500, None, 2_000),
        call("2026-11-21T00:00:00Z", "mystery", 7, 8, None, 33),
        call("2026-11-21T00:00:10Z", "mystery", 7, 8, Some("1.5"), 34),
    ];
    calls[1].error = true;
    let mut rows = Rows::default();
    rows.fold(&calls, &Prices::new(&catalog)).unwrap();
    check(&rows, &calls, &catalog);

    let minute = rows
        .get(Grain::Minute, &calls[0].key(Grain::Minute))
        .unwrap();
    // 1000 * 2.50/M + 200 * 10/M = 0.0045 priced; 3000 * 2.50/M + 100 * 10/M = 0.0085.
    assert_eq!(minute.priced.catalog_cost, 4_500_000 + 8_500_000);
    assert_eq!(minute.priced.cost, 10_000_000 + 8_500_000);
    assert_eq!(
        (minute.calls, minute.errors, minute.reported_calls),
        (2, 1, 1)
    );
    // The local model costs nothing; the unknown one is flagged, not free, and what its
    // producer reported still counts.
    let local = rows.get(Grain::Day, &calls[3].key(Grain::Day)).unwrap();
    assert_eq!(
        (
            local.priced.cost,
            local.priced.unpriced_calls,
            local.input_tokens
        ),
        (0, 0, 500)
    );
    let mystery = rows.get(Grain::Day, &calls[4].key(Grain::Day)).unwrap();
    assert_eq!(
        (
            mystery.priced.cost,
            mystery.priced.unpriced_calls,
            mystery.unreported_input_tokens
        ),
        (1_500_000_000, 1, 7)
    );
}

#[test]
fn folding_in_batches_writes_what_folding_at_once_does() {
    let catalog = vec![spec(
        "gpt",
        false,
        &[("2026-01-01T00:00:00Z", "2.50", "10.00")],
    )];
    let calls: Vec<Call> = (0..300)
        .map(|i| {
            let at = t("2026-11-20T10:00:00Z") + TimeDelta::seconds(i * 17);
            Call {
                at,
                cost: (i % 3 == 0).then(|| Money::from_nanos(i * 1_000)),
                error: i % 7 == 0,
                latency_ms: (i as u64 * 7_919) % 5_000,
                ..call("2026-11-20T10:00:00Z", "gpt", 100 + i as u64, 7, None, 0)
            }
        })
        .collect();
    let prices = Prices::new(&catalog);
    let mut at_once = Rows::default();
    at_once.fold(&calls, &prices).unwrap();
    let mut batched = Rows::default();
    for chunk in calls.chunks(23) {
        batched = stored(&batched);
        batched.fold(chunk, &prices).unwrap();
    }
    check(&batched, &calls, &catalog);
    // Byte for byte, sketches included: a replay (other batch boundaries) writes the same rows.
    for grain in Grain::ALL {
        let dump = |rows: &Rows| -> BTreeMap<Key, String> {
            rows.grains[grain as usize]
                .iter()
                .map(|(k, l)| {
                    (
                        k.clone(),
                        format!(
                            "{:?} {}",
                            l.bucket.priced,
                            l.bucket.latency.to_json().unwrap()
                        ),
                    )
                })
                .collect()
        };
        assert_eq!(dump(&batched), dump(&at_once), "{grain:?}");
    }
}

#[test]
fn a_sketch_reads_back_as_it_was_stored() {
    let mut b = Bucket::default();
    for v in [0, 1, 2, 3, 250, 86_400_000] {
        b.add(&call("2026-11-20T10:00:00Z", "m", 1, 1, None, v))
            .unwrap();
    }
    let json = b.latency.to_json().unwrap();
    let back = Latency::from_json(&json).unwrap();
    assert_eq!(back.to_json().unwrap(), json);
    assert_eq!(back.percentiles(), b.latency.percentiles());
    // As PostgreSQL prints the numbers of a jsonb: 1e-9 as 0.000000001.
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let pg = value.to_string().replace("1e-9", "0.000000001");
    assert_eq!(Latency::from_json(&pg).unwrap().to_json().unwrap(), json);
    // A sketch of another accuracy is refused rather than merged wrongly.
    let other = serde_json::to_string(&DDSketch::new(Config::new(0.05, 2048, 1e-9))).unwrap();
    assert!(Latency::from_json(&other).is_err());
    assert!(Latency::from_json("{}").is_err());
}

#[test]
fn merged_buckets_sum_and_merge_their_sketches() {
    let calls: Vec<Call> = (0..500u64)
        .map(|i| {
            let mut c = call("2026-11-20T10:00:00Z", "m", i, 2 * i, None, (i * i) % 9_973);
            c.at += TimeDelta::minutes(i as i64 % 90);
            c
        })
        .collect();
    let mut rows = Rows::default();
    rows.fold(&calls, &Prices::default()).unwrap();
    let mut total = Bucket::default();
    for l in rows.grains[Grain::Minute as usize].values() {
        total.merge(&l.bucket).unwrap();
    }
    assert_eq!(total.calls, 500);
    assert_eq!(total.priced.unpriced_calls, 500);
    assert_eq!(total.input_tokens, (0..500).sum::<i64>());
    let latencies: Vec<u64> = calls.iter().map(|c| c.latency_ms).collect();
    for q in [0.5, 0.95, 0.99] {
        assert_close(
            total.latency.quantile(q),
            exact_quantile(&latencies, q),
            "merged",
        );
    }
    assert_eq!(Bucket::default().error_rate(), 0.0);
}

#[test]
fn a_catalog_change_reprices_only_where_prices_differ() {
    let gpt = |prices: &[(&str, &str, &str)]| spec("gpt", false, prices);
    let base = vec![
        gpt(&[
            ("2026-01-01T00:00:00Z", "2.50", "10.00"),
            ("2026-11-19T00:00:00Z", "2.00", "8.00"),
        ]),
        spec("llama", true, &[]),
    ];
    assert_eq!(repricings(&base, &base), []);

    // A corrected price: only its own span, up to the next entry.
    let corrected = vec![
        gpt(&[
            ("2026-01-01T00:00:00Z", "2.40", "10.00"),
            ("2026-11-19T00:00:00Z", "2.00", "8.00"),
        ]),
        spec("llama", true, &[]),
    ];
    assert_eq!(
        repricings(&base, &corrected),
        [Repricing {
            model: "gpt".into(),
            from: t("2026-01-01T00:00:00Z"),
            to: t("2026-11-19T00:00:00Z"),
            rate: Some((money("2.40"), money("10.00"))),
        }]
    );

    // An entry dated in the past: from it on, up to the next one.
    let inserted = vec![
        gpt(&[
            ("2026-01-01T00:00:00Z", "2.50", "10.00"),
            ("2026-11-18T00:00:00Z", "3.00", "12.00"),
            ("2026-11-19T00:00:00Z", "2.00", "8.00"),
        ]),
        spec("llama", true, &[]),
    ];
    assert_eq!(
        repricings(&base, &inserted),
        [Repricing {
            model: "gpt".into(),
            from: t("2026-11-18T00:00:00Z"),
            to: t("2026-11-19T00:00:00Z"),
            rate: Some((money("3.00"), money("12.00"))),
        }]
    );

    // A model removed: its calls are unpriced from the beginning of its prices on; a model
    // made local costs nothing at all times.
    let changed = vec![spec(
        "llama",
        false,
        &[("2026-06-01T00:00:00Z", "0.10", "0.10")],
    )];
    assert_eq!(
        repricings(&base, &changed),
        [
            Repricing {
                model: "gpt".into(),
                from: t("2026-01-01T00:00:00Z"),
                to: end_of_time(),
                rate: None,
            },
            Repricing {
                model: "llama".into(),
                from: beginning(),
                to: t("2026-06-01T00:00:00Z"),
                rate: None,
            },
            Repricing {
                model: "llama".into(),
                from: t("2026-06-01T00:00:00Z"),
                to: end_of_time(),
                rate: Some((money("0.10"), money("0.10"))),
            },
        ]
    );
    // From no catalog at all: everything the catalog prices, one span per price.
    let spans: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = repricings(&[], &base)
        .into_iter()
        .map(|s| (s.model, s.from, s.to))
        .collect();
    assert_eq!(
        spans,
        [
            (
                "gpt".into(),
                t("2026-01-01T00:00:00Z"),
                t("2026-11-19T00:00:00Z")
            ),
            ("gpt".into(), t("2026-11-19T00:00:00Z"), end_of_time()),
            ("llama".into(), beginning(), end_of_time()),
        ]
    );
}

#[test]
fn spans_widen_to_whole_buckets_without_overlapping() {
    let span = |from: &str, to: &str| Repricing {
        model: "gpt".into(),
        from: t(from),
        to: t(to),
        rate: None,
    };
    let spans = [
        span("2026-11-18T10:30:00Z", "2026-11-18T11:15:00Z"),
        span("2026-11-18T11:40:00Z", "2026-11-18T13:00:00Z"),
        span("2026-11-19T00:00:00Z", "2026-11-20T00:00:00Z"),
    ];
    assert_eq!(
        widened(&spans, Grain::Hour),
        [
            (
                "gpt".to_owned(),
                t("2026-11-18T10:00:00Z"),
                t("2026-11-18T13:00:00Z")
            ),
            (
                "gpt".to_owned(),
                t("2026-11-19T00:00:00Z"),
                t("2026-11-20T00:00:00Z")
            ),
        ]
    );
    assert_eq!(
        widened(&spans, Grain::Day),
        [(
            "gpt".to_owned(),
            t("2026-11-18T00:00:00Z"),
            t("2026-11-20T00:00:00Z")
        )]
    );
}

#[test]
fn tiles_of_a_day_and_a_half() {
    assert_eq!(
        tiles(t("2026-11-18T22:30:10Z"), t("2026-11-20T01:05:00Z")),
        [
            (
                Grain::Minute,
                t("2026-11-18T22:31:00Z"),
                t("2026-11-18T23:00:00Z")
            ),
            (
                Grain::Hour,
                t("2026-11-18T23:00:00Z"),
                t("2026-11-19T00:00:00Z")
            ),
            (
                Grain::Day,
                t("2026-11-19T00:00:00Z"),
                t("2026-11-20T00:00:00Z")
            ),
            (
                Grain::Hour,
                t("2026-11-20T00:00:00Z"),
                t("2026-11-20T01:00:00Z")
            ),
            (
                Grain::Minute,
                t("2026-11-20T01:00:00Z"),
                t("2026-11-20T01:05:00Z")
            ),
        ]
    );
    assert_eq!(
        tiles(t("2026-11-18T22:30:00Z"), t("2026-11-18T22:30:30Z")),
        [(
            Grain::Minute,
            t("2026-11-18T22:30:00Z"),
            t("2026-11-18T22:31:00Z")
        )]
    );
    assert_eq!(
        tiles(t("2026-11-18T22:30:10Z"), t("2026-11-18T22:30:50Z")),
        []
    );
}

/// Catalogs to re-price between: one model's price entries, drawn from a few days.
fn arb_catalog() -> impl Strategy<Value = Vec<ModelSpec>> {
    let entry = (0i64..5, 0i64..4, 0i64..4);
    (
        proptest::collection::vec(entry, 0..4),
        any::<bool>(),
        prop_oneof![Just(false), Just(true)],
    )
        .prop_map(|(entries, listed, local)| {
            let mut prices: Vec<PriceSpec> = Vec::new();
            for (day, i, o) in entries {
                let valid_from = t("2026-11-16T00:00:00Z") + TimeDelta::days(day);
                if prices.iter().any(|p| p.valid_from == valid_from) {
                    continue;
                }
                prices.push(PriceSpec {
                    valid_from,
                    input_per_mtok: Money::from_nanos(i * 1_000_000_000),
                    output_per_mtok: Money::from_nanos(o * 500_000_000),
                });
            }
            let mut out = Vec::new();
            if listed && (local || !prices.is_empty()) {
                let mut m = spec("gpt", local, &[]);
                if !local {
                    m.prices = prices;
                }
                out.push(m);
            }
            out.push(spec("llama", true, &[]));
            out
        })
}

fn arb_calls() -> impl Strategy<Value = Vec<Call>> {
    let one = (
        0i64..(5 * 86_400),
        prop_oneof![Just("gpt"), Just("llama"), Just("other")],
        0u64..5_000,
        0u64..5_000,
        proptest::option::of(0i64..10_000_000),
        0u64..100_000,
        any::<bool>(),
    );
    proptest::collection::vec(one, 1..200).prop_map(|calls| {
        calls
            .into_iter()
            .map(|(s, model, i, o, cost, latency, error)| Call {
                at: t("2026-11-15T12:00:00Z") + TimeDelta::seconds(s),
                project: "acme".into(),
                model: model.into(),
                provider: "p".into(),
                input_tokens: i,
                output_tokens: o,
                cost: cost.map(Money::from_nanos),
                latency_ms: latency,
                error,
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Calls folded with one catalog and then re-priced to another hold what folding them with
    /// the other gives, and what pricing each call gives: re-pricing misses no minute whose
    /// price changed and touches none whose did not.
    #[test]
    fn repricing_equals_pricing_with_the_final_catalog(
        calls in arb_calls(),
        first in arb_catalog(),
        last in arb_catalog(),
        split in 0usize..200,
    ) {
        let split = split.min(calls.len());
        let mut rows = Rows::default();
        rows.fold(&calls[..split], &Prices::new(&first)).unwrap();
        let mut rows = stored(&rows);
        reprice_in_memory(&mut rows, &repricings(&first, &last));
        let mut rows = stored(&rows);
        rows.fold(&calls[split..], &Prices::new(&last)).unwrap();
        check(&rows, &calls, &last);
    }

    /// The tiles of any range are aligned to their grain, in order, adjacent, and together
    /// exactly the minutes starting in the range.
    #[test]
    fn tiles_are_exactly_the_minutes_of_the_range(a in 0i64..(6 * 86_400), len in 0i64..(4 * 86_400)) {
        let from = t("2026-11-15T00:00:00Z") + TimeDelta::seconds(a);
        let to = from + TimeDelta::seconds(len);
        let tiles = tiles(from, to);
        let minutes = Grain::Minute.count(from, to);
        let mut covered = 0;
        let mut at = Grain::Minute.ceil(from);
        for (grain, lo, hi) in &tiles {
            prop_assert_eq!(*lo, at);
            prop_assert!(lo < hi);
            prop_assert_eq!(grain.floor(*lo), *lo);
            prop_assert_eq!(grain.floor(*hi), *hi);
            covered += Grain::Minute.count(*lo, *hi);
            at = *hi;
        }
        prop_assert_eq!(covered, minutes);
        if minutes > 0 {
            prop_assert_eq!(at, Grain::Minute.ceil(to));
        }
        prop_assert!(tiles.len() <= 5);
    }

    /// A minute's price of its token sums is the sum of its calls' prices.
    #[test]
    fn the_price_of_token_sums_is_the_sum_of_the_prices(
        tokens in proptest::collection::vec((0u64..1_000_000_000, 0u64..1_000_000_000), 1..50),
        input in 0i64..10_000_000,
        output in 0i64..10_000_000,
    ) {
        let p = PriceSpec {
            valid_from: t("2026-01-01T00:00:00Z"),
            input_per_mtok: Money::from_nanos(input * 1_000_000),
            output_per_mtok: Money::from_nanos(output * 1_000_000),
        };
        let mut b = Bucket::default();
        let mut sum = 0i64;
        for (i, o) in &tokens {
            b.add(&call("2026-11-20T10:00:00Z", "m", *i, *o, None, 1)).unwrap();
            sum += p.cost(*i, *o).unwrap().nanos();
        }
        let priced = price(&b, Some(&p)).unwrap();
        prop_assert_eq!(priced.catalog_cost, sum);
        prop_assert_eq!(priced.cost, sum);
    }
}
