//! `/health/ready` and the projections of its own process: ready while each is within
//! `http.ready_max_lag` events of the stream, not ready while one is further behind (a restarted
//! `kairos serve` catching up), and a process that runs no projection (`serve
//! --no-projections`, the chart's API pods) never waits for one.

use std::time::Duration;

use kairos_tests::{TestApp, llm_call, spawn_app_with, test_settings};
use serde_json::Value;
use sqlx::PgPool;

async fn ready(app: &TestApp) -> u16 {
    // No key: the probe has none.
    reqwest::get(format!("{}/health/ready", app.url))
        .await
        .expect("an answer")
        .status()
        .as_u16()
}

/// Waits (bounded) until `names` are exactly the projections counted as running here.
async fn running(app: &TestApp, names: &[&str]) {
    for _ in 0..200 {
        if app.kairos.local.names() == names {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "running here: {:?}, not {names:?}",
        app.kairos.local.names()
    );
}

#[sqlx::test(migrations = false)]
async fn ready_waits_for_the_projections_of_this_process_only(pool: PgPool) {
    let mut settings = test_settings();
    settings.http.ready_max_lag = 20;
    // Only the access projection runs here (the harness starts it for the keys).
    let mut app = spawn_app_with(pool, settings, false).await;
    running(&app, &["access"]).await;
    assert_eq!(ready(&app).await, 200);

    // 100 calls no projection of this process folds yet; access passes over them quickly.
    let calls: Vec<Value> = (0..100)
        .map(|i| llm_call(&format!("c-{i}"), "p", "0.01"))
        .collect();
    let last = app.ingest(&calls).await;
    app.wait_for("access", last).await;
    assert_eq!(ready(&app).await, 200, "access is within the bound");

    // Budgets runs here too, and is 100 behind until it catches up.
    let held = app.kairos.local.running("budgets");
    assert_eq!(
        ready(&app).await,
        503,
        "budgets is {last} events behind, over 20"
    );
    // The probe is told not ready and nothing more: which projection lags, and by how much, is
    // in the log and in the keyed `GET /v1/projections`.
    let body: Value = reqwest::get(format!("{}/health/ready", app.url))
        .await
        .expect("an answer")
        .json()
        .await
        .expect("a JSON body");
    assert_eq!(
        body,
        serde_json::json!({"error": {"code": "not_ready", "message": "not ready"}}),
    );
    drop(held);
    assert_eq!(ready(&app).await, 200, "budgets no longer runs here");

    // The real runner: counted from its start, ready once it has caught up.
    app.start_projection("budgets");
    running(&app, &["access", "budgets"]).await;
    app.wait_for("budgets", last).await;
    assert_eq!(ready(&app).await, 200);

    // Stopped, it is no longer this process's to wait for, however far behind it falls.
    app.stop_projections();
    app.stop_access();
    running(&app, &[]).await;
    let more: Vec<Value> = (100..200)
        .map(|i| llm_call(&format!("c-{i}"), "p", "0.01"))
        .collect();
    app.ingest(&more).await;
    assert_eq!(ready(&app).await, 200, "no projection runs here");
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn a_zero_bound_turns_the_lag_check_off(pool: PgPool) {
    let mut settings = test_settings();
    settings.http.ready_max_lag = 0;
    let app = spawn_app_with(pool, settings, false).await;
    let calls: Vec<Value> = (0..50)
        .map(|i| llm_call(&format!("c-{i}"), "p", "0.01"))
        .collect();
    app.ingest(&calls).await;
    let _held = app.kairos.local.running("budgets");
    assert_eq!(ready(&app).await, 200);
    app.cleanup().await;
}
