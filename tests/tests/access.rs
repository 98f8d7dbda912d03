//! Teams and roles: every endpoint against the permission matrix, invitations and keys through
//! their whole life, one audit entry per write (denied ones included), and secrets that never
//! reach logs, errors, audit entries or the stream.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use kairos_access::Role;
use kairos_api::{Guard, admits};
use kairos_tests::{TestApp, client, llm_call, send, spawn_app};
use serde_json::{Value, json};
use sqlx::PgPool;

/// A request for one endpoint, and the status a caller allowed to make it gets.
struct Sample {
    method: &'static str,
    template: &'static str,
    path: String,
    body: Option<Value>,
    ok: u16,
}

fn samples(n: usize) -> Vec<Sample> {
    let nobody = uuid::Uuid::new_v4();
    let s = |method, template, path: &str, body: Option<Value>, ok| Sample {
        method,
        template,
        path: path.to_owned(),
        body,
        ok,
    };
    vec![
        s("GET", "/health/live", "/health/live", None, 200),
        s("GET", "/health/ready", "/health/ready", None, 200),
        s("GET", "/openapi.json", "/openapi.json", None, 200),
        s("GET", "/metrics", "/metrics", None, 200),
        s("GET", "/v1/me", "/v1/me", None, 200),
        s(
            "POST",
            "/v1/events",
            "/v1/events",
            Some(llm_call(&format!("m{n}"), "alpha", "0.01")),
            202,
        ),
        s("GET", "/v1/events", "/v1/events?limit=5", None, 200),
        s(
            "GET",
            "/v1/projects/{project}/budget",
            "/v1/projects/alpha/budget",
            None,
            200,
        ),
        s(
            "PUT",
            "/v1/projects/{project}/budget",
            "/v1/projects/alpha/budget",
            Some(json!({"monthly_limit": "100"})),
            202,
        ),
        s("GET", "/v1/budgets", "/v1/budgets", None, 200),
        s("GET", "/v1/projections", "/v1/projections", None, 200),
        // An unknown projection: the guard is what is tested, not a rebuild.
        s(
            "POST",
            "/v1/projections/{name}/replay",
            "/v1/projections/nope/replay",
            None,
            404,
        ),
        s("GET", "/v1/audit", "/v1/audit?limit=5", None, 200),
        s("GET", "/v1/audit/verify", "/v1/audit/verify", None, 200),
        s(
            "GET",
            "/v1/audit/export",
            "/v1/audit/export?from=2099-01-01T00:00:00Z",
            None,
            200,
        ),
        s("GET", "/v1/members", "/v1/members", None, 200),
        s(
            "PUT",
            "/v1/members/{id}/role",
            &format!("/v1/members/{nobody}/role"),
            Some(json!({"role": "viewer"})),
            404,
        ),
        s(
            "DELETE",
            "/v1/members/{id}",
            &format!("/v1/members/{nobody}"),
            None,
            404,
        ),
        s("GET", "/v1/invitations", "/v1/invitations", None, 200),
        s(
            "DELETE",
            "/v1/invitations/{id}",
            &format!("/v1/invitations/{nobody}"),
            None,
            404,
        ),
        s(
            "POST",
            "/v1/invitations",
            "/v1/invitations",
            Some(json!({"email": format!("new{n}@example.com"), "role": "viewer"})),
            201,
        ),
        s(
            "POST",
            "/v1/invitations/accept",
            "/v1/invitations/accept",
            Some(json!({"token": "kinv_unknown"})),
            404,
        ),
        s("GET", "/v1/api-keys", "/v1/api-keys", None, 200),
        s(
            "POST",
            "/v1/api-keys",
            "/v1/api-keys",
            Some(json!({"name": format!("k{n}")})),
            201,
        ),
        s(
            "DELETE",
            "/v1/api-keys/{id}",
            &format!("/v1/api-keys/{nobody}"),
            None,
            404,
        ),
        s("GET", "/v1/catalog", "/v1/catalog", None, 200),
        s(
            "PUT",
            "/v1/catalog",
            "/v1/catalog",
            Some(json!({"models": []})),
            202,
        ),
        s(
            "GET",
            "/v1/catalog/versions",
            "/v1/catalog/versions",
            None,
            200,
        ),
        // No catalog here: the guard is what is tested, and no model fits.
        s(
            "POST",
            "/v1/route",
            "/v1/route",
            Some(json!({"project": "alpha", "input_tokens": 10, "expected_output_tokens": 10})),
            422,
        ),
        s(
            "GET",
            "/v1/route/decisions",
            "/v1/route/decisions",
            None,
            200,
        ),
        s(
            "POST",
            "/v1/route/simulate",
            "/v1/route/simulate",
            Some(
                json!({"models": [], "from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z"}),
            ),
            200,
        ),
        s(
            "GET",
            "/v1/route/decisions/{id}",
            "/v1/route/decisions/nope",
            None,
            404,
        ),
        s(
            "GET",
            "/v1/analytics/models",
            "/v1/analytics/models",
            None,
            200,
        ),
        s(
            "GET",
            "/v1/analytics/projects/{project}",
            "/v1/analytics/projects/alpha",
            None,
            200,
        ),
        s(
            "GET",
            "/v1/workflows/sessions/{session}/suggestions",
            "/v1/workflows/sessions/nobody/suggestions",
            None,
            404,
        ),
        s(
            "GET",
            "/v1/workflows/patterns",
            "/v1/workflows/patterns?project=alpha",
            None,
            200,
        ),
        s(
            "GET",
            "/v1/workflows/families",
            "/v1/workflows/families?project=alpha",
            None,
            200,
        ),
        s(
            "GET",
            "/v1/workflows/actors",
            "/v1/workflows/actors?project=alpha",
            None,
            200,
        ),
        s(
            "GET",
            "/v1/anomalies",
            "/v1/anomalies?status=open",
            None,
            200,
        ),
        s(
            "POST",
            "/v1/anomalies/{id}/acknowledge",
            "/v1/anomalies/alert-nope/acknowledge",
            Some(json!({})),
            404,
        ),
        s("GET", "/v1/series", "/v1/series", None, 200),
        s(
            "GET",
            "/v1/series/{series}/scores",
            "/v1/series/nope/scores",
            None,
            404,
        ),
        s("GET", "/v1/breakers", "/v1/breakers", None, 200),
    ]
}

async fn call(
    app: &TestApp,
    key: Option<&str>,
    s: &Sample,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let http = match key {
        Some(k) => client(k),
        None => reqwest::Client::new(),
    };
    let method = reqwest::Method::from_bytes(s.method.as_bytes()).unwrap();
    let mut req = http.request(method, format!("{}{}", app.url, s.path));
    if let Some(b) = &s.body {
        req = req.json(b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    // Errors are JSON; some answers (metrics, exports, liveness) are text.
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body, headers)
}

#[sqlx::test(migrations = false)]
async fn every_endpoint_answers_as_the_matrix_says(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (_, developer) = app.join("dev@example.com", "developer", None).await;
    let (_, viewer) = app.join("viewer@example.com", "viewer", None).await;
    let (status, spare) = app
        .post_json("/v1/api-keys", &json!({"name": "to revoke"}))
        .await;
    assert_eq!(status, 201, "{spare}");
    let (status, r) = app
        .delete(&format!(
            "/v1/api-keys/{}",
            spare["key_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200, "{r}");
    let revoked = spare["api_key"].as_str().unwrap().to_owned();
    // The budget the GET samples read exists before them (they do not wait for the projection).
    let (status, r) = app
        .put_json(
            "/v1/projects/alpha/budget",
            &json!({"monthly_limit": "100"}),
        )
        .await;
    assert_eq!(status, 202, "{r}");
    app.wait_for("budgets", r["seq"].as_u64().unwrap()).await;

    let callers: [(&str, Option<&str>, Option<Role>); 5] = [
        ("no key", None, None),
        ("revoked key", Some(&revoked), None),
        ("admin", Some(&app.admin_key), Some(Role::Admin)),
        ("developer", Some(&developer), Some(Role::Developer)),
        ("viewer", Some(&viewer), Some(Role::Viewer)),
    ];
    let endpoints = kairos::startup::endpoints(&app.kairos.modules);
    let mut cells = 0;
    for (n, sample) in samples(0).iter().enumerate() {
        let endpoint = endpoints
            .find(sample.method, sample.template)
            .unwrap_or_else(|| {
                panic!("{} {} is not in the matrix", sample.method, sample.template)
            });
        for (who, key, role) in &callers {
            // Fresh bodies per call (unique invitation e-mails, event ids, key names).
            let sample = &samples(n * 10 + cells)[n];
            let (status, body, headers) = call(&app, *key, sample).await;
            let cell = format!("{who} → {} {}: {status} {body}", sample.method, sample.path);
            let expected = match (endpoint.guard, role) {
                (Guard::Public, _) => sample.ok,
                (_, None) => 401,
                (guard, Some(role)) if admits(guard, *role) => sample.ok,
                _ => 403,
            };
            assert_eq!(status, expected, "{cell}");
            match status {
                401 => {
                    assert_eq!(body["error"]["code"], "unauthorized", "{cell}");
                    assert_eq!(headers["www-authenticate"], "Bearer", "{cell}");
                }
                403 => assert_eq!(body["error"]["code"], "forbidden", "{cell}"),
                _ => {}
            }
            cells += 1;
        }
    }
    assert_eq!(
        cells,
        endpoints.iter().count() * callers.len(),
        "every cell of the matrix"
    );
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn invitations_keys_and_roles_through_their_life(pool: PgPool) {
    let app = spawn_app(pool).await;
    let anonymous = reqwest::Client::new();
    let accept = |token: &Value| {
        anonymous
            .post(format!("{}/v1/invitations/accept", app.url))
            .json(&json!({ "token": token }))
    };

    // An expired token, a reused one and an unknown one are refused.
    let (status, short) = app
        .post_json(
            "/v1/invitations",
            &json!({"email": "late@example.com", "role": "viewer", "expires_in_seconds": 1}),
        )
        .await;
    assert_eq!(status, 201, "{short}");
    app.kairos
        .clock
        .advance(chrono::TimeDelta::milliseconds(1500));
    assert_eq!(short["accept"], "/v1/invitations/accept");
    let (status, r) = send(accept(&short["token"])).await;
    assert_eq!(
        (status, r["error"]["code"].as_str()),
        (410, Some("gone")),
        "{r}"
    );
    let (status, inv) = app
        .post_json(
            "/v1/invitations",
            &json!({"email": "dana@example.com", "role": "developer", "projects": ["p1"]}),
        )
        .await;
    assert_eq!(status, 201, "{inv}");
    // The token never goes in a URL: the old path with it is no route at all.
    let in_path = format!(
        "{}/v1/invitations/{}/accept",
        app.url,
        inv["token"].as_str().unwrap()
    );
    let (status, r) = send(anonymous.post(in_path).json(&json!({}))).await;
    assert_eq!(status, 404, "{r}");
    let (status, joined) = send(accept(&inv["token"])).await;
    assert_eq!(status, 201, "{joined}");
    let (status, r) = send(accept(&inv["token"])).await;
    assert_eq!(status, 410, "reused: {r}");
    let (status, r) = send(accept(&json!("kinv_nope"))).await;
    assert_eq!(status, 404, "{r}");

    // An open invitation can be revoked: its token admits nobody from the moment the revocation
    // answers. Revoking it again, or one accepted already, is a conflict.
    let (status, open) = app
        .post_json(
            "/v1/invitations",
            &json!({"email": "eve@example.com", "role": "admin"}),
        )
        .await;
    assert_eq!(status, 201, "{open}");
    let id = open["invitation_id"].as_str().unwrap();
    let (status, r) = app.delete(&format!("/v1/invitations/{id}")).await;
    assert_eq!((status, r["revoked"].as_bool()), (200, Some(true)), "{r}");
    let revoked_at = r["seq"].as_u64().unwrap();
    let (status, r) = send(accept(&open["token"])).await;
    assert_eq!(
        (status, r["error"]["message"].as_str()),
        (410, Some("this invitation was revoked")),
        "{r}"
    );
    let (status, r) = app.delete(&format!("/v1/invitations/{id}")).await;
    assert_eq!(status, 409, "again: {r}");
    let accepted = inv["invitation_id"].as_str().unwrap();
    let (status, r) = app.delete(&format!("/v1/invitations/{accepted}")).await;
    assert_eq!(status, 409, "accepted: {r}");
    let (status, r) = app.delete("/v1/invitations/not-an-id").await;
    assert_eq!(status, 404, "{r}");
    let (_, list) = app
        .get(&format!("/v1/invitations?min_seq={revoked_at}"))
        .await;
    let listed = list["invitations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["invitation_id"] == id)
        .unwrap();
    assert!(listed["revoked_at"].is_string(), "{listed}");
    assert_eq!(listed["revoked_by"], "admin@kairos.local", "{listed}");
    assert!(listed["accepted_at"].is_null(), "{listed}");
    app.wait_for("audit", revoked_at).await;
    let (_, log) = app
        .get("/v1/audit?action=member.revoke_invitation&outcome=success")
        .await;
    assert_eq!(
        log["entries"][0]["resource"],
        format!("invitation:{id}"),
        "{log}"
    );
    let (status, r) = app
        .post_json(
            "/v1/invitations",
            &json!({"email": "DANA@example.com", "role": "viewer"}),
        )
        .await;
    assert_eq!(status, 409, "already a member: {r}");

    // The narrowed developer reaches p1 only.
    let dana = client(joined["api_key"].as_str().unwrap());
    let (_, me) = send(dana.get(format!("{}/v1/me", app.url))).await;
    assert_eq!(
        (me["role"].as_str(), me["projects"].clone()),
        (Some("developer"), json!(["p1"]))
    );
    let put = |project: &str| {
        dana.put(format!("{}/v1/projects/{project}/budget", app.url))
            .json(&json!({"monthly_limit": "5"}))
    };
    assert_eq!(send(put("p1")).await.0, 202);
    assert_eq!(send(put("p2")).await.0, 403);
    let (status, r) = send(
        dana.post(format!("{}/v1/events", app.url))
            .header("content-type", "application/cloudevents-batch+json")
            .json(&json!([
                llm_call("d1", "p1", "1"),
                llm_call("d2", "p2", "1")
            ])),
    )
    .await;
    assert_eq!(status, 202, "{r}");
    assert_eq!(
        (r["accepted"].as_u64(), r["rejected"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(r["results"][1]["error"]["code"], "forbidden");
    assert_eq!(
        send(dana.get(format!("{}/v1/events", app.url))).await.0,
        403
    );
    assert_eq!(
        send(dana.get(format!("{}/v1/events?project=p1", app.url)))
            .await
            .0,
        403,
        "the raw stream is audit material"
    );
    let (_, p2) = app
        .put_json("/v1/projects/p2/budget", &json!({"monthly_limit": "7"}))
        .await;
    let (_, list) = send(dana.get(format!(
        "{}/v1/budgets?period=2026-11&min_seq={}",
        app.url, p2["seq"]
    )))
    .await;
    let seen: Vec<&str> = list["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["project"].as_str().unwrap())
        .collect();
    assert_eq!(seen, ["p1"], "{list}");

    // Nobody publishes identity events around the API, not even an admin.
    let (status, r) = app
        .post_events(
            "application/cloudevents+json",
            serde_json::to_vec(&json!({"specversion": "1.0", "id": "x", "source": "me", "type": "kairos.role.assigned.v1",
                "data": {"member_id": joined["member_id"], "role": "admin", "actor": "me"}}))
            .unwrap(),
        )
        .await;
    assert_eq!(
        (status, r["results"][0]["error"]["code"].as_str()),
        (400, Some("reserved_type")),
        "{r}"
    );

    // Nor reports an action in Kairos's name.
    let mut forged = kairos_tests::llm_call("f1", "p1", "1");
    forged["source"] = json!("kairos/api");
    let (status, r) = app
        .post_events(
            "application/cloudevents+json",
            serde_json::to_vec(&forged).unwrap(),
        )
        .await;
    assert_eq!(
        (status, r["results"][0]["error"]["code"].as_str()),
        (400, Some("reserved_source")),
        "{r}"
    );

    // A role change applies on the next request.
    let dana_id = joined["member_id"].as_str().unwrap();
    let (status, r) = app
        .put_json(
            &format!("/v1/members/{dana_id}/role"),
            &json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(send(put("p1")).await.0, 403);
    let (status, r) = app
        .put_json(
            &format!("/v1/members/{dana_id}/role"),
            &json!({"role": "admin", "projects": ["p1"]}),
        )
        .await;
    assert_eq!(
        (status, r["error"]["field"].as_str()),
        (400, Some("projects")),
        "{r}"
    );

    // Keys: a second one, revoked, is refused on the next request; others' keys are not theirs.
    let (status, k2) = send(
        dana.post(format!("{}/v1/api-keys", app.url))
            .json(&json!({"name": "laptop"})),
    )
    .await;
    assert_eq!(status, 201, "{k2}");
    let laptop = client(k2["api_key"].as_str().unwrap());
    assert_eq!(send(laptop.get(format!("{}/v1/me", app.url))).await.0, 200);
    let (_, admins) = app
        .get(&format!("/v1/api-keys?min_seq={}", k2["seq"]))
        .await;
    let admin_key_id = admins["api_keys"][0]["key_id"].as_str().unwrap().to_owned();
    let (status, _) = send(dana.delete(format!("{}/v1/api-keys/{admin_key_id}", app.url))).await;
    assert_eq!(
        status, 404,
        "another member's key is not found for a non-admin"
    );
    let (status, r) = send(dana.delete(format!(
        "{}/v1/api-keys/{}",
        app.url,
        k2["key_id"].as_str().unwrap()
    )))
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(send(laptop.get(format!("{}/v1/me", app.url))).await.0, 401);
    assert_eq!(send(dana.get(format!("{}/v1/me", app.url))).await.0, 200);

    // The last admin stays; a removed member's keys stop working.
    let (_, me) = app.get("/v1/me").await;
    let admin_id = me["member_id"].as_str().unwrap().to_owned();
    let (status, r) = app
        .put_json(
            &format!("/v1/members/{admin_id}/role"),
            &json!({"role": "developer"}),
        )
        .await;
    assert_eq!(status, 409, "{r}");
    assert_eq!(app.delete(&format!("/v1/members/{admin_id}")).await.0, 409);
    let (status, r) = app
        .delete(&format!("/v1/members/{dana_id}?reason=left"))
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(send(dana.get(format!("{}/v1/me", app.url))).await.0, 401);
    let (_, members) = app
        .get(&format!(
            "/v1/members?include_removed=true&min_seq={}",
            r["seq"]
        ))
        .await;
    let statuses: Vec<(&str, &str)> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["email"].as_str().unwrap(), m["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("admin@kairos.local", "active"),
            ("dana@example.com", "removed")
        ]
    );
    app.cleanup().await;
}

/// (key, method, path, body, expected status, audited actor, outcome, action)
type AuditCase<'a> = (
    Option<&'a str>,
    &'a str,
    String,
    Value,
    u16,
    &'a str,
    &'a str,
    &'a str,
);

#[sqlx::test(migrations = false)]
async fn every_write_leaves_exactly_one_audit_entry(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (viewer_id, viewer) = app.join("vera@example.com", "viewer", None).await;
    let (dev_id, developer) = app.join("devi@example.com", "developer", None).await;
    let admin = app.admin_key.clone();
    let vk: Value = app
        .get(&format!("/v1/api-keys?member_id={viewer_id}"))
        .await
        .1;
    let viewer_key_id = vk["api_keys"][0]["key_id"].as_str().unwrap().to_owned();
    let (_, inv) = app
        .post_json(
            "/v1/invitations",
            &json!({"email": "x@example.com", "role": "viewer"}),
        )
        .await;
    let token = inv["token"].clone();

    // (who, method, path, body, expected status, audited actor, outcome, action)
    let mut forged_budget = kairos_tests::budget_set("fb1", "alpha", "1", 50);
    forged_budget["data"]["actor"] = json!("ceo@example.com");
    forged_budget["data"]["actor_role"] = json!("admin");
    let reserved = json!({"specversion": "1.0", "id": "r1", "source": "me", "type": "kairos.role.assigned.v1",
        "data": {"member_id": dev_id, "role": "admin", "actor": "me"}});
    let writes: Vec<AuditCase> = vec![
        (
            Some(&admin),
            "POST",
            "/v1/events".into(),
            reserved,
            400,
            "admin@kairos.local",
            "denied",
            "events.publish",
        ),
        (
            Some(&admin),
            "POST",
            "/v1/events".into(),
            forged_budget,
            202,
            "admin@kairos.local",
            "success",
            "events.publish",
        ),
        (
            Some(&admin),
            "POST",
            "/v1/events".into(),
            llm_call("w1", "alpha", "1"),
            202,
            "admin@kairos.local",
            "success",
            "events.publish",
        ),
        (
            Some(&viewer),
            "POST",
            "/v1/events".into(),
            llm_call("w2", "alpha", "1"),
            403,
            "vera@example.com",
            "denied",
            "events.publish",
        ),
        (
            None,
            "POST",
            "/v1/events".into(),
            llm_call("w3", "alpha", "1"),
            401,
            "anonymous",
            "denied",
            "events.publish",
        ),
        (
            Some(&developer),
            "PUT",
            "/v1/projects/alpha/budget".into(),
            json!({"monthly_limit": "9"}),
            202,
            "devi@example.com",
            "success",
            "budget.set",
        ),
        (
            Some(&developer),
            "PUT",
            "/v1/projects/alpha/budget".into(),
            json!({"monthly_limit": "-9"}),
            400,
            "devi@example.com",
            "failure",
            "budget.set",
        ),
        (
            Some(&viewer),
            "PUT",
            "/v1/projects/alpha/budget".into(),
            json!({"monthly_limit": "9"}),
            403,
            "vera@example.com",
            "denied",
            "budget.set",
        ),
        (
            Some(&admin),
            "POST",
            "/v1/invitations".into(),
            json!({"email": "y@example.com", "role": "viewer"}),
            201,
            "admin@kairos.local",
            "success",
            "member.invite",
        ),
        (
            Some(&developer),
            "POST",
            "/v1/invitations".into(),
            json!({"email": "z@example.com", "role": "admin"}),
            403,
            "devi@example.com",
            "denied",
            "member.invite",
        ),
        (
            None,
            "POST",
            "/v1/invitations/accept".into(),
            json!({"token": token.clone()}),
            201,
            "x@example.com",
            "success",
            "member.join",
        ),
        (
            None,
            "POST",
            "/v1/invitations/accept".into(),
            json!({"token": token}),
            410,
            "anonymous",
            "failure",
            "member.join",
        ),
        (
            Some(&admin),
            "PUT",
            format!("/v1/members/{dev_id}/role"),
            json!({"role": "viewer"}),
            200,
            "admin@kairos.local",
            "success",
            "member.set_role",
        ),
        (
            Some(&viewer),
            "PUT",
            format!("/v1/members/{dev_id}/role"),
            json!({"role": "admin"}),
            403,
            "vera@example.com",
            "denied",
            "member.set_role",
        ),
        (
            Some(&viewer),
            "POST",
            "/v1/api-keys".into(),
            json!({"name": "ci"}),
            201,
            "vera@example.com",
            "success",
            "api_key.issue",
        ),
        (
            Some(&viewer),
            "POST",
            "/v1/api-keys".into(),
            json!({"name": "sneaky", "member_id": dev_id}),
            403,
            "vera@example.com",
            "denied",
            "api_key.issue",
        ),
        (
            Some(&admin),
            "DELETE",
            format!("/v1/api-keys/{viewer_key_id}"),
            Value::Null,
            200,
            "admin@kairos.local",
            "success",
            "api_key.revoke",
        ),
        (
            Some(&viewer),
            "DELETE",
            format!("/v1/members/{dev_id}"),
            Value::Null,
            401,
            "anonymous",
            "denied",
            "member.remove",
        ),
        (
            Some(&admin),
            "DELETE",
            format!("/v1/members/{dev_id}"),
            Value::Null,
            200,
            "admin@kairos.local",
            "success",
            "member.remove",
        ),
        (
            Some(&admin),
            "POST",
            "/v1/projections/nope/replay".into(),
            Value::Null,
            404,
            "admin@kairos.local",
            "failure",
            "projection.replay",
        ),
        (
            Some(&developer),
            "POST",
            "/v1/projections/budgets/replay".into(),
            Value::Null,
            401,
            "anonymous",
            "denied",
            "projection.replay",
        ),
    ];
    let mut ids = Vec::new();
    for (i, (key, method, path, body, status, ..)) in writes.iter().enumerate() {
        let http = key.map_or_else(reqwest::Client::new, client);
        let id = format!("audit-test-{i}");
        let mut req = http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", app.url),
            )
            .header("x-request-id", &id);
        if !body.is_null() {
            req = req.json(body);
        }
        let (got, r) = send(req).await;
        assert_eq!(got, *status, "write {i} {method} {path}: {r}");
        ids.push(id);
    }
    let last = app.kairos.bus.last_seq().await.unwrap().0;
    app.wait_for("audit", last).await;
    for (i, (_, method, path, _, _, actor, outcome, action)) in writes.iter().enumerate() {
        let (status, r) = app.get("/v1/audit?limit=1000").await;
        assert_eq!(status, 200);
        let found: Vec<&Value> = r["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["request_id"] == ids[i])
            .collect();
        // Refused for want of a valid key: counted per address and minute, below.
        if *actor == "anonymous" {
            assert_eq!(found.len(), 0, "write {i} {method} {path}: {found:?}");
            continue;
        }
        assert_eq!(found.len(), 1, "write {i} {method} {path}: {found:?}");
        let e = found[0];
        assert_eq!(
            (
                e["actor"].as_str(),
                e["outcome"].as_str(),
                e["action"].as_str()
            ),
            (Some(*actor), Some(*outcome), Some(*action)),
            "write {i} {method} {path}: {e}"
        );
        assert_eq!(e["ip"], "127.0.0.1", "{e}");
    }
    // Once the clock has left the minute, its refusals are one entry for the address.
    let anonymous = writes.iter().filter(|w| w.5 == "anonymous").count();
    app.kairos.clock.advance(chrono::TimeDelta::seconds(60));
    let refused = app.refusals().await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    let reason = refused[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("{anonymous} requests without a valid key")),
        "{reason}"
    );
    assert!(reason.contains("POST /v1/events ×1"), "{reason}");
    assert_eq!(
        (refused[0]["actor"].as_str(), refused[0]["ip"].as_str()),
        (Some("anonymous"), Some("127.0.0.1"))
    );
    // The budget change that event reported is audited under its producer, not the actor it
    // claims: only Kairos's own events name who acted.
    let (_, r) = app.get("/v1/audit?action=budget.set&limit=1000").await;
    let reported: Vec<&Value> = r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_id"] == "fb1")
        .collect();
    assert_eq!(reported.len(), 1, "{r}");
    assert_eq!(
        (
            reported[0]["actor"].as_str(),
            reported[0]["actor_role"].as_str()
        ),
        (Some("test/admin"), None),
        "{}",
        reported[0]
    );
    let verified = kairos_audit::verify_chain(&pool).await.unwrap();
    assert_eq!(verified.first_bad, None);
    app.cleanup().await;
}

/// Everything the process logs, at every level.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        logs
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[sqlx::test(migrations = false)]
async fn keys_never_appear_in_logs_errors_audit_or_the_stream(pool: PgPool) {
    let logs = captured();
    let app = spawn_app(pool.clone()).await;
    let (_, inv) = app
        .post_json(
            "/v1/invitations",
            &json!({"email": "sam@example.com", "role": "developer"}),
        )
        .await;
    let token = inv["token"].as_str().unwrap().to_owned();
    let (_, joined) = send(
        reqwest::Client::new()
            .post(format!("{}{}", app.url, inv["accept"].as_str().unwrap()))
            .json(&json!({"token": token})),
    )
    .await;
    let sam = joined["api_key"].as_str().unwrap().to_owned();
    let (_, k2) = send(
        client(&sam)
            .post(format!("{}/v1/api-keys", app.url))
            .json(&json!({"name": "second"})),
    )
    .await;
    let second = k2["api_key"].as_str().unwrap().to_owned();
    let (_, me) = send(client(&sam).get(format!("{}/v1/me", app.url))).await;
    assert_eq!(me["email"], "sam@example.com", "{me}");
    // Listing the stream shows who holds keys, never hashes; without read_audit, not even that.
    let (_, all) = app.get("/v1/events?limit=1000").await;
    let identity: Vec<&Value> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| kairos_events::is_identity(e["event"]["type"].as_str().unwrap_or("")))
        .collect();
    assert!(identity.len() >= 4, "{all}");
    for e in &identity {
        let d = &e["event"]["data"];
        assert!(
            d.get("hash").is_none()
                && d.get("lookup").is_none()
                && d.get("token_hash").is_none()
                && d["key"].get("hash").is_none(),
            "{e}"
        );
    }
    let (status, _) = send(client(&sam).get(format!("{}/v1/events?limit=1000", app.url))).await;
    assert_eq!(
        status, 403,
        "the raw stream is for those who may read the audit log"
    );
    let secrets = [
        app.admin_key.clone(),
        token.clone(),
        sam.clone(),
        second.clone(),
    ];
    // Use every key; reuse the token; try near misses and hostile headers.
    let mut answers = Vec::new();
    for key in &secrets[2..] {
        answers.push(send(client(key).get(format!("{}/v1/me", app.url))).await);
        answers.push(
            send(
                client(key)
                    .put(format!("{}/v1/projects/p/budget", app.url))
                    .json(&json!({"monthly_limit": "x"})),
            )
            .await,
        );
    }
    answers.push(
        send(
            reqwest::Client::new()
                .post(format!("{}/v1/invitations/accept", app.url))
                .json(&json!({"token": token})),
        )
        .await,
    );
    // The same lookup prefix, a different secret.
    let last = if sam.ends_with('0') { '1' } else { '0' };
    let near_miss = format!("{}{last}", &sam[..sam.len() - 1]);
    for header in [
        format!("Bearer {near_miss}"),
        format!("Basic {sam}"),
        format!("Bearer {sam} {sam}"),
        format!("bearer {}", "k".repeat(10_000)),
        "Bearer ' OR 1=1 --".to_owned(),
        "Bearer".to_owned(),
    ] {
        let (status, body) = send(
            reqwest::Client::new()
                .post(format!("{}/v1/events", app.url))
                .header("authorization", header.as_str())
                .json(&llm_call("h", "p", "1")),
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{header:.40}: {body}"
        );
        answers.push((status, body));
    }
    // The refusals are counted for the minute: it is over, and its entry is in the log.
    app.kairos.clock.advance(chrono::TimeDelta::seconds(60));
    assert_eq!(app.refusals().await.len(), 1);
    let last = app.kairos.bus.last_seq().await.unwrap().0;
    app.wait_for("audit", last).await;
    let audit: Vec<Value> = sqlx::query_scalar("SELECT to_jsonb(e) FROM audit.entries e")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(audit.iter().any(|e| {
        e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("unknown API key"))
    }));
    let access: Vec<Value> = sqlx::query_scalar(
        "SELECT to_jsonb(t) FROM (SELECT * FROM access.api_keys) t UNION ALL SELECT to_jsonb(i) FROM access.invitations i",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let stream: Vec<String> = app
        .read_stream(
            app.kairos.bus.stream_name(),
            &format!("{}.events.>", app.prefix()),
        )
        .await
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logs.contains("/v1/invitations/accept"),
        "requests are logged"
    );
    for secret in &secrets {
        let secret = secret.as_str();
        for (what, text) in [
            ("logs", logs.clone()),
            ("answers", format!("{answers:?}")),
            ("audit entries", format!("{audit:?}")),
            ("access tables", format!("{access:?}")),
            ("stream", stream.join("\n")),
        ] {
            assert!(
                !text.contains(secret),
                "a secret ({:.12}…) is in the {what}",
                secret
            );
        }
        // Nor a large piece of one.
        assert!(
            !logs.contains(&secret[..24.min(secret.len())]),
            "a secret's prefix is in the logs"
        );
    }
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn identity_endpoints_refuse_bad_input_naming_the_field(pool: PgPool) {
    let app = spawn_app(pool).await;
    let long = "a".repeat(10_000);
    let cases: Vec<(&str, String, Value, u16, Option<&str>)> = vec![
        (
            "POST",
            "/v1/invitations".into(),
            json!({"email": "nobody", "role": "viewer"}),
            400,
            Some("email"),
        ),
        (
            "POST",
            "/v1/invitations".into(),
            json!({"email": format!("{long}@x.io"), "role": "viewer"}),
            400,
            Some("email"),
        ),
        (
            "POST",
            "/v1/invitations".into(),
            json!({"email": "a@b.io", "role": "root"}),
            400,
            Some("role"),
        ),
        (
            "POST",
            "/v1/invitations".into(),
            json!({"email": "a@b.io", "role": 5}),
            400,
            None,
        ),
        (
            "POST",
            "/v1/invitations".into(),
            json!({"email": "a@b.io", "role": "viewer", "projects": []}),
            400,
            Some("projects"),
        ),
        (
            "POST",
            "/v1/invitations".into(),
            json!({"email": "a@b.io", "role": "viewer", "projects": ["a.b"]}),
            400,
            Some("projects"),
        ),
        (
            "POST",
            "/v1/invitations".into(),
            json!({"email": "a@b.io", "role": "viewer", "expires_in_seconds": 0}),
            400,
            Some("expires_in_seconds"),
        ),
        (
            "POST",
            "/v1/invitations".into(),
            json!({"email": "a@b.io", "role": "viewer", "admin": true}),
            400,
            Some("admin"),
        ),
        (
            "POST",
            "/v1/invitations".into(),
            json!(["not", "an", "object"]),
            400,
            None,
        ),
        (
            "PUT",
            "/v1/members/not-a-uuid/role".into(),
            json!({"role": "viewer"}),
            404,
            None,
        ),
        (
            "PUT",
            format!("/v1/members/{}/role", uuid::Uuid::new_v4()),
            json!({"role": "superuser"}),
            400,
            Some("role"),
        ),
        (
            "DELETE",
            "/v1/members/'%20OR%201=1".into(),
            Value::Null,
            404,
            None,
        ),
        (
            "POST",
            "/v1/api-keys".into(),
            json!({"name": ""}),
            400,
            Some("name"),
        ),
        (
            "POST",
            "/v1/api-keys".into(),
            json!({"name": "x", "expires_in_days": 0}),
            400,
            Some("expires_in_days"),
        ),
        (
            "POST",
            "/v1/api-keys".into(),
            json!({"name": "x", "member_id": "../../etc"}),
            404,
            None,
        ),
        ("DELETE", "/v1/api-keys/zzz".into(), Value::Null, 404, None),
        (
            "POST",
            "/v1/invitations/accept".into(),
            json!({"token": "t".repeat(300)}),
            404,
            None,
        ),
        (
            "POST",
            "/v1/invitations/accept".into(),
            json!({"token": "kinv_x", "name": 5}),
            400,
            None,
        ),
        (
            "POST",
            "/v1/invitations/accept".into(),
            json!({"token": "kinv_x", "name": ""}),
            400,
            Some("name"),
        ),
    ];
    for (method, path, body, status, field) in cases {
        let mut req = app.http.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", app.url),
        );
        if !body.is_null() {
            req = req.json(&body);
        }
        let (got, r) = send(req).await;
        assert_eq!(got, status, "{method} {path:.60} {body:.80}: {r}");
        assert!(r["error"]["message"].is_string(), "{r}");
        if let Some(f) = field {
            assert_eq!(r["error"]["field"], f, "{method} {path:.60}: {r}");
        }
    }
    let (status, r) = send(
        app.http
            .post(format!("{}/v1/invitations", app.url))
            .header("content-type", "text/plain")
            .body("email=a@b.io"),
    )
    .await;
    assert_eq!(status, 415, "{r}");
    // Headers over http.max_header_bytes (16 KiB) are refused before anything else.
    let (status, r) = send(
        app.http
            .post(format!("{}/v1/invitations", app.url))
            .header("x-padding", "p".repeat(20_000))
            .json(&json!({"email": "pad@example.com", "role": "viewer"})),
    )
    .await;
    assert_eq!(
        (status, r["error"]["code"].as_str()),
        (431, Some("headers_too_large")),
        "{r}"
    );
    // Nothing of it became a member or an invitation (read once the access projection has all
    // the stream holds: the bootstrap admin's event among it).
    let last = app.kairos.bus.last_seq().await.unwrap().0;
    app.wait_for("access", last).await;
    assert_eq!(app.get("/v1/invitations").await.1["invitations"], json!([]));
    assert_eq!(
        app.get("/v1/members").await.1["members"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    app.cleanup().await;
}

/// Every page of `path` (a list under `field`), following `next_cursor`: the ids in order.
async fn all_pages(app: &kairos_tests::TestApp, path: &str, field: &str, id: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match &cursor {
            Some(c) => format!("{path}{sep}limit=2&cursor={c}"),
            None => format!("{path}{sep}limit=2"),
        };
        let (status, page) = app.get(&url).await;
        assert_eq!(status, 200, "{page}");
        let rows = page[field].as_array().unwrap();
        assert!(rows.len() <= 2, "{page}");
        ids.extend(rows.iter().map(|r| r[id].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return ids,
        }
    }
}

/// Member, invitation and key lists come in pages of `limit`, walked with `next_cursor`: every
/// row once, in the list's order, whatever the page size.
#[sqlx::test(migrations = false)]
async fn member_invitation_and_key_lists_are_paged(pool: PgPool) {
    let app = spawn_app(pool).await;
    for i in 0..4 {
        app.join(&format!("m{i}@example.com"), "viewer", None).await;
    }
    let mut last = 0;
    for i in 0..5 {
        let (status, r) = app
            .post_json("/v1/api-keys", &json!({"name": format!("k{i}")}))
            .await;
        assert_eq!(status, 201, "{r}");
        last = r["seq"].as_u64().unwrap_or(last);
    }
    for i in 0..3 {
        let (status, r) = app
            .post_json(
                "/v1/invitations",
                &json!({"email": format!("open{i}@example.com"), "role": "viewer"}),
            )
            .await;
        assert_eq!(status, 201, "{r}");
        last = last.max(r["seq"].as_u64().unwrap_or(0));
    }
    app.wait_for(
        "access",
        app.kairos.bus.last_seq().await.unwrap().0.max(last),
    )
    .await;
    for (path, field, id, n) in [
        ("/v1/members", "members", "member_id", 5),
        ("/v1/api-keys?member_id=all", "api_keys", "key_id", 5 + 5),
        ("/v1/invitations", "invitations", "invitation_id", 4 + 3),
        (
            "/v1/invitations?status=open",
            "invitations",
            "invitation_id",
            3,
        ),
    ] {
        let paged = all_pages(&app, path, field, id).await;
        let (_, whole) = app.get(path).await;
        let whole: Vec<String> = whole[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[id].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(whole.len(), n, "{path}");
        assert_eq!(paged, whole, "{path}: pages of 2 walk the same list");
    }
    let (_, open) = app.get("/v1/invitations?status=open").await;
    assert!(
        open["invitations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["accepted_at"].is_null() && i["revoked_at"].is_null())
    );
    app.assert_bad_queries(&[
        ("/v1/members?limit=0", "limit"),
        ("/v1/members?cursor=nope", "cursor"),
        ("/v1/api-keys?limit=1001", "limit"),
        ("/v1/invitations?status=closed", "status"),
    ])
    .await;
    app.cleanup().await;
}
