//! The audit log: entries for user actions and budget changes, queried newest first, exported
//! for auditors, and a hash chain that names the first entry anyone altered, deleted or moved.

use kairos_audit::{Problem, verify_against_stream, verify_chain};
use kairos_tests::{TestApp, spawn_app, spawn_app_with, test_settings_with};
use serde_json::{Value, json};
use sqlx::PgPool;

fn action(i: usize, actor: &str, outcome: &str) -> Value {
    json!({"specversion": "1.0", "id": format!("a{i}"), "source": "console", "type": "kairos.user.action.v1",
           "subject": "acme", "time": format!("2026-11-20T10:{:02}:00Z", i % 60),
           "data": {"project": "acme", "actor": actor, "role": "developer", "action": "prompt.update",
                    "resource": format!("prompt:{i}"), "outcome": outcome, "ip": "10.1.2.3",
                    "reason": if outcome == "denied" { "viewer may not write, \"really\"" } else { "ok" }}})
}

/// What the stream check finds first, if anything.
async fn first_bad(bus: &kairos_bus::Bus, pool: &PgPool) -> Option<kairos_audit::Finding> {
    verify_against_stream(bus, pool).await.unwrap().first_bad
}

async fn audited(app: &TestApp) -> u64 {
    let events: Vec<Value> = (0..40)
        .map(|i| {
            action(
                i,
                ["alice", "bob", "=cmd|' /C calc'!A0"][i % 3],
                if i % 5 == 0 { "denied" } else { "success" },
            )
        })
        .collect();
    app.ingest(&events).await;
    let (status, r) = app
        .put_json(
            "/v1/projects/acme/budget",
            &json!({"monthly_limit": "12.50"}),
        )
        .await;
    assert_eq!(status, 202, "{r}");
    let seq = r["seq"].as_u64().unwrap();
    app.wait_for("audit", seq).await;
    seq
}

#[sqlx::test(migrations = false)]
async fn entries_are_queried_newest_first_and_exported(pool: PgPool) {
    let app = spawn_app(pool).await;
    let seq = audited(&app).await;

    let (status, page) = app.get(&format!("/v1/audit?limit=10&min_seq={seq}")).await;
    assert_eq!(status, 200, "{page}");
    let first = page["entries"].as_array().unwrap();
    assert_eq!(first.len(), 10);
    assert_eq!(first[0]["action"], "budget.set", "newest first");
    assert_eq!(first[0]["resource"], "project:acme");
    assert_eq!(first[0]["event_source"], "kairos/api");
    assert_eq!(first[0]["actor"], "admin@kairos.local");
    assert_eq!(first[0]["actor_role"], "admin");
    let mut all: Vec<u64> = first.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let mut cursor = page["next_cursor"].as_u64();
    while let Some(c) = cursor {
        let (_, page) = app.get(&format!("/v1/audit?limit=10&cursor={c}")).await;
        all.extend(
            page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["seq"].as_u64().unwrap()),
        );
        cursor = page["next_cursor"].as_u64();
    }
    // 40 reported actions, the budget change, the ingest request itself and the bootstrap
    // admin's joining.
    assert_eq!(all.len(), 43);
    assert!(all.windows(2).all(|w| w[0] > w[1]));

    // A producer's user action: Kairos knows the producer, and keeps what it says about who
    // acted apart.
    let (_, denied) = app
        .get("/v1/audit?outcome=denied&claimed_actor=alice")
        .await;
    let denied = denied["entries"].as_array().unwrap();
    assert!(
        !denied.is_empty()
            && denied.iter().all(|e| e["outcome"] == "denied"
                && e["actor"] == "console"
                && e["claimed"]["actor"] == "alice")
    );
    assert_eq!(denied[0]["claimed"]["ip"], "10.1.2.3");
    assert_eq!(denied[0]["claimed"]["role"], "developer");
    assert_eq!(
        (&denied[0]["ip"], &denied[0]["actor_role"]),
        (&Value::Null, &Value::Null)
    );
    let (_, by_alice) = app.get("/v1/audit?actor=alice").await;
    assert_eq!(by_alice["entries"].as_array().unwrap().len(), 0);
    let (_, none) = app.get("/v1/audit?to=2026-11-20T09:00:00Z").await;
    assert_eq!(none["entries"].as_array().unwrap().len(), 0);

    let jsonl = app
        .http
        .get(format!("{}/v1/audit/export", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(jsonl.headers()["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = jsonl
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 43);
    assert_eq!(
        lines[0]["action"], "member.join",
        "the bootstrap admin comes first"
    );
    assert!(
        lines
            .windows(2)
            .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()),
        "oldest first"
    );
    assert_eq!(
        lines[1]["prev_hash"], lines[0]["hash"],
        "the chain is visible in the export"
    );

    let csv = app
        .http
        .get(format!(
            "{}/v1/audit/export?format=csv&claimed_actor=%3Dcmd%7C%27%20%2FC%20calc%27%21A0",
            app.url
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rows: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert!(rows[0].starts_with("seq,occurred_at,actor"));
    assert_eq!(rows.len(), 1 + 13);
    assert!(
        rows[1].contains(",'=cmd|' /C calc'!A0,"),
        "formulas are defused: {}",
        rows[1]
    );

    app.assert_bad_queries(&[
        ("/v1/audit?limit=5000", "limit"),
        ("/v1/audit?cursor=abc", "cursor"),
        ("/v1/audit?from=today", "from"),
        ("/v1/audit/export?format=xml", "format"),
        ("/v1/audit?actor=", "actor"),
    ])
    .await;
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn verify_names_the_first_tampered_entry(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    audited(&app).await;
    let bus = app.kairos.bus.clone();
    let clean = verify_chain(&pool).await.unwrap();
    assert_eq!((clean.entries, clean.first_bad), (43, None));
    assert_eq!(first_bad(&bus, &pool).await, None);
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM audit.entries ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    // Entry 0 is the bootstrap admin's; 11 and 21 are reported actions 10 and 20 (denied ones).
    let (a, b) = (seqs[11], seqs[21]);

    // 1. One field changed.
    sqlx::query("UPDATE audit.entries SET outcome = 'success' WHERE seq = $1")
        .bind(a)
        .execute(&pool)
        .await
        .unwrap();
    let bad = verify_chain(&pool).await.unwrap().first_bad.unwrap();
    assert_eq!((bad.seq, bad.problem), (a as u64, Problem::Altered));
    let bad = first_bad(&bus, &pool).await.expect("a finding");
    assert_eq!((bad.seq, bad.problem), (a as u64, Problem::Differs));
    sqlx::query("UPDATE audit.entries SET outcome = 'denied' WHERE seq = $1")
        .bind(a)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        verify_chain(&pool).await.unwrap().first_bad,
        None,
        "restored"
    );

    // A forger who also recomputes that entry's hash is still caught by the next link.
    let saved: (Vec<u8>, String) =
        sqlx::query_as("SELECT hash, actor FROM audit.entries WHERE seq = $1")
            .bind(a)
            .fetch_one(&pool)
            .await
            .unwrap();
    sqlx::query("UPDATE audit.entries SET actor = 'nobody' WHERE seq = $1")
        .bind(a)
        .execute(&pool)
        .await
        .unwrap();
    let forged = kairos_audit::query(
        &pool,
        &kairos_audit::Filter {
            upto_seq: Some(a as u64),
            ..Default::default()
        },
        1,
        false,
    )
    .await
    .unwrap();
    let rehash = forged[0]
        .entry
        .hash(&forged[0].prev_hash.clone().try_into().unwrap());
    sqlx::query("UPDATE audit.entries SET hash = $2 WHERE seq = $1")
        .bind(a)
        .bind(rehash.to_vec())
        .execute(&pool)
        .await
        .unwrap();
    let bad = verify_chain(&pool).await.unwrap().first_bad.unwrap();
    assert_eq!(
        (bad.seq, bad.problem),
        (seqs[12] as u64, Problem::ChainBroken)
    );
    sqlx::query("UPDATE audit.entries SET hash = $2, actor = $3 WHERE seq = $1")
        .bind(a)
        .bind(&saved.0)
        .bind(&saved.1)
        .execute(&pool)
        .await
        .unwrap();

    // 2. One row deleted.
    let row: Value = sqlx::query_scalar("SELECT to_jsonb(e) FROM audit.entries e WHERE seq = $1")
        .bind(b)
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit.entries WHERE seq = $1")
        .bind(b)
        .execute(&pool)
        .await
        .unwrap();
    let bad = verify_chain(&pool).await.unwrap().first_bad.unwrap();
    assert_eq!(
        (bad.seq, bad.problem),
        (seqs[22] as u64, Problem::ChainBroken)
    );
    let bad = first_bad(&bus, &pool).await.expect("a finding");
    assert_eq!((bad.seq, bad.problem), (b as u64, Problem::Deleted));
    sqlx::query(
        "INSERT INTO audit.entries SELECT * FROM jsonb_populate_record(NULL::audit.entries, $1)",
    )
    .bind(&row)
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(
        verify_chain(&pool).await.unwrap().first_bad,
        None,
        "restored"
    );

    // 3. Two rows swapped (everything but their position).
    let swap = "UPDATE audit.entries t SET occurred_at = o.occurred_at, actor = o.actor, actor_role = o.actor_role,
                  action = o.action, resource = o.resource, outcome = o.outcome, ip = o.ip, request_id = o.request_id,
                  reason = o.reason, event_id = o.event_id, event_source = o.event_source, event_type = o.event_type,
                  recorded_at = o.recorded_at, claimed = o.claimed, layout = o.layout,
                  prev_hash = o.prev_hash, hash = o.hash
                FROM audit.entries o WHERE (t.seq, o.seq) IN (($1, $2), ($2, $1))";
    sqlx::query(swap)
        .bind(a)
        .bind(b)
        .execute(&pool)
        .await
        .unwrap();
    let bad = verify_chain(&pool).await.unwrap().first_bad.unwrap();
    assert_eq!(bad.seq, a as u64, "{bad:?}");
    let bad = first_bad(&bus, &pool).await.expect("a finding");
    assert_eq!(bad.seq, a as u64, "{bad:?}");
    sqlx::query(swap)
        .bind(a)
        .bind(b)
        .execute(&pool)
        .await
        .unwrap();

    // 4. A row inserted that no event produced.
    sqlx::query(
        "INSERT INTO audit.entries SELECT * FROM jsonb_populate_record(NULL::audit.entries, $1)",
    )
    .bind({
        let mut r = row.clone();
        r["seq"] = json!(b * 1000);
        r
    })
    .execute(&pool)
    .await
    .unwrap();
    // A copied row no longer matches its hash (the position is hashed); the stream never had it.
    let bad = verify_chain(&pool).await.unwrap().first_bad.unwrap();
    assert_eq!(
        (bad.seq, bad.problem),
        ((b * 1000) as u64, Problem::Altered)
    );
    let bad = first_bad(&bus, &pool).await.expect("a finding");
    assert_eq!(
        (bad.seq, bad.problem),
        ((b * 1000) as u64, Problem::Inserted)
    );
    sqlx::query("DELETE FROM audit.entries WHERE seq = $1")
        .bind(b * 1000)
        .execute(&pool)
        .await
        .unwrap();

    assert_eq!(verify_chain(&pool).await.unwrap().first_bad, None);
    assert_eq!(first_bad(&bus, &pool).await, None);
    app.cleanup().await;
}

/// What the table alone cannot tell: a whole table rewritten consistently (every hash
/// recomputed), and a tail cut off together with the projection's own records of it (its
/// applied identities and its checkpoint). The stream, read with no table deciding what counts,
/// and the signed checkpoints on it name the first bad entry of each. A checkpoint forged
/// without this Kairos' signing key is refused and vouches for nothing.
#[sqlx::test(migrations = false)]
async fn a_consistent_rewrite_and_a_cut_tail_are_found_from_the_stream(pool: PgPool) {
    let mut app = spawn_app_with(
        pool.clone(),
        test_settings_with("[audit]\ncheckpoint_every = 5\n"),
        true,
    )
    .await;
    audited(&app).await;
    let bus = app.kairos.bus.clone();
    // The projection signs the chain's head as it grows; wait until a checkpoint is folded.
    let mut clean = verify_against_stream(&bus, &pool).await.unwrap();
    for _ in 0..100 {
        let signed: i64 = sqlx::query_scalar("SELECT signed_entries FROM audit.chain")
            .fetch_one(&pool)
            .await
            .unwrap();
        clean = verify_against_stream(&bus, &pool).await.unwrap();
        if signed > 0 && clean.signed.as_ref().unwrap().through_seq.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    app.stop_projections();
    let signed = clean.signed.clone().unwrap();
    assert_eq!(clean.first_bad, None, "{clean:?}");
    assert!(signed.checkpoints >= 1, "{signed:?}");
    let through = signed.through_seq.expect("a signed head");

    // Two forged checkpoints straight to NATS, vouching for a chain that never was.
    let forged =
        kairos_audit::checkpoint_event(through + 1000, &[7; 32], 9_999, chrono::Utc::now())
            .unwrap();
    let mut unsigned = app.kairos.settings.nats.clone();
    unsigned.signing_key = None;
    let mut other = app.kairos.settings.nats.clone();
    other.signing_key = Some("not-this-kairos-signing-key-0123456789".into());
    for config in [unsigned, other] {
        let forger = kairos_bus::Bus::connect(&config, "forger").await.unwrap();
        let mut e = forged.json().clone();
        e["id"] = json!(format!("forged-{}", config.signing_key.is_some()));
        forger
            .publish_event(&kairos_events::Event::from_value(e).unwrap())
            .await
            .unwrap();
    }
    let v = verify_against_stream(&bus, &pool).await.unwrap();
    assert_eq!(v.first_bad, None, "{v:?}");
    let s = v.signed.unwrap();
    assert_eq!(
        (s.refused_signatures, s.through_seq, s.checkpoints),
        (2, Some(through), signed.checkpoints),
        "forged checkpoints count for nothing"
    );

    // 1. The whole table rewritten consistently: alice's actions become mallory's, every hash
    //    recomputed. The chain holds; the stream says otherwise.
    let saved: Vec<Value> =
        sqlx::query_scalar("SELECT to_jsonb(e) FROM audit.entries e ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    let all = kairos_audit::query(&pool, &kairos_audit::Filter::default(), 1000, true)
        .await
        .unwrap();
    let mut prev = kairos_audit::GENESIS;
    let mut first_alice = None;
    for stored in &all {
        let mut e = stored.entry.clone();
        if let Some(c) = e.claimed.as_mut()
            && c.actor.as_deref() == Some("alice")
        {
            c.actor = Some("mallory".into());
            first_alice.get_or_insert(e.seq);
        }
        let hash = e.hash(&prev);
        sqlx::query(
            "UPDATE audit.entries SET claimed = $2, prev_hash = $3, hash = $4 WHERE seq = $1",
        )
        .bind(e.seq as i64)
        .bind(e.claimed.as_ref().map(sqlx::types::Json))
        .bind(prev.to_vec())
        .bind(hash.to_vec())
        .execute(&pool)
        .await
        .unwrap();
        prev = hash;
    }
    assert_eq!(
        verify_chain(&pool).await.unwrap().first_bad,
        None,
        "consistent"
    );
    let bad = first_bad(&bus, &pool).await.expect("a finding");
    assert_eq!(
        (bad.seq, bad.problem),
        (first_alice.unwrap(), Problem::Differs)
    );
    sqlx::query("DELETE FROM audit.entries")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO audit.entries SELECT r.* FROM jsonb_array_elements($1) j,
                LATERAL jsonb_populate_record(NULL::audit.entries, j) r",
    )
    .bind(Value::Array(saved))
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(first_bad(&bus, &pool).await, None, "restored");

    // 2. The tail cut off, up to and past the signed head, with the applied identities of the
    //    entries removed and the projection's checkpoint moved back before them.
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM audit.entries ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    let at = seqs.iter().position(|s| *s as u64 == through).unwrap();
    let cut = seqs[at.saturating_sub(2).max(1)];
    for sql in [
        "DELETE FROM audit.entries WHERE seq >= $1",
        "DELETE FROM audit.kairos_applied WHERE seq >= $1",
        "UPDATE kairos.checkpoints SET last_seq = $1 - 1 WHERE projection = 'audit'",
    ] {
        sqlx::query(sql).bind(cut).execute(&pool).await.unwrap();
    }
    assert_eq!(
        verify_chain(&pool).await.unwrap().first_bad,
        None,
        "the table alone cannot tell"
    );
    let bad = first_bad(&bus, &pool).await.expect("a finding");
    assert_eq!(
        (bad.seq, &bad.problem),
        (cut as u64, &Problem::Deleted),
        "{bad:?}"
    );
    app.cleanup().await;
}

/// Rewrites the rows of `entries` as given, chained from `prev`, the way the code that wrote
/// them would have.
async fn rewrite(pool: &PgPool, entries: &[kairos_audit::Entry], mut prev: [u8; 32]) {
    for e in entries {
        let hash = e.hash(&prev);
        sqlx::query(
            "UPDATE audit.entries SET actor = $2, actor_role = $3, ip = $4, request_id = $5,
                    recorded_at = $6, claimed = $7, layout = $8, prev_hash = $9, hash = $10
             WHERE seq = $1",
        )
        .bind(e.seq as i64)
        .bind(&e.actor)
        .bind(&e.actor_role)
        .bind(&e.ip)
        .bind(&e.request_id)
        .bind(e.recorded_at())
        .bind(e.claimed.as_ref().map(sqlx::types::Json))
        .bind(i16::from(e.layout))
        .bind(prev.to_vec())
        .bind(hash.to_vec())
        .execute(pool)
        .await
        .unwrap();
        prev = hash;
    }
}

/// An audit log written before entries kept the stream's time and a producer's claims apart
/// (layout 1) still verifies after the upgrade; entries appended after it are in layout 2,
/// chained to the old head; and a newer entry written back in the old layout is found, even
/// rehashed consistently.
#[sqlx::test(migrations = false)]
async fn entries_written_in_the_old_layout_still_verify(pool: PgPool) {
    let app = spawn_app_with(
        pool.clone(),
        test_settings_with(
            "[audit]\ncheckpoint_every = 100000\ncheckpoint_interval_secs = 86400\n",
        ),
        true,
    )
    .await;
    audited(&app).await;
    let bus = app.kairos.bus.clone();
    let all = |pool: PgPool| async move {
        kairos_audit::query(&pool, &kairos_audit::Filter::default(), 1000, true)
            .await
            .unwrap()
    };
    let old: Vec<_> = all(pool.clone())
        .await
        .iter()
        .map(|s| s.entry.in_layout(1))
        .collect();
    assert!(old.iter().any(|e| e.actor == "alice"), "claims were actors");
    rewrite(&pool, &old, kairos_audit::GENESIS).await;
    assert_eq!(verify_chain(&pool).await.unwrap().first_bad, None);
    let v = verify_against_stream(&bus, &pool).await.unwrap();
    assert_eq!((v.entries, v.first_bad), (43, None));

    app.ingest(&[action(100, "alice", "success")]).await;
    // The action, then the entry of the request that reported it.
    app.wait_for("audit", bus.last_seq().await.unwrap().0).await;
    let now = all(pool.clone()).await;
    let layouts: Vec<(u8, &str)> = now[43..]
        .iter()
        .map(|s| (s.entry.layout, s.entry.actor.as_str()))
        .collect();
    assert_eq!(layouts, [(2, "console"), (2, "admin@kairos.local")]);
    let newest = now.last().unwrap();
    assert_eq!(verify_chain(&pool).await.unwrap().first_bad, None);
    assert_eq!(first_bad(&bus, &pool).await, None);

    let before: [u8; 32] = now[now.len() - 2].hash.clone().try_into().unwrap();
    rewrite(&pool, &[newest.entry.in_layout(1)], before).await;
    assert_eq!(
        verify_chain(&pool).await.unwrap().first_bad,
        None,
        "consistent"
    );
    let bad = first_bad(&bus, &pool).await.expect("a finding");
    assert_eq!(
        (bad.seq, &bad.problem),
        (newest.entry.seq, &Problem::Differs),
        "{bad:?}"
    );
    app.cleanup().await;
}

/// Events that aged out of the stream (`nats.max_age_days`) leave their entries in the table:
/// the stream check passes over them, says how many it could not check, and still checks every
/// entry whose event the stream holds.
#[sqlx::test(migrations = false)]
async fn entries_whose_events_aged_out_are_not_taken_for_insertions(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    audited(&app).await;
    let bus = app.kairos.bus.clone();
    app.wait_for("audit", bus.last_seq().await.unwrap().0).await;
    app.expire_stored_events().await;

    app.ingest(&[
        action(100, "alice", "success"),
        action(101, "bob", "success"),
    ])
    .await;
    app.wait_for("audit", bus.last_seq().await.unwrap().0).await;
    let v = verify_against_stream(&bus, &pool).await.unwrap();
    assert_eq!(v.first_bad, None, "{v:?}");
    let s = v.signed.unwrap();
    assert_eq!(s.aged_out, 43, "{s:?}");
    assert!(s.stream_first_seq > 43, "{s:?}");
    assert_eq!(
        v.entries,
        43 + 3,
        "two actions and the request that reported them"
    );
    assert_eq!(verify_chain(&pool).await.unwrap().first_bad, None);

    // An entry whose event the stream still holds is still checked.
    let kept: i64 = sqlx::query_scalar("SELECT min(seq) FROM audit.entries WHERE seq >= $1")
        .bind(s.stream_first_seq as i64)
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit.entries SET outcome = 'denied' WHERE seq = $1")
        .bind(kept)
        .execute(&pool)
        .await
        .unwrap();
    let bad = first_bad(&bus, &pool).await.expect("a finding");
    assert_eq!((bad.seq, &bad.problem), (kept as u64, &Problem::Differs));
    app.cleanup().await;
}

/// `audit verify` keeps a bounded number of identities in memory: past it, they move to a
/// temporary table of its own session. A retry whose first event was met before the move is
/// still a retry, and the table goes with the session.
#[sqlx::test(migrations = false)]
async fn verify_moves_the_identities_it_met_out_of_memory(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    audited(&app).await;
    let bus = app.kairos.bus.clone();
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit.entries")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let entries = count().await;
    // Retries straight to NATS (no `Nats-Msg-Id`, so the server keeps them): the same bytes,
    // long after their first events. They make no entry.
    let js = bus.jetstream().clone();
    for i in [1, 2, 29, 38] {
        let e = action(i, "alice", "success");
        let subject = kairos_events::Event::from_value(e.clone())
            .unwrap()
            .nats_subject(app.prefix());
        js.publish(subject, serde_json::to_vec(&e).unwrap().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    app.wait_for("audit", bus.last_seq().await.unwrap().0).await;
    assert_eq!(count().await, entries);
    // Three identities in memory: the forty-odd met before the retries are in the table by
    // then. Twice: the first run's table is gone with it.
    for cap in [kairos_audit::IDENTITIES_IN_MEMORY, 3, 3] {
        let v = kairos_audit::verify_against_stream_within(&bus, &pool, cap)
            .await
            .unwrap();
        assert_eq!(v.first_bad, None, "cap {cap}: {v:?}");
        assert_eq!(v.entries, entries as u64);
        let spilled = v.signed.unwrap().spilled_identities;
        if cap == 3 {
            assert!(spilled >= 40, "cap {cap}: {spilled} identities moved");
        } else {
            assert_eq!(spilled, 0);
        }
    }
    app.cleanup().await;
}
