#!/usr/bin/env python3
"""Makes a Postman collection (v2.1) from Kairos' OpenAPI document.

    curl -sS http://127.0.0.1:8080/openapi.json | python3 scripts/postman.py \\
        > docs/api_examples/postman/kairos.postman_collection.json

Reads the document on stdin, writes the collection on stdout. The output depends on the document
alone (no ids, no dates; keys and items sorted), so the same document always gives the same
bytes: tests/tests/api_examples.rs checks that the committed collection is this script's output
for the live document, and sends every request of it.

The collection:
- has two variables, `baseUrl` (http://127.0.0.1:8080, `make run`'s) and `apiKey` (empty: set
  it to your key), and bearer authentication with `{{apiKey}}` at the collection level; the
  operations the document lists without security (health, accepting an invitation) send none;
- has one folder per tag, in name order, and in each one request per operation, by path then
  method, named `METHOD /path`, described by the operation's summary and description;
- gives path parameters a value (`:project` = `example`; the parameter's example or default
  when the document has one) and lists the query parameters and request headers, disabled unless
  required;
- gives a request body from the operation's schema: the document's example, default or first
  enum value where it has one, else a placeholder of the right type (`"string"`, `0`, ...):
  required members always, optional ones as `null` where the schema allows it.

Only the standard library is used.
"""

import json
import sys

SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
BASE_URL = "http://127.0.0.1:8080"
METHODS = ["get", "put", "post", "delete", "patch", "head", "options", "trace"]


def resolve(doc: dict, schema: dict) -> dict:
    """Follows `$ref`s to the schema they name."""
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < 32:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise SystemExit(f"postman.py: unsupported $ref {ref}")
        node = doc
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        schema, seen = node, seen + 1
    return schema or {}


def types(schema: dict) -> list:
    t = schema.get("type")
    if t is None:
        return []
    return t if isinstance(t, list) else [t]


def has_example(schema: dict):
    """The value the document gives as the schema's example, if any, as (True, value)."""
    if "example" in schema:
        return True, schema["example"]
    if schema.get("examples"):
        return True, schema["examples"][0]
    if "default" in schema:
        return True, schema["default"]
    if schema.get("enum"):
        return True, schema["enum"][0]
    if "const" in schema:
        return True, schema["const"]
    return False, None


def example(doc: dict, schema: dict, depth: int = 0):
    """A value that fits `schema`: its own example where it has one, else a placeholder."""
    schema = resolve(doc, schema)
    found, value = has_example(schema)
    if found:
        return value
    for key in ("oneOf", "anyOf", "allOf"):
        if schema.get(key):
            if key == "allOf":
                merged = {"type": "object", "properties": {}, "required": []}
                for part in schema["allOf"]:
                    part = resolve(doc, part)
                    merged["properties"].update(part.get("properties", {}))
                    merged["required"] += part.get("required", [])
                return example(doc, merged, depth + 1)
            choices = [resolve(doc, s) for s in schema[key]]
            concrete = [s for s in choices if types(s) != ["null"]] or choices
            return example(doc, concrete[0], depth + 1)
    kinds = [t for t in types(schema) if t != "null"]
    kind = kinds[0] if kinds else ("object" if "properties" in schema else None)
    if depth > 8:
        return None
    if kind == "object":
        required = set(schema.get("required", []))
        out = {}
        for name, prop in sorted(schema.get("properties", {}).items()):
            prop_schema = resolve(doc, prop)
            if name in required:
                out[name] = example(doc, prop_schema, depth + 1)
            elif "null" in types(prop_schema):
                out[name] = None
            else:
                out[name] = example(doc, prop_schema, depth + 1) if has_example(prop_schema)[0] else empty(prop_schema)
        return out
    if kind == "array":
        items = schema.get("items")
        return [example(doc, items, depth + 1)] if items else []
    if kind == "string":
        return "string"
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    return None


def empty(schema: dict):
    """An optional member that cannot be null: the empty value of its type."""
    kinds = [t for t in types(schema) if t != "null"]
    return {"array": [], "object": {}, "string": "", "boolean": False}.get(kinds[0] if kinds else "", 0)


def param_value(doc: dict, param: dict) -> str:
    """A parameter's value as text: its example or default, else `example` (or a number)."""
    if "example" in param:
        value = param["example"]
    else:
        schema = resolve(doc, param.get("schema", {}))
        found, value = has_example(schema)
        if not found:
            kinds = [t for t in types(schema) if t != "null"]
            value = schema.get("minimum", 1) if kinds and kinds[0] in ("integer", "number") else "example"
            if kinds and kinds[0] == "boolean":
                value = False
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def describe(*parts) -> str:
    return "\n\n".join(p.strip() for p in parts if p and p.strip())


def request_item(doc: dict, path: str, method: str, op: dict, path_params: list) -> dict:
    params = {(p["in"], p["name"]): p for p in [resolve(doc, p) for p in path_params]}
    for p in op.get("parameters", []):
        p = resolve(doc, p)
        params[(p["in"], p["name"])] = p

    segments = []
    variables = []
    for segment in path.strip("/").split("/"):
        if segment.startswith("{") and segment.endswith("}"):
            name = segment[1:-1]
            p = params.get(("path", name), {"name": name})
            segments.append(f":{name}")
            variables.append({"key": name, "value": param_value(doc, p), "description": p.get("description", "")})
        else:
            segments.append(segment)
    query = [
        {
            "key": p["name"],
            "value": param_value(doc, p),
            "description": p.get("description", ""),
            "disabled": not p.get("required", False),
        }
        for (where, _), p in sorted(params.items())
        if where == "query"
    ]
    headers = [
        {
            "key": p["name"],
            "value": param_value(doc, p),
            "description": p.get("description", ""),
            "disabled": not p.get("required", False),
        }
        for (where, _), p in sorted(params.items())
        if where == "header"
    ]

    raw = "{{baseUrl}}/" + "/".join(segments)
    enabled = [q for q in query if not q["disabled"]]
    if enabled:
        raw += "?" + "&".join(f"{q['key']}={q['value']}" for q in enabled)
    url = {"raw": raw, "host": ["{{baseUrl}}"], "path": segments}
    if query:
        url["query"] = query
    if variables:
        url["variable"] = variables

    request = {
        "method": method.upper(),
        "header": headers,
        "url": url,
        "description": describe(op.get("summary"), op.get("description")),
    }
    body = op.get("requestBody")
    if body:
        body = resolve(doc, body)
        content = body.get("content", {})
        media = "application/json" if "application/json" in content else min(content)
        media_type = content[media]
        if "example" in media_type:
            value = media_type["example"]
        elif media_type.get("examples"):
            first = min(media_type["examples"])
            value = resolve(doc, media_type["examples"][first]).get("value")
        else:
            value = example(doc, media_type.get("schema", {}))
        request["header"] = [{"key": "Content-Type", "value": media}] + headers
        request["body"] = {
            "mode": "raw",
            "raw": json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False),
            "options": {"raw": {"language": "json"}},
        }
    security = op.get("security", doc.get("security"))
    if not security:
        request["auth"] = {"type": "noauth"}
    return {"name": f"{method.upper()} {path}", "request": request, "response": []}


def collection(doc: dict) -> dict:
    info = doc.get("info", {})
    folders = {}
    for path, item in doc.get("paths", {}).items():
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            tag = (op.get("tags") or ["other"])[0]
            entry = request_item(doc, path, method, op, item.get("parameters", []))
            folders.setdefault(tag, []).append((path, METHODS.index(method), entry))
    tag_descriptions = {t["name"]: t.get("description", "") for t in doc.get("tags", [])}
    return {
        "info": {
            "name": info.get("title", "API"),
            "description": describe(
                info.get("description"),
                f"OpenAPI {doc.get('openapi', '')}, API version {info.get('version', '')}. Generated by "
                "scripts/postman.py from GET /openapi.json: do not edit; run it again. Set the "
                "variable apiKey to your API key (and baseUrl if Kairos is elsewhere).",
            ),
            "version": info.get("version", ""),
            "schema": SCHEMA,
        },
        "auth": {"type": "bearer", "bearer": [{"key": "token", "value": "{{apiKey}}", "type": "string"}]},
        "variable": [
            {"key": "baseUrl", "value": BASE_URL, "type": "string"},
            {"key": "apiKey", "value": "", "type": "string"},
        ],
        "item": [
            {
                "name": tag,
                "description": tag_descriptions.get(tag, ""),
                "item": [entry for _, _, entry in sorted(items, key=lambda e: (e[0], e[1]))],
            }
            for tag, items in sorted(folders.items())
        ],
    }


def main() -> None:
    try:
        doc = json.load(sys.stdin)
    except json.JSONDecodeError as e:
        raise SystemExit(f"postman.py: stdin is not JSON: {e}")
    if "paths" not in doc:
        raise SystemExit("postman.py: stdin is not an OpenAPI document (no paths)")
    sys.stdout.write(json.dumps(collection(doc), indent=2, sort_keys=True, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
