//! The routing rules as a table: budget state × context size × tier × observed health, each
//! row with the model and the rule it must get.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use kairos_analytics::Health;
use kairos_events::Money;
use kairos_events::types::{ModelSpec, OnExceeded, PriceSpec};

use crate::rules::{BudgetState, Outcome, RouteRequest, decide};

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap()
}

fn usd(s: &str) -> Money {
    Money::parse(s).unwrap()
}

fn model(
    name: &str,
    window: u64,
    tier: u8,
    price: Option<(&str, &str)>,
    tags: &[&str],
) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        provider: format!("{name}-provider"),
        context_window: window,
        max_output_tokens: 8192.min(window),
        local: price.is_none(),
        tier,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        retired: false,
        prices: price
            .map(|(i, o)| PriceSpec {
                valid_from: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
                input_per_mtok: usd(i),
                output_per_mtok: usd(o),
            })
            .into_iter()
            .collect(),
    }
}

fn catalog() -> Vec<ModelSpec> {
    let mut unpriced = model("future", 200_000, 5, Some(("1", "1")), &["tools"]);
    unpriced.prices[0].valid_from = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
    vec![
        model("frontier", 200_000, 5, Some(("3", "15")), &["code"]),
        model("big", 128_000, 4, Some(("2.5", "10")), &["tools"]),
        model("big-azure", 128_000, 4, Some(("2.5", "10")), &["tools"]),
        model("cheap", 128_000, 3, Some(("0.15", "0.6")), &["tools"]),
        model("long", 1_048_576, 3, Some(("0.3", "2.5")), &["tools"]),
        model("local", 131_072, 2, None, &["tools"]),
        unpriced,
    ]
}

fn budget(limit: &str, spent: &str, reserved: &str, on_exceeded: OnExceeded) -> BudgetState {
    BudgetState {
        period: "2026-11".into(),
        limit: usd(limit),
        spent: usd(spent),
        unpriced_calls: 0,
        reserved: usd(reserved),
        warn_at_percent: 80,
        on_exceeded,
        fallback_model: None,
    }
}

fn health(figures: &[(&str, f64, Option<f64>)]) -> HashMap<String, Health> {
    figures
        .iter()
        .map(|(m, rate, p95)| {
            (
                (*m).to_owned(),
                Health {
                    calls: 100,
                    errors: (rate * 100.0) as u64,
                    error_rate: *rate,
                    p95_ms: *p95,
                },
            )
        })
        .collect()
}

struct Row {
    name: &'static str,
    budget: Option<BudgetState>,
    input: u64,
    output: u64,
    min_tier: Option<u8>,
    tags: &'static [&'static str],
    health: HashMap<String, Health>,
    model: Option<&'static str>,
    rule: &'static str,
    outcome: Outcome,
}

#[test]
fn the_routing_table() {
    use OnExceeded::{Block, FallbackToLocal};
    use Outcome::*;
    let none = HashMap::new;
    let rows = vec![
        Row {
            name: "no budget, small task: the best tier",
            budget: None,
            input: 2_000,
            output: 500,
            min_tier: None,
            tags: &[],
            health: none(),
            model: Some("frontier"),
            rule: "best_quality",
            outcome: Routed,
        },
        Row {
            name: "no budget, 150K task: only the 200K+ windows",
            budget: None,
            input: 150_000,
            output: 1_000,
            min_tier: None,
            tags: &[],
            health: none(),
            model: Some("frontier"),
            rule: "best_quality",
            outcome: Routed,
        },
        Row {
            name: "no budget, 300K task: only the 1M window",
            budget: None,
            input: 300_000,
            output: 1_000,
            min_tier: None,
            tags: &[],
            health: none(),
            model: Some("long"),
            rule: "best_quality",
            outcome: Routed,
        },
        Row {
            name: "no budget, 2M task: nothing fits",
            budget: None,
            input: 2_000_000,
            output: 1_000,
            min_tier: None,
            tags: &[],
            health: none(),
            model: None,
            rule: "context_window",
            outcome: NoModelFits,
        },
        Row {
            name: "budget ok: the best tier, reserved",
            budget: Some(budget("100", "0", "0", FallbackToLocal)),
            input: 2_000,
            output: 500,
            min_tier: None,
            tags: &[],
            health: none(),
            model: Some("frontier"),
            rule: "best_quality",
            outcome: Reserved,
        },
        Row {
            name: "budget ok, 100K task: a window that fits, reserved",
            budget: Some(budget("100", "0", "0", FallbackToLocal)),
            input: 100_000,
            output: 4_000,
            min_tier: None,
            tags: &[],
            health: none(),
            model: Some("frontier"),
            rule: "best_quality",
            outcome: Reserved,
        },
        Row {
            name: "budget warning: the cheapest, local first",
            budget: Some(budget("100", "85", "0", FallbackToLocal)),
            input: 2_000,
            output: 500,
            min_tier: None,
            tags: &[],
            health: none(),
            model: Some("local"),
            rule: "budget_warning",
            outcome: Routed,
        },
        Row {
            name: "budget warning, min_tier 3: the cheapest of tier 3+",
            budget: Some(budget("100", "70", "15", FallbackToLocal)),
            input: 2_000,
            output: 500,
            min_tier: Some(3),
            tags: &[],
            health: none(),
            model: Some("cheap"),
            rule: "budget_warning",
            outcome: Reserved,
        },
        Row {
            name: "budget warning, 300K task, min_tier 3: the only window",
            budget: Some(budget("100", "85", "0", Block)),
            input: 300_000,
            output: 1_000,
            min_tier: Some(3),
            tags: &[],
            health: none(),
            model: Some("long"),
            rule: "budget_warning",
            outcome: Reserved,
        },
        Row {
            name: "exceeded, fallback: local",
            budget: Some(budget("10", "10", "0", FallbackToLocal)),
            input: 2_000,
            output: 500,
            min_tier: Some(4),
            tags: &[],
            health: none(),
            model: Some("local"),
            rule: "budget_exceeded_fallback",
            outcome: Routed,
        },
        Row {
            name: "exceeded by reservations, fallback: local",
            budget: Some(budget("10", "4", "6", FallbackToLocal)),
            input: 2_000,
            output: 500,
            min_tier: None,
            tags: &[],
            health: none(),
            model: Some("local"),
            rule: "budget_exceeded_fallback",
            outcome: Routed,
        },
        Row {
            name: "exceeded, fallback, 150K task: no local window fits",
            budget: Some(budget("10", "12", "0", FallbackToLocal)),
            input: 150_000,
            output: 1_000,
            min_tier: None,
            tags: &[],
            health: none(),
            model: None,
            rule: "budget_exceeded_fallback",
            outcome: BudgetBlocked,
        },
        Row {
            name: "unpriced calls: fails closed to local",
            budget: Some(BudgetState {
                unpriced_calls: 2,
                ..budget("100", "1", "0", FallbackToLocal)
            }),
            input: 2_000,
            output: 500,
            min_tier: None,
            tags: &[],
            health: none(),
            model: Some("local"),
            rule: "budget_exceeded_fallback",
            outcome: Routed,
        },
        Row {
            name: "unpriced calls under block: 402",
            budget: Some(BudgetState {
                unpriced_calls: 1,
                ..budget("100", "1", "0", Block)
            }),
            input: 2_000,
            output: 500,
            min_tier: None,
            tags: &[],
            health: none(),
            model: None,
            rule: "budget_exceeded_block",
            outcome: BudgetBlocked,
        },
        Row {
            name: "exceeded, block: 402",
            budget: Some(budget("10", "10", "0", Block)),
            input: 2_000,
            output: 500,
            min_tier: None,
            tags: &[],
            health: none(),
            model: None,
            rule: "budget_exceeded_block",
            outcome: BudgetBlocked,
        },
        Row {
            name: "estimate above what is left: the cheapest",
            budget: Some(budget("1", "0.5", "0.49", FallbackToLocal)),
            input: 2_000,
            output: 500,
            min_tier: None,
            tags: &[],
            health: none(),
            model: Some("local"),
            rule: "budget_warning",
            outcome: Routed,
        },
        Row {
            name: "under warning, estimate above what is left: the cheapest of tier 3+",
            budget: Some(budget("0.06", "0", "0.047", Block)),
            input: 2_000,
            output: 500,
            min_tier: Some(3),
            tags: &[],
            health: none(),
            model: Some("cheap"),
            rule: "cost_above_remaining",
            outcome: Reserved,
        },
        Row {
            name: "ok, but the best estimate is above what is left",
            budget: Some(budget("0.01", "0", "0", Block)),
            input: 2_000,
            output: 500,
            min_tier: None,
            tags: &[],
            health: none(),
            model: Some("local"),
            rule: "cost_above_remaining",
            outcome: Routed,
        },
        Row {
            name: "ok, worst case of the best above what is left: the next admitted",
            budget: Some(budget("0.05", "0", "0", Block)),
            input: 2_000,
            output: 500,
            min_tier: Some(3),
            tags: &[],
            health: none(),
            model: Some("cheap"),
            rule: "best_quality",
            outcome: Reserved,
        },
        Row {
            name: "tie on tier and cost, equal health: by name",
            budget: None,
            input: 2_000,
            output: 500,
            min_tier: None,
            tags: &["tools"],
            health: health(&[("big", 0.01, Some(300.0)), ("big-azure", 0.01, Some(300.0))]),
            model: Some("big"),
            rule: "best_quality",
            outcome: Routed,
        },
        Row {
            name: "tie: the one whose error rate jumped loses",
            budget: None,
            input: 2_000,
            output: 500,
            min_tier: None,
            tags: &["tools"],
            health: health(&[("big", 0.30, Some(300.0)), ("big-azure", 0.01, Some(300.0))]),
            model: Some("big-azure"),
            rule: "best_quality",
            outcome: Routed,
        },
        Row {
            name: "tie: the slower p95 loses",
            budget: None,
            input: 2_000,
            output: 500,
            min_tier: None,
            tags: &["tools"],
            health: health(&[("big", 0.01, Some(900.0)), ("big-azure", 0.01, Some(300.0))]),
            model: Some("big-azure"),
            rule: "best_quality",
            outcome: Routed,
        },
        Row {
            name: "health never outranks tier",
            budget: None,
            input: 2_000,
            output: 500,
            min_tier: None,
            tags: &[],
            health: health(&[("frontier", 0.5, Some(5000.0))]),
            model: Some("frontier"),
            rule: "best_quality",
            outcome: Routed,
        },
        Row {
            name: "a tag rules out the rest",
            budget: None,
            input: 2_000,
            output: 500,
            min_tier: None,
            tags: &["code"],
            health: none(),
            model: Some("frontier"),
            rule: "best_quality",
            outcome: Routed,
        },
    ];
    let models = catalog();
    for row in rows {
        let req = RouteRequest {
            project: "p".into(),
            input_tokens: row.input,
            expected_output_tokens: row.output,
            // The worst-case rows send no max_tokens: the model's own maximum output is held.
            max_output_tokens: (!row.name.contains("worst case")).then_some(row.output),
            task: None,
            min_tier: row.min_tier,
            tags: row.tags.iter().map(|t| (*t).to_owned()).collect(),
        };
        let plan = decide(&req, &models, at(), row.budget.as_ref(), &row.health);
        assert_eq!(
            plan.chosen.as_ref().map(|c| c.model.as_str()),
            row.model,
            "{}: {plan:#?}",
            row.name
        );
        assert_eq!(plan.rule, row.rule, "{}: {plan:#?}", row.name);
        assert_eq!(plan.outcome, row.outcome, "{}: {plan:#?}", row.name);
        // Every model is accounted for: chosen, or an alternative with a reason.
        assert_eq!(
            plan.alternatives.len() + usize::from(plan.chosen.is_some()),
            models.len(),
            "{}",
            row.name
        );
        assert!(plan.alternatives.iter().all(|a| !a.reason.is_empty()));
        // The unpriced model is never chosen: ruled out for its price (or a filter before it).
        assert!(
            plan.alternatives.iter().any(|a| a.model == "future"
                && (a.reason.contains("no price")
                    || a.reason.starts_with("window")
                    || a.reason.starts_with("lacks"))),
            "{}",
            row.name
        );
    }
}

#[test]
fn a_lost_tie_says_why() {
    let req = RouteRequest {
        project: "p".into(),
        input_tokens: 1_000,
        expected_output_tokens: 100,
        max_output_tokens: None,
        task: None,
        min_tier: None,
        tags: vec!["tools".into()],
    };
    let h = health(&[("big", 0.30, Some(300.0)), ("big-azure", 0.01, Some(300.0))]);
    let plan = decide(&req, &catalog(), at(), None, &h);
    let big = plan.alternatives.iter().find(|a| a.model == "big").unwrap();
    assert_eq!(big.rank, Some(1));
    assert!(
        big.reason.contains("error rate 30.0% against 1.0%"),
        "{}",
        big.reason
    );
    let cheap = plan
        .alternatives
        .iter()
        .find(|a| a.model == "cheap")
        .unwrap();
    assert!(
        cheap.reason.contains("tier 3 below big-azure's 4"),
        "{}",
        cheap.reason
    );
}

#[test]
fn a_task_too_large_names_the_largest_window() {
    let req = RouteRequest {
        project: "p".into(),
        input_tokens: 5_000_000,
        expected_output_tokens: 1,
        max_output_tokens: None,
        task: None,
        min_tier: None,
        tags: vec![],
    };
    let plan = decide(&req, &catalog(), at(), None, &HashMap::new());
    assert_eq!(plan.outcome, Outcome::NoModelFits);
    assert!(plan.reason.contains("1048576"), "{}", plan.reason);
}

#[test]
fn the_worst_case_is_input_plus_maximum_output() {
    let req = RouteRequest {
        project: "p".into(),
        input_tokens: 10_000,
        expected_output_tokens: 1_000,
        max_output_tokens: None,
        task: None,
        min_tier: None,
        tags: vec!["code".into()],
    };
    let b = budget("100", "0", "0", OnExceeded::Block);
    let plan = decide(&req, &catalog(), at(), Some(&b), &HashMap::new());
    let c = plan.chosen.unwrap();
    // frontier: $3 / $15 per million; expected 10,000 + 1,000; worst 10,000 + 8,192.
    assert_eq!(c.estimated_cost, usd("0.045"));
    assert_eq!(c.worst_case_cost, usd("0.15288"));
}

mod simulation {
    use super::*;
    use crate::DecisionRecord;
    use crate::simulate::{SimEvent, simulate};
    use kairos_events::ProjectId;
    use kairos_events::types::{BudgetSet, CallStatus, LlmCallCompleted};

    fn call(
        project: &str,
        model: &str,
        decision: Option<String>,
        cost: Option<Money>,
    ) -> LlmCallCompleted {
        LlmCallCompleted {
            project: ProjectId::parse(project).unwrap(),
            model: model.into(),
            provider: "x".into(),
            input_tokens: 1_000,
            output_tokens: 200,
            cost,
            latency_ms: 100,
            status: CallStatus::Ok,
            session_id: None,
            workflow_id: None,
            actor: None,
            context_tokens: None,
            error: None,
            decision_id: decision,
        }
    }

    /// `x` ($10/M in and out), its cheaper twin `y` of the same tier ($1/M), and a local `l`.
    fn twins() -> (ModelSpec, ModelSpec, ModelSpec) {
        (
            model("x", 100_000, 4, Some(("10", "10")), &[]),
            model("y", 100_000, 4, Some(("1", "1")), &[]),
            model("l", 100_000, 1, None, &[]),
        )
    }

    /// Project `p`'s budget of `limit` a month, falling back to the local model past it.
    fn fallback_budget(at: DateTime<Utc>, limit: &str) -> SimEvent {
        SimEvent::Budget(
            at,
            BudgetSet {
                project: ProjectId::parse("p").unwrap(),
                monthly_limit: usd(limit),
                warn_at_percent: 80,
                on_exceeded: OnExceeded::FallbackToLocal,
                fallback_model: None,
                actor: None,
            },
        )
    }

    /// A decision routed to `x` at `at`, with the circuit it recorded.
    fn routed(at: DateTime<Utc>, id: &str, circuit: Option<serde_json::Value>) -> SimEvent {
        SimEvent::Decision(
            at,
            id.into(),
            Box::new(DecisionRecord {
                project: "p".into(),
                request: RouteRequest {
                    project: "p".into(),
                    input_tokens: 1_000,
                    expected_output_tokens: 200,
                    max_output_tokens: Some(200),
                    task: None,
                    min_tier: None,
                    tags: vec![],
                },
                outcome: Outcome::Routed,
                rule: "best_quality".into(),
                model: Some("x".into()),
                provider: Some("x-provider".into()),
                estimated_cost: Some(usd("0.012")),
                reserved: None,
                reservation_expires_at: None,
                catalog_version: 1,
                budget: None,
                health: serde_json::json!({}),
                alternatives: vec![],
                reason: String::new(),
                actor: None,
                circuit,
            }),
        )
    }

    /// What the breakers did is part of the history: a model they kept out is not chosen by
    /// the simulation either, and a limit an open cost alert lowered stays lowered.
    #[test]
    fn simulate_keeps_the_recorded_circuit() {
        let (x, y, local) = twins();
        let start = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        let tz = chrono_tz::Tz::UTC;
        let end = start + chrono::Duration::days(1);
        // Ten decisions for `x`; the breaker of `y` was open for the first four.
        let mut events = vec![SimEvent::Catalog(start, vec![x.clone(), local.clone()])];
        for i in 0..10 {
            let at = start + chrono::Duration::minutes(i + 1);
            let id = format!("d-{i}");
            let circuit = (i < 4).then(
                || serde_json::json!({"skipped": {"y": "circuit open: error rate"}, "probe": null}),
            );
            events.push(routed(at, &id, circuit));
            events.push(SimEvent::Call(
                at,
                call("p", "x", Some(id), Some(usd("0.012"))),
            ));
        }
        let r = simulate(
            &events,
            &[x.clone(), y, local.clone()],
            &tz,
            start,
            end,
            None,
        );
        assert_eq!((r[0].decisions, r[0].rerouted), (10, 6), "{r:?}");

        // A budget of $0.03 with $0.012 spent: the next $0.012 call to `x` fits, unless the
        // limit was halved.
        let budget = fallback_budget(start, "0.03");
        let spent = SimEvent::Call(
            start + chrono::Duration::minutes(1),
            call("p", "x", None, Some(usd("0.012"))),
        );
        let at = start + chrono::Duration::minutes(2);
        let halved = serde_json::json!({
            "skipped": {}, "probe": null,
            "lowered_limit": {"alert_id": "a-1", "factor": 0.5, "since": at},
        });
        for (circuit, expected) in [(None, 0), (Some(halved), 1)] {
            let events = vec![
                SimEvent::Catalog(start, vec![x.clone(), local.clone()]),
                budget.clone(),
                spent.clone(),
                routed(at, "d", circuit),
                SimEvent::Call(at, call("p", "x", Some("d".into()), Some(usd("0.012")))),
            ];
            let r = simulate(&events, &[x.clone(), local.clone()], &tz, start, end, None);
            assert_eq!(r[0].rerouted, expected, "{r:?}");
        }
    }

    /// A generated month: 20 routed calls a day to `x` ($10/M in and out: $0.012 each), and
    /// 5 unrouted calls a day to `x` without a cost. The other catalog adds `y`, of the same
    /// tier at $1/M ($0.0012 a call): every routed call would have gone to it.
    #[test]
    fn a_cheaper_twin_reroutes_every_decision_by_the_known_delta() {
        let (x, y, local) = twins();
        let start = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        let mut events = vec![
            SimEvent::Catalog(start, vec![x.clone(), local.clone()]),
            fallback_budget(start, "6"),
        ];
        for day in 0..30 {
            for i in 0..25 {
                let at =
                    start + chrono::Duration::days(day) + chrono::Duration::minutes(i * 10 + 1);
                if i < 20 {
                    let id = format!("d-{day}-{i}");
                    events.push(routed(at, &id, None));
                    events.push(SimEvent::Call(
                        at,
                        call("p", "x", Some(id), Some(usd("0.012"))),
                    ));
                } else {
                    events.push(SimEvent::Call(at, call("p", "x", None, None)));
                }
            }
        }
        let tz = chrono_tz::Tz::UTC;
        let end = start + chrono::Duration::days(30);
        let reports = simulate(&events, &[x, y, local], &tz, start, end, None);
        assert_eq!(reports.len(), 1);
        let r = &reports[0];
        assert_eq!(r.calls, 750);
        assert_eq!(r.decisions, 600);
        assert_eq!(r.rerouted, 600);
        assert_eq!(r.refused, 0);
        // As it was: 750 × $0.012. As it would have been: 600 × $0.0012 + 150 × $0.012.
        assert_eq!(r.cost_actual, usd("9"));
        assert_eq!(r.cost_simulated, usd("2.52"));
        assert_eq!(r.delta, "-6.48");
        assert_eq!(r.moves.len(), 1);
        assert_eq!(
            (
                r.moves[0].from.as_str(),
                r.moves[0].to.as_str(),
                r.moves[0].calls
            ),
            ("x", "y", 600)
        );
        // $0.30 a day as it was: warning ($4.80) on the 16th, exceeded ($6) on the 20th.
        // $0.084 a day simulated: never.
        let m = &r.budgets["2026-11"];
        let day = |d| Some(chrono::NaiveDate::from_ymd_opt(2026, 11, d).unwrap());
        assert_eq!(m.actual.warning, day(16));
        assert_eq!(m.actual.exceeded, day(20));
        assert_eq!(m.simulated.warning, None);
        assert_eq!(m.simulated.exceeded, None);
    }

    /// The same history under its own catalog changes nothing.
    #[test]
    fn the_recorded_catalog_reproduces_what_was() {
        let x = model("x", 100_000, 4, Some(("10", "10")), &[]);
        let start = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        let events = vec![
            SimEvent::Catalog(start, vec![x.clone()]),
            SimEvent::Call(
                start + chrono::Duration::hours(1),
                call("p", "x", None, None),
            ),
            SimEvent::Call(
                start + chrono::Duration::hours(2),
                call("p", "x", None, Some(usd("0.012"))),
            ),
        ];
        let r = simulate(
            &events,
            &[x],
            &chrono_tz::Tz::UTC,
            start,
            start + chrono::Duration::days(1),
            None,
        );
        assert_eq!(r[0].cost_actual, r[0].cost_simulated);
        assert_eq!(r[0].delta, "0.00");
        assert_eq!(r[0].rerouted, 0);
    }
}
