//! The fold, without NATS or a database.

use super::*;

fn p(s: &str) -> ProjectId {
    ProjectId::parse(s).unwrap()
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn call(seq: u64, project: &str, cost: &str, when: &str) -> Item {
    Item::Call {
        seq,
        at: at(when),
        period: Period::containing(at(when), &Utc),
        call: LlmCallCompleted {
            project: p(project),
            model: "m".into(),
            provider: "x".into(),
            input_tokens: 10,
            output_tokens: 5,
            cost: Some(Money::parse(cost).unwrap()),
            latency_ms: 1,
            status: CallStatus::Ok,
            session_id: None,
            workflow_id: None,
            actor: None,
            context_tokens: None,
            error: None,
            decision_id: None,
        },
    }
}

fn set(seq: u64, project: &str, limit: &str, warn: u8, when: &str) -> Item {
    Item::Set {
        seq,
        at: at(when),
        period: Period::containing(at(when), &Utc),
        set: BudgetSet {
            project: p(project),
            monthly_limit: Money::parse(limit).unwrap(),
            warn_at_percent: warn,
            on_exceeded: OnExceeded::FallbackToLocal,
            fallback_model: None,
            actor: None,
        },
    }
}

fn thresholds(c: &[Crossing]) -> Vec<(u64, Threshold)> {
    c.iter().map(|c| (c.seq, c.threshold)).collect()
}

#[test]
fn status_boundaries() {
    let ten = Money::parse("10").unwrap();
    assert_eq!(
        status(ten, 80, Money::parse("7.999999999").unwrap()),
        Status::Ok
    );
    assert_eq!(status(ten, 80, Money::parse("8").unwrap()), Status::Warning);
    assert_eq!(
        status(ten, 80, Money::parse("9.999999999").unwrap()),
        Status::Warning
    );
    assert_eq!(status(ten, 80, ten), Status::Exceeded);
    assert_eq!(status(Money::ZERO, 80, Money::ZERO), Status::Exceeded);
}

#[test]
fn each_threshold_is_crossed_once_per_month() {
    let mut l = Ledger::default();
    let mut all = Vec::new();
    let items = [
        set(1, "a", "1.00", 50, "2026-11-01T00:00:00Z"),
        call(2, "a", "0.40", "2026-11-02T00:00:00Z"),
        call(3, "a", "0.10", "2026-11-02T00:00:00Z"), // 0.50: warning
        call(4, "a", "0.10", "2026-11-02T00:00:00Z"),
        call(5, "a", "0.40", "2026-11-03T00:00:00Z"), // 1.00: exceeded
        call(6, "a", "5", "2026-11-03T00:00:00Z"),
        call(7, "a", "2", "2026-12-01T00:00:00Z"), // new month: both at once
    ];
    for i in &items {
        all.extend(l.fold(i).unwrap());
    }
    assert_eq!(
        thresholds(&all),
        vec![
            (3, Threshold::Warning),
            (5, Threshold::Exceeded),
            (7, Threshold::Warning),
            (7, Threshold::Exceeded)
        ]
    );
    let nov = l.spend[&(p("a"), Period::parse("2026-11").unwrap())].spent;
    assert_eq!(nov, Money::parse("6.00").unwrap());
}

#[test]
fn raising_the_limit_does_not_re_emit_and_lowering_it_crosses() {
    let mut l = Ledger::default();
    l.fold(&call(1, "a", "3", "2026-11-02T00:00:00Z")).unwrap();
    let c = l
        .fold(&set(2, "a", "2", 80, "2026-11-03T00:00:00Z"))
        .unwrap();
    assert_eq!(
        thresholds(&c),
        vec![(2, Threshold::Warning), (2, Threshold::Exceeded)]
    );
    assert!(
        l.fold(&set(3, "a", "100", 80, "2026-11-03T00:00:00Z"))
            .unwrap()
            .is_empty()
    );
    assert!(
        l.fold(&call(4, "a", "90", "2026-11-04T00:00:00Z"))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn spend_without_a_limit_crosses_nothing() {
    let mut l = Ledger::default();
    assert!(
        l.fold(&call(1, "b", "1000", "2026-11-02T00:00:00Z"))
            .unwrap()
            .is_empty()
    );
    assert_eq!(l.spend.len(), 1);
}

#[test]
fn crossing_events_are_valid_and_deterministic() {
    let mut l = Ledger::default();
    l.fold(&set(1, "a", "1", 50, "2026-11-01T00:00:00Z"))
        .unwrap();
    let c = l
        .fold(&call(2, "a", "0.75", "2026-11-02T00:00:00Z"))
        .unwrap();
    let e1 = c[0].to_event().unwrap();
    let e2 = c[0].to_event().unwrap();
    assert_eq!(e1.to_bytes(), e2.to_bytes());
    assert_eq!(e1.id(), "a/2026-11/warning");
    assert_eq!(e1.json()["data"]["spent"], "0.75");
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// The runtime hands a projection batches of any size and reloads only the rows a batch
    /// touches; redelivered and duplicate events are filtered before `fold`. Whatever the batch
    /// boundaries, the stored state and the crossings announced must be the same.
    fn fold_in_batches(
        items: &[Item],
        cuts: &[usize],
    ) -> (Ledger, Vec<(String, String, Threshold)>) {
        let mut stored = Ledger::default();
        let mut crossed = Vec::new();
        let mut start = 0;
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (items.len() + 1)).collect();
        bounds.push(items.len());
        bounds.sort_unstable();
        for end in bounds {
            if end <= start {
                continue;
            }
            let batch = &items[start..end];
            // Load: only the touched rows, as `load` does.
            let mut ledger = Ledger::default();
            for i in batch {
                let (p, period) = i.key().unwrap();
                if let Some(l) = stored.limits.get(&p) {
                    ledger.limits.insert(p.clone(), l.clone());
                }
                for ((sp, per), s) in &stored.spend {
                    if *sp == p && *per == period {
                        ledger.spend.insert((sp.clone(), *per), s.clone());
                    }
                }
                for c in &stored.crossed {
                    if c.0 == p && c.1 == period {
                        ledger.crossed.insert(c.clone());
                    }
                }
            }
            for i in batch {
                for c in ledger.fold(i).unwrap() {
                    crossed.push((c.project.to_string(), c.period.to_string(), c.threshold));
                }
            }
            // Save: write back what the batch holds.
            stored.limits.extend(ledger.limits);
            stored.spend.extend(ledger.spend);
            stored.crossed.extend(ledger.crossed);
            start = end;
        }
        (stored, crossed)
    }

    fn item() -> impl Strategy<Value = (u8, u8, u32, bool, u8)> {
        // (project, month, cost in nanos or limit in cents, is a budget change, warn percent)
        (
            0u8..3,
            10u8..13,
            0u32..2_000_000_000,
            prop::bool::weighted(0.1),
            1u8..=100,
        )
    }

    proptest! {
        #[test]
        fn batch_boundaries_do_not_change_the_result(
            raw in prop::collection::vec(item(), 1..120),
            cuts in prop::collection::vec(0usize..200, 0..8),
        ) {
            let items: Vec<Item> = raw
                .iter()
                .enumerate()
                .map(|(seq, (p, month, amount, is_set, warn))| {
                    let when = format!("2026-{month:02}-15T00:00:00Z");
                    let project = format!("p{p}");
                    if *is_set {
                        let limit = Money::from_nanos(i64::from(*amount) * 10).to_string();
                        set(seq as u64 + 1, &project, &limit, *warn, &when)
                    } else {
                        call(seq as u64 + 1, &project, &Money::from_nanos(i64::from(*amount)).to_string(), &when)
                    }
                })
                .collect();
            let whole = fold_in_batches(&items, &[]);
            let split = fold_in_batches(&items, &cuts);
            prop_assert_eq!(&whole.0, &split.0);
            prop_assert_eq!(&whole.1, &split.1);
            // Each (project, month, threshold) is announced at most once.
            let unique: std::collections::HashSet<_> = whole.1.iter().collect();
            prop_assert_eq!(unique.len(), whole.1.len());
        }
    }
}

/// The month an event counts in, as the projection decides it: `Period::containing` in the
/// configured zone, at the event's instant.
fn month_in(tz: &str, when: &str) -> String {
    let tz: Tz = tz.parse().unwrap();
    Period::containing(at(when), &tz).to_string()
}

#[test]
fn the_year_turns_at_local_midnight_in_each_zone() {
    // 31 Dec 23:59:59.999 local → December; 1 Jan 00:00:00.000 local → January.
    let cases = [
        // UTC
        ("UTC", "2026-12-31T23:59:59.999Z", "2026-12"),
        ("UTC", "2027-01-01T00:00:00Z", "2027-01"),
        // Auckland in summer time (UTC+13): local midnight is 11:00 UTC the day before.
        ("Pacific/Auckland", "2026-12-31T10:59:59.999Z", "2026-12"),
        ("Pacific/Auckland", "2026-12-31T11:00:00Z", "2027-01"),
        // St John's in standard time (UTC-3:30): a half-hour offset.
        ("America/St_Johns", "2027-01-01T03:29:59.999Z", "2026-12"),
        ("America/St_Johns", "2027-01-01T03:30:00Z", "2027-01"),
    ];
    for (tz, when, month) in cases {
        assert_eq!(month_in(tz, when), month, "{when} in {tz}");
    }
}

#[test]
fn a_month_that_starts_after_a_dst_change_starts_at_the_new_offset() {
    // St John's moves to daylight time (UTC-2:30) on 8 March 2026: 1 April starts at 02:30 UTC,
    // not at the standard offset's 03:30.
    assert_eq!(
        month_in("America/St_Johns", "2026-04-01T02:29:59.999Z"),
        "2026-03"
    );
    assert_eq!(
        month_in("America/St_Johns", "2026-04-01T02:30:00Z"),
        "2026-04"
    );
    // Auckland leaves daylight time (UTC+13 → UTC+12) on 5 April 2026: 1 April still starts at
    // UTC+13, 1 May at UTC+12.
    assert_eq!(
        month_in("Pacific/Auckland", "2026-03-31T10:59:59.999Z"),
        "2026-03"
    );
    assert_eq!(
        month_in("Pacific/Auckland", "2026-03-31T11:00:00Z"),
        "2026-04"
    );
    assert_eq!(
        month_in("Pacific/Auckland", "2026-04-30T11:59:59.999Z"),
        "2026-04"
    );
    assert_eq!(
        month_in("Pacific/Auckland", "2026-04-30T12:00:00Z"),
        "2026-05"
    );
}

#[test]
fn spend_on_either_side_of_new_year_lands_in_its_own_month() {
    let tz: Tz = "Pacific/Auckland".parse().unwrap();
    let item = |seq, cost, when: &str| match call(seq, "a", cost, when) {
        Item::Call { seq, at, call, .. } => Item::Call {
            seq,
            at,
            period: Period::containing(at, &tz),
            call,
        },
        other => other,
    };
    let mut l = Ledger::default();
    for i in [
        item(1, "1.25", "2026-12-31T10:59:59.999Z"),
        item(2, "2.50", "2026-12-31T11:00:00Z"),
    ] {
        l.fold(&i).unwrap();
    }
    let dec = Period::parse("2026-12").unwrap();
    let jan = Period::parse("2027-01").unwrap();
    let spent = |period| {
        l.spend
            .get(&(p("a"), period))
            .map(|s: &Spend| s.spent.to_string())
    };
    assert_eq!(spent(dec).as_deref(), Some("1.25"));
    assert_eq!(spent(jan).as_deref(), Some("2.50"));
}

mod pricing {
    use super::*;
    use chrono::TimeZone;
    use kairos_events::types::{ModelSpec, PriceSpec};

    fn day(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, 0, 0, 0).unwrap()
    }

    fn model(name: &str, prices: &[(u32, &str, &str)]) -> ModelSpec {
        ModelSpec {
            name: name.into(),
            provider: "x".into(),
            context_window: 100_000,
            max_output_tokens: 1_000,
            local: false,
            tier: 3,
            tags: vec![],
            retired: false,
            prices: prices
                .iter()
                .map(|(d, i, o)| PriceSpec {
                    valid_from: day(*d),
                    input_per_mtok: Money::parse(i).unwrap(),
                    output_per_mtok: Money::parse(o).unwrap(),
                })
                .collect(),
        }
    }

    fn unpriced_call(
        seq: u64,
        at: DateTime<Utc>,
        project: &str,
        model: &str,
        i: u64,
        o: u64,
    ) -> Item {
        let Item::Call { call, .. } = call(seq, project, "0", "2026-11-01T00:00:00Z") else {
            unreachable!()
        };
        Item::Call {
            seq,
            at,
            period: Period::containing(at, &Utc),
            call: LlmCallCompleted {
                model: model.into(),
                input_tokens: i,
                output_tokens: o,
                cost: None,
                ..call
            },
        }
    }

    /// Spend per project, computed call by call from the final catalog.
    fn brute_force(
        calls: &[(String, DateTime<Utc>, String, u64, u64)],
        models: &[ModelSpec],
    ) -> HashMap<String, (i64, i64)> {
        let mut out: HashMap<String, (i64, i64)> = HashMap::new();
        for (p, at, m, i, o) in calls {
            let e = out.entry(p.clone()).or_default();
            match models
                .iter()
                .find(|x| &x.name == m)
                .and_then(|x| x.price_at(*at))
            {
                Some(price) => {
                    // Independent arithmetic: nano-dollars per token times tokens.
                    let per = |v: Money| v.nanos() / 1_000_000;
                    e.0 += per(price.input_per_mtok) * *i as i64
                        + per(price.output_per_mtok) * *o as i64;
                }
                None => e.1 += 1,
            }
        }
        out
    }

    #[test]
    fn calls_without_cost_are_priced_and_repriced_to_the_brute_force_total() {
        let v1 = vec![
            model("a", &[(1, "2.50", "10.00")]),
            model("b", &[(1, "0.15", "0.60"), (15, "0.20", "0.80")]),
        ];
        // The correction: a's price was wrong from the 10th; c gets a price from the 5th.
        let v2 = vec![
            model("a", &[(1, "2.50", "10.00"), (10, "3.00", "12.00")]),
            model("b", &[(1, "0.15", "0.60"), (15, "0.20", "0.80")]),
            model("c", &[(5, "1.00", "1.00")]),
        ];
        let mut ledger = Ledger::default();
        let mut seq = 1;
        ledger
            .fold(&Item::Catalog {
                seq,
                at: day(1),
                models: v1,
            })
            .unwrap();
        let mut calls = Vec::new();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..3_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = day(1) + chrono::Duration::minutes((x % (28 * 24 * 60)) as i64);
            let project = ["p1", "p2"][(x % 2) as usize];
            let m = ["a", "b", "c"][((x >> 8) % 3) as usize];
            let (i, o) = (x % 5_000, (x >> 16) % 800);
            seq += 1;
            ledger
                .fold(&unpriced_call(seq, at, project, m, i, o))
                .unwrap();
            calls.push((project.to_owned(), at, m.to_owned(), i, o));
        }
        let spend = |l: &Ledger, p: &str| {
            let s = &l.spend[&(
                ProjectId::parse(p).unwrap(),
                Period::containing(day(1), &Utc),
            )];
            (s.spent.nanos(), s.unpriced_calls)
        };
        // Before the correction: c is unpriced, never free.
        let before = brute_force(&calls, &ledger.catalog.clone());
        for p in ["p1", "p2"] {
            assert_eq!(spend(&ledger, p), before[p], "{p} before");
            assert!(before[p].1 > 0);
        }
        seq += 1;
        ledger
            .fold(&Item::Catalog {
                seq,
                at: day(28),
                models: v2.clone(),
            })
            .unwrap();
        let after = brute_force(&calls, &v2);
        for p in ["p1", "p2"] {
            assert_eq!(spend(&ledger, p), after[p], "{p} after the correction");
        }
        assert_ne!(before, after);
    }
}
