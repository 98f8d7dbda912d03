//! `/openapi.json`: OpenAPI 3.1, made from the routes themselves. Every route the API serves is in
//! it with the security its guard needs, and `docs/api.md` documents exactly its operations.

use std::collections::BTreeSet;

use kairos_tests::spawn_app;
use serde_json::Value;
use sqlx::PgPool;

/// `METHOD path` of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "put", "post", "delete", "patch"] {
            if item.get(method).is_some() {
                out.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    out
}

#[sqlx::test(migrations = false)]
async fn the_document_covers_every_route_with_its_security_and_the_docs_follow_it(pool: PgPool) {
    let app = spawn_app(pool).await;
    // Public: no key.
    let r = reqwest::get(format!("{}/openapi.json", app.url))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let doc: Value = r.json().await.unwrap();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["schemas"]["Error"].is_object());

    let endpoints = kairos::startup::endpoints(&app.kairos.modules);
    let documented = operations(&doc);
    for e in endpoints.iter() {
        let key = format!("{} {}", e.method, e.path);
        if e.path == "/openapi.json" {
            continue;
        }
        assert!(documented.contains(&key), "{key} is not in /openapi.json");
        let op = &doc["paths"][e.path][e.method.to_lowercase()];
        let secured = op["security"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
        match e.guard {
            kairos_api::Guard::Public => {
                assert!(!secured, "{key} needs no key");
                assert!(op["responses"].get("401").is_none(), "{key}");
            }
            _ => {
                assert!(secured, "{key} needs the bearer key");
                assert_eq!(
                    op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/Error",
                    "{key}"
                );
            }
        }
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{key}"
        );
    }
    assert_eq!(
        documented.len(),
        endpoints.iter().count() - 1,
        "nothing in the document that the API does not route"
    );

    // docs/api.md has a section for each operation, and none for an operation that is not there.
    let docs = include_str!("../../docs/api.md");
    let headed: BTreeSet<String> = docs
        .lines()
        .filter(|l| l.starts_with('#'))
        .filter_map(|l| {
            let code = l.split('`').nth(1)?;
            let (method, path) = code.split_once(' ')?;
            ["GET", "PUT", "POST", "DELETE"]
                .contains(&method)
                .then(|| format!("{method} {path}"))
        })
        .collect();
    let mut expected = documented.clone();
    expected.insert("GET /openapi.json".into());
    assert_eq!(
        headed,
        expected,
        "docs/api.md sections differ from /openapi.json: missing {:?}, extra {:?}",
        expected.difference(&headed).collect::<Vec<_>>(),
        headed.difference(&expected).collect::<Vec<_>>()
    );
    app.cleanup().await;
}
