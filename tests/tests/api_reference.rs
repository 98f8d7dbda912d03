//! `docs/reference/api.md`: the API reference rendered from `/openapi.json`. The test renders the
//! document the app serves and compares it with the committed page, so the page cannot drift
//! from the routes; `KAIROS_BLESS=1` writes the page instead. `docs/api.md` keeps the prose, and
//! every operation on the page links to its section there.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use kairos_tests::{heading_anchor, repo_root, spawn_app};
use serde_json::Value;
use sqlx::PgPool;

const REGENERATE: &str = "KAIROS_BLESS=1 cargo nextest run -p kairos-tests --test api_reference";

/// The methods an OpenAPI path item may hold, in the order the page lists them.
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

#[sqlx::test(migrations = false)]
async fn the_committed_reference_is_what_the_openapi_document_renders(pool: PgPool) {
    let app = spawn_app(pool).await;
    let r = reqwest::get(format!("{}/openapi.json", app.url))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let doc: Value = r.json().await.unwrap();
    app.cleanup().await;

    let prose = std::fs::read_to_string(repo_root().join("docs/api.md")).unwrap();
    let page = render(&doc, &prose_anchors(&prose));
    let target = repo_root().join("docs/reference/api.md");
    if std::env::var("KAIROS_BLESS").as_deref() == Ok("1") {
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, &page).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&target).unwrap_or_else(|e| {
        panic!(
            "{} cannot be read ({e}); generate it with `{REGENERATE}`",
            target.display()
        )
    });
    if let Some((n, committed, rendered)) = first_difference(&committed, &page) {
        panic!(
            "docs/reference/api.md is stale: line {n} is {committed:?} but /openapi.json renders \
             {rendered:?}. Regenerate it with `{REGENERATE}` and commit the result."
        );
    }
}

/// The anchors GitHub gives `docs/api.md`'s headings, checked against links the docs already use.
#[test]
fn prose_anchors_follow_githubs_heading_ids() {
    let prose = "# Title\n\n## `PUT /v1/projects/{project}/budget`\n\n```\n# not a heading\n```\n\
                 ## `GET /v1/api-keys`\n### `as_of`: a past instant\n## Errors\n## Errors\n";
    let anchors = prose_anchors(prose);
    assert_eq!(
        anchors["PUT /v1/projects/{project}/budget"],
        "put-v1projectsprojectbudget"
    );
    assert_eq!(anchors["GET /v1/api-keys"], "get-v1api-keys");
    assert_eq!(anchors.len(), 2, "{anchors:?}");
    assert_eq!(
        heading_anchor("`as_of`: a past instant"),
        "as_of-a-past-instant"
    );
    let mut seen = BTreeMap::new();
    assert_eq!(unique_slug("Errors", &mut seen), "errors");
    assert_eq!(unique_slug("Errors", &mut seen), "errors-1");
}

/// The first line (1-based) where `a` and `b` differ, with both versions of it.
fn first_difference(a: &str, b: &str) -> Option<(usize, String, String)> {
    if a == b {
        return None;
    }
    let (mut la, mut lb) = (a.lines(), b.lines());
    for n in 1.. {
        match (la.next(), lb.next()) {
            (None, None) => return Some((n, "(line endings differ)".into(), String::new())),
            (x, y) if x != y => {
                let show = |l: Option<&str>| l.map_or("(end of file)".into(), str::to_owned);
                return Some((n, show(x), show(y)));
            }
            _ => {}
        }
    }
    None
}

/// [`slug`], with `-1`, `-2`, … after a slug already given, as GitHub numbers repeated headings.
fn unique_slug(heading: &str, seen: &mut BTreeMap<String, usize>) -> String {
    let base = heading_anchor(heading);
    let count = seen.entry(base.clone()).or_insert(0);
    let id = if *count == 0 {
        base.clone()
    } else {
        format!("{base}-{count}")
    };
    *count += 1;
    id
}

/// `METHOD path` → the anchor of its section in `docs/api.md`. A section is a heading whose first
/// code span is `METHOD path`, the convention `tests/tests/openapi.rs` checks.
fn prose_anchors(prose: &str) -> BTreeMap<String, String> {
    let mut seen = BTreeMap::new();
    let mut anchors = BTreeMap::new();
    let mut fenced = false;
    for line in prose.lines() {
        if line.starts_with("```") || line.starts_with("~~~") {
            fenced = !fenced;
            continue;
        }
        let Some(text) = heading_text(line).filter(|_| !fenced) else {
            continue;
        };
        let id = unique_slug(text, &mut seen);
        let operation = text.split('`').nth(1).and_then(|code| {
            let (method, path) = code.split_once(' ')?;
            METHODS
                .iter()
                .any(|m| m.to_uppercase() == method)
                .then(|| format!("{method} {path}"))
        });
        if let Some(operation) = operation {
            anchors.entry(operation).or_insert(id);
        }
    }
    anchors
}

/// The text of an ATX heading (`## text`), if `line` is one.
fn heading_text(line: &str) -> Option<&str> {
    let rest = line.trim_start_matches('#');
    let level = line.len() - rest.len();
    ((1..=6).contains(&level) && rest.starts_with(' ')).then(|| rest.trim())
}

/// An operation of the document.
struct Operation<'a> {
    method: &'static str,
    path: &'a str,
    op: &'a Value,
}

impl Operation<'_> {
    fn key(&self) -> String {
        format!("{} {}", self.method.to_uppercase(), self.path)
    }
}

/// The whole page. Groups by first tag, alphabetically; operations by path, then method.
fn render(doc: &Value, prose: &BTreeMap<String, String>) -> String {
    let schemas = doc["components"]["schemas"]
        .as_object()
        .expect("components.schemas");
    let mut groups: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    let paths = doc["paths"].as_object().expect("paths");
    let mut sorted_paths: Vec<_> = paths.iter().collect();
    sorted_paths.sort_by(|a, b| a.0.cmp(b.0));
    for (path, item) in sorted_paths {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                let tag = op["tags"][0].as_str().unwrap_or("other");
                groups
                    .entry(tag)
                    .or_default()
                    .push(Operation { method, path, op });
            }
        }
    }
    let tag_descriptions: BTreeMap<&str, &str> = doc["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t["name"].as_str()?, t["description"].as_str()?)))
        .collect();

    let mut out = String::new();
    out.push_str("# API reference\n\n");
    let _ = writeln!(
        out,
        "This page is generated from the OpenAPI {} document Kairos serves at `GET /openapi.json`\n\
         (built from the routes themselves); do not edit it by hand. After changing a route,\n\
         regenerate it with `{REGENERATE}`;\n\
         without `KAIROS_BLESS` that test fails while the page differs from the document. The prose\n\
         (conventions, examples, what the fields mean and how the calls fit together) is in\n\
         [docs/api.md](../api.md), and every operation below links to its section there.\n",
        doc["openapi"].as_str().unwrap_or("3")
    );
    if let Some(text) = doc["info"]["description"].as_str() {
        let _ = writeln!(out, "{}\n", paragraphs(text));
    }

    out.push_str("## Security\n\n");
    let schemes = doc["components"]["securitySchemes"].as_object();
    for (name, scheme) in schemes.into_iter().flatten() {
        let _ = write!(out, "- `{name}`: type `{}`", plain(&scheme["type"]));
        if let Some(s) = scheme["scheme"].as_str() {
            let _ = write!(out, ", scheme `{s}`");
        }
        if let Some(d) = scheme["description"].as_str() {
            let _ = write!(out, ". {}", paragraphs(d));
        }
        out.push('\n');
    }
    out.push_str(
        "\nAn operation whose security is `bearer` needs that header; its description says which\n\
         permission the key's role must have.\n\n",
    );

    out.push_str("## Operations\n\n");
    for (tag, ops) in &groups {
        let links: Vec<String> = ops
            .iter()
            .map(|o| {
                format!(
                    "[`{}`](#{})",
                    o.key(),
                    heading_anchor(&format!("`{}`", o.key()))
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "- [{tag}](#{}): {}",
            heading_anchor(tag),
            links.join(", ")
        );
    }
    out.push_str("- [Schemas](#schemas)\n\n");

    for (tag, ops) in &groups {
        let _ = writeln!(out, "## {tag}\n");
        if let Some(d) = tag_descriptions.get(tag) {
            let _ = writeln!(out, "{}\n", paragraphs(d));
        }
        for o in ops {
            render_operation(&mut out, o, schemas, prose);
        }
    }

    out.push_str("## Schemas\n\n");
    out.push_str("The components the operations refer to, by name.\n\n");
    for (name, schema) in schemas {
        let _ = writeln!(out, "### `{name}`\n");
        out.push_str(&schema_block(schema));
    }

    assert_unique_headings(&out);
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

fn render_operation(
    out: &mut String,
    o: &Operation,
    schemas: &serde_json::Map<String, Value>,
    prose: &BTreeMap<String, String>,
) {
    let key = o.key();
    let op = o.op;
    let _ = writeln!(out, "### `{key}`\n");
    for field in ["summary", "description"] {
        if let Some(text) = op[field].as_str() {
            let _ = writeln!(out, "{}\n", paragraphs(text));
        }
    }
    let security: Vec<String> = op["security"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|r| r.iter())
        .map(|(name, scopes)| {
            let scopes: Vec<&str> = scopes
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if scopes.is_empty() {
                format!("`{name}`")
            } else {
                format!("`{name}` ({})", scopes.join(", "))
            }
        })
        .collect();
    let security = if security.is_empty() {
        "none".to_owned()
    } else {
        security.join(" or ")
    };
    let _ = writeln!(out, "- Security: {security}");
    if let Some(id) = op["operationId"].as_str() {
        let _ = writeln!(out, "- Operation id: `{id}`");
    }
    let anchor = prose.get(&key).unwrap_or_else(|| {
        panic!("docs/api.md has no section headed `{key}` (see tests/tests/openapi.rs)")
    });
    let _ = writeln!(out, "- Prose: [docs/api.md](../api.md#{anchor})\n");

    if let Some(params) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
        out.push_str("**Parameters**\n\n");
        out.push_str("| Name | In | Required | Type | Description |\n");
        out.push_str("|------|----|----------|------|-------------|\n");
        for p in params {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} |",
                p["name"].as_str().unwrap_or("?"),
                p["in"].as_str().unwrap_or("?"),
                yes_no(&p["required"]),
                cell(&type_of(&p["schema"])),
                cell(&describe(p)),
            );
        }
        out.push('\n');
    }

    let body = &op["requestBody"];
    if let Some(content) = body["content"].as_object() {
        let required = if body["required"].as_bool() == Some(true) {
            "required"
        } else {
            "optional"
        };
        let _ = writeln!(out, "**Request body** ({required})\n");
        if let Some(d) = body["description"].as_str() {
            let _ = writeln!(out, "{}\n", paragraphs(d));
        }
        for (content_type, media) in content {
            let schema = &media["schema"];
            let _ = writeln!(out, "- `{content_type}`: {}", type_of(schema));
        }
        out.push('\n');
        // Each body is shown whole where it is taken; the same schema under several content
        // types is shown once.
        let mut shown = BTreeSet::new();
        for media in content.values() {
            let schema = &media["schema"];
            let resolved = resolve(schema, schemas);
            let has_fields =
                resolved.get("properties").is_some() || resolved.get("allOf").is_some();
            if has_fields && shown.insert(resolved.to_string()) {
                out.push_str(&fields_block(resolved));
            }
        }
    }

    if let Some(responses) = op["responses"].as_object() {
        out.push_str("**Responses**\n\n");
        out.push_str("| Status | Description | Body |\n");
        out.push_str("|--------|-------------|------|\n");
        let mut codes: Vec<_> = responses.iter().collect();
        // Numeric codes in order, `default` and ranges (`5XX`) after them.
        codes.sort_by_key(|(code, _)| (code.parse::<u16>().is_err(), code.to_string()));
        for (code, response) in codes {
            let bodies: Vec<String> = response["content"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(ct, media)| format!("`{ct}`: {}", type_of(&media["schema"])))
                .collect();
            let _ = writeln!(
                out,
                "| {code} | {} | {} |",
                cell(response["description"].as_str().unwrap_or("")),
                if bodies.is_empty() {
                    "none".to_owned()
                } else {
                    cell(&bodies.join("; "))
                },
            );
        }
        out.push('\n');
    }
}

/// A component as its own section: its description, then its fields or its type.
fn schema_block(schema: &Value) -> String {
    let mut out = String::new();
    if let Some(d) = schema["description"].as_str() {
        let _ = writeln!(out, "{}\n", paragraphs(d));
    }
    if schema.get("properties").is_some() || schema.get("allOf").is_some() {
        out.push_str(&fields_block(schema));
    } else {
        let _ = writeln!(out, "Type: {}\n", type_of(schema));
    }
    out
}

/// An object's fields as a table; for `allOf`, the schemas it includes and then its own fields.
fn fields_block(schema: &Value) -> String {
    let mut parts = vec![schema];
    let mut included = Vec::new();
    if let Some(all) = schema["allOf"].as_array() {
        included.extend(all.iter().filter(|p| p.get("$ref").is_some()).map(type_of));
        parts.extend(all.iter().filter(|p| p.get("$ref").is_none()));
    }
    let mut rows = Vec::new();
    let mut closed = false;
    let mut extra = None;
    for part in parts {
        let required: BTreeSet<&str> = part["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for (name, field) in part["properties"].as_object().into_iter().flatten() {
            rows.push(format!(
                "| `{name}` | {} | {} | {} |",
                cell(&type_of(field)),
                if required.contains(name.as_str()) {
                    "yes"
                } else {
                    "no"
                },
                cell(&describe(field)),
            ));
        }
        match &part["additionalProperties"] {
            Value::Bool(false) => closed = true,
            s @ Value::Object(_) => extra = Some(type_of(s)),
            _ => {}
        }
    }
    let mut out = String::new();
    if !included.is_empty() {
        let more = if rows.is_empty() { "." } else { ", and these:" };
        let _ = writeln!(out, "Every field of {}{more}\n", included.join(" and "));
    }
    if !rows.is_empty() {
        rows.sort();
        out.push_str("| Field | Type | Required | Description |\n");
        out.push_str("|-------|------|----------|-------------|\n");
        for row in rows {
            out.push_str(&row);
            out.push('\n');
        }
        out.push('\n');
    }
    if closed {
        out.push_str("No other fields are accepted (`additionalProperties: false`).\n\n");
    }
    if let Some(t) = extra {
        let _ = writeln!(out, "Any other field: {t}.\n");
    }
    out
}

/// A schema in a few words: `nullable integer (int64; ≥ 0)`, ``array of [`Alert`](#alert)``.
fn type_of(schema: &Value) -> String {
    if let Some(name) = ref_name(schema) {
        return format!("[`{name}`](#{})", heading_anchor(&format!("`{name}`")));
    }
    for (key, word) in [
        ("allOf", "all of"),
        ("oneOf", "one of"),
        ("anyOf", "any of"),
    ] {
        if let Some(parts) = schema[key].as_array() {
            let parts: Vec<String> = parts.iter().map(type_of).collect();
            return format!("{word} {}", parts.join(", "));
        }
    }
    let mut types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let nullable = types.contains(&"null");
    types.retain(|t| *t != "null");
    let base = match types.as_slice() {
        [] if schema.get("properties").is_some() => object_outline(schema),
        [] => "any".to_owned(),
        ["array"] => format!(
            "array of {}",
            schema.get("items").map_or("any".to_owned(), type_of)
        ),
        ["object"] if schema["additionalProperties"].is_object() => format!(
            "map of {} to {}",
            schema
                .get("propertyNames")
                .map_or("string".to_owned(), type_of),
            type_of(&schema["additionalProperties"])
        ),
        ["object"] if schema.get("properties").is_some() => object_outline(schema),
        ts => ts.join(" or "),
    };
    let mut qualifiers = Vec::new();
    if let Some(f) = schema["format"].as_str() {
        qualifiers.push(f.to_owned());
    }
    let bound = |k: &str| schema.get(k).map(Value::to_string);
    match (bound("minimum"), bound("maximum")) {
        (Some(lo), Some(hi)) => qualifiers.push(format!("{lo} to {hi}")),
        (Some(lo), None) => qualifiers.push(format!("≥ {lo}")),
        (None, Some(hi)) => qualifiers.push(format!("≤ {hi}")),
        (None, None) => {}
    }
    for (key, word) in [
        ("exclusiveMinimum", "> "),
        ("exclusiveMaximum", "< "),
        ("minLength", "length ≥ "),
        ("maxLength", "length ≤ "),
        ("minItems", "items ≥ "),
        ("maxItems", "items ≤ "),
        ("pattern", "pattern "),
    ] {
        if let Some(v) = schema.get(key) {
            qualifiers.push(format!("{word}{v}"));
        }
    }
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> = values.iter().map(|v| format!("`{}`", plain(v))).collect();
        qualifiers.push(format!("one of {}", values.join(", ")));
    }
    if let Some(d) = schema.get("default") {
        qualifiers.push(format!("default `{}`", plain(d)));
    }
    let mut out = if nullable {
        format!("nullable {base}")
    } else {
        base
    };
    if !qualifiers.is_empty() {
        let _ = write!(out, " ({})", qualifiers.join("; "));
    }
    out
}

/// An inline object: `object { a, b? }` (`?` after a field that may be left out).
fn object_outline(schema: &Value) -> String {
    let required: BTreeSet<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let fields: Vec<String> = schema["properties"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, _)| {
            if required.contains(name.as_str()) {
                name.clone()
            } else {
                format!("{name}?")
            }
        })
        .collect();
    format!("object {{ {} }}", fields.join(", "))
}

/// A field's or parameter's description, with its example if it has one.
fn describe(item: &Value) -> String {
    let mut out = item["description"].as_str().unwrap_or("").to_owned();
    let example = item
        .get("example")
        .or_else(|| item["schema"].get("example"));
    if let Some(example) = example {
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(out, "Example: `{}`.", plain(example));
    }
    out
}

/// `Name` of `{"$ref": "#/components/schemas/Name"}`.
fn ref_name(schema: &Value) -> Option<&str> {
    schema["$ref"]
        .as_str()
        .map(|r| r.strip_prefix("#/components/schemas/").unwrap_or(r))
}

/// `schema`, or the component it refers to.
fn resolve<'a>(schema: &'a Value, schemas: &'a serde_json::Map<String, Value>) -> &'a Value {
    match ref_name(schema) {
        Some(name) => schemas
            .get(name)
            .unwrap_or_else(|| panic!("$ref to {name}, which components.schemas does not hold")),
        None => schema,
    }
}

/// A JSON value as text: a string without its quotes.
fn plain(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn yes_no(v: &Value) -> &'static str {
    if v.as_bool() == Some(true) {
        "yes"
    } else {
        "no"
    }
}

/// Doc-comment text as Markdown paragraphs: wrapped lines joined, blank lines kept.
fn paragraphs(text: &str) -> String {
    text.split("\n\n")
        .map(|p| {
            p.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Text fit for a table cell: one line, `|` escaped.
fn cell(text: &str) -> String {
    paragraphs(text).replace("\n\n", " ").replace('|', "\\|")
}

/// The page links by heading id, so two headings with one id would send a link to the wrong one.
fn assert_unique_headings(page: &str) {
    let mut seen = BTreeSet::new();
    for text in page.lines().filter_map(heading_text) {
        assert!(
            seen.insert(heading_anchor(text)),
            "two headings of docs/reference/api.md have the id {:?}",
            heading_anchor(text)
        );
    }
}
