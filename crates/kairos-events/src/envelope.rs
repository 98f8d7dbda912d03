//! CloudEvents envelopes: the three encodings in, one validated [`Event`] out.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::schema::known_type;
use crate::{EventError, EventType, ProjectId};

/// The largest encoded event Kairos stores (NATS' default `max_payload` is 1 MiB).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
const MAX_ID_LEN: usize = 256;
const MAX_SOURCE_LEN: usize = 1024;
const CORE_ATTRIBUTES: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

/// A valid CloudEvent, as it is (or will be) stored on the stream.
#[derive(Debug, Clone)]
pub struct Event {
    id: String,
    source: String,
    ty: EventType,
    project: Option<ProjectId>,
    time: Option<DateTime<Utc>>,
    json: Value,
    bytes: Vec<u8>,
}

impl Event {
    /// Validates a structured-mode event held as a JSON value.
    pub fn from_value(json: Value) -> Result<Self, EventError> {
        Self::build(json, None)
    }

    /// Validates `json`; `raw` is the text it was parsed from, kept as the stored encoding when it
    /// is a single line (so nothing is re-serialised and the stream holds exactly what was sent).
    fn build(json: Value, raw: Option<&[u8]>) -> Result<Self, EventError> {
        let Value::Object(attrs) = &json else {
            return Err(EventError::new(
                "invalid_event",
                "a CloudEvent must be a JSON object",
            ));
        };
        let spec = str_attr(attrs, "specversion")?;
        if spec != "1.0" {
            return Err(EventError::field(
                "unsupported_specversion",
                "specversion",
                format!("specversion must be \"1.0\", not {spec:?}"),
            ));
        }
        let id = bounded_attr(attrs, "id", MAX_ID_LEN)?.to_owned();
        let source = bounded_attr(attrs, "source", MAX_SOURCE_LEN)?.to_owned();
        let ty = EventType::parse(str_attr(attrs, "type")?)?;
        let project = match attrs.get("subject") {
            None => None,
            Some(Value::String(s)) => Some(ProjectId::parse(s).map_err(|e| EventError {
                field: Some("subject".into()),
                message: format!("subject is the project id: {}", e.message),
                ..e
            })?),
            Some(_) => return Err(wrong_type("subject")),
        };
        let time = match attrs.get("time") {
            None => None,
            Some(Value::String(s)) => Some(
                DateTime::parse_from_rfc3339(s)
                    .map_err(|e| {
                        EventError::field(
                            "invalid_attribute",
                            "time",
                            format!("time must be an RFC 3339 timestamp: {e}"),
                        )
                    })?
                    .with_timezone(&Utc),
            ),
            Some(_) => return Err(wrong_type("time")),
        };
        for name in ["datacontenttype", "dataschema"] {
            if attrs.get(name).is_some_and(|v| !v.is_string()) {
                return Err(wrong_type(name));
            }
        }
        if attrs.contains_key("data") && attrs.contains_key("data_base64") {
            return Err(EventError::field(
                "invalid_event",
                "data_base64",
                "an event carries data or data_base64, not both",
            ));
        }
        for (name, value) in attrs {
            if CORE_ATTRIBUTES.contains(&name.as_str()) {
                continue;
            }
            let valid_name = !name.is_empty()
                && name.len() <= 20
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !valid_name {
                return Err(EventError::field(
                    "invalid_attribute",
                    truncate(name, 40),
                    "extension attribute names are 1-20 lowercase letters or digits",
                ));
            }
            if !(value.is_string() || value.is_number() || value.is_boolean()) {
                return Err(EventError::field(
                    "invalid_attribute",
                    name.clone(),
                    "extension attributes are strings, numbers or booleans",
                ));
            }
        }
        if let Some(known) = known_type(ty.as_str()) {
            if let Some(ct) = attrs.get("datacontenttype").and_then(Value::as_str)
                && !is_json_media_type(ct)
            {
                return Err(EventError::field(
                    "invalid_attribute",
                    "datacontenttype",
                    format!("{ty} carries JSON data; datacontenttype must be application/json"),
                ));
            }
            let data = attrs.get("data").ok_or_else(|| {
                EventError::field("missing_attribute", "data", format!("{ty} requires data"))
            })?;
            known.validate(data)?;
            check_amounts(ty.as_str(), data)?;
            let data_project = data.get("project").and_then(Value::as_str);
            match (&project, data_project) {
                (None, Some(_)) if known.project_required => {
                    return Err(EventError::field(
                        "missing_attribute",
                        "subject",
                        format!("{ty} requires subject, the project id (equal to data.project)"),
                    ));
                }
                (Some(p), Some(d)) if p.as_str() != d => {
                    return Err(EventError::field(
                        "subject_mismatch",
                        "subject",
                        format!("subject {:?} differs from data.project {d:?}", p.as_str()),
                    ));
                }
                _ => {}
            }
        }
        let bytes = match raw.map(<[u8]>::trim_ascii) {
            Some(r) if !r.contains(&b'\n') && !r.contains(&b'\r') => r.to_vec(),
            _ => serde_json::to_vec(&json)
                .map_err(|e| EventError::new("invalid_event", e.to_string()))?,
        };
        check_size(bytes.len())?;
        Ok(Self {
            id,
            source,
            ty,
            project,
            time,
            json,
            bytes,
        })
    }

    /// Validates a structured-mode event from its JSON text (a NATS payload, one line of a file).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, EventError> {
        parse_structured(bytes)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn event_type(&self) -> &EventType {
        &self.ty
    }

    /// The project this event belongs to: its CloudEvent `subject`.
    pub fn project(&self) -> Option<&ProjectId> {
        self.project.as_ref()
    }

    /// When it happened, as the producer said (`time`).
    pub fn time(&self) -> Option<DateTime<Utc>> {
        self.time
    }

    /// The whole envelope.
    pub fn json(&self) -> &Value {
        &self.json
    }

    /// The structured-mode JSON encoding, as published to NATS.
    pub fn to_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// `data` decoded into the typed payload of its event type.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, EventError> {
        T::deserialize(self.json.get("data").unwrap_or(&Value::Null))
            .map_err(|e| EventError::field("invalid_data", "data", e.to_string()))
    }

    /// The identity of the event, `source` + `id`, as 32 bytes: the dedupe key everywhere.
    pub fn identity(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.source.as_bytes());
        h.update([0u8]);
        h.update(self.id.as_bytes());
        h.finalize().into()
    }

    /// The `Nats-Msg-Id`: lowercase hex of [`Event::identity`].
    pub fn msg_id(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for b in self.identity() {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        out
    }

    /// The NATS subject the event is stored on: `<prefix>.events.<category>.<project>`.
    pub fn nats_subject(&self, prefix: &str) -> String {
        let project = self.project.as_ref().map_or("_global", ProjectId::as_str);
        format!("{prefix}.events.{}.{project}", self.ty.category())
    }
}

/// Amounts the schema admits but Kairos cannot keep exactly (more than 9 decimals, over a
/// billion USD) are refused here, at every door, rather than dead-lettered later.
fn check_amounts(ty: &str, data: &Value) -> Result<(), EventError> {
    use crate::types::{BUDGET_SET, BUDGET_THRESHOLD_CROSSED, LLM_CALL_COMPLETED};
    let fields: &[&str] = match ty {
        LLM_CALL_COMPLETED => &["cost"],
        BUDGET_SET => &["monthly_limit"],
        BUDGET_THRESHOLD_CROSSED => &["limit", "spent"],
        _ => &[],
    };
    for field in fields {
        if let Some(v) = data.get(*field) {
            crate::Money::from_json(v).map_err(|e| {
                EventError::field("invalid_amount", format!("data.{field}"), e.to_string())
            })?;
        }
    }
    Ok(())
}

fn is_json_media_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

fn wrong_type(name: &str) -> EventError {
    EventError::field(
        "invalid_attribute",
        name,
        format!("{name} must be a string"),
    )
}

fn str_attr<'a>(attrs: &'a Map<String, Value>, name: &str) -> Result<&'a str, EventError> {
    match attrs.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(wrong_type(name)),
        None => Err(EventError::field(
            "missing_attribute",
            name,
            format!("the required attribute {name} is missing"),
        )),
    }
}

fn bounded_attr<'a>(
    attrs: &'a Map<String, Value>,
    name: &str,
    max: usize,
) -> Result<&'a str, EventError> {
    let s = str_attr(attrs, name)?;
    if s.is_empty() || s.len() > max {
        return Err(EventError::field(
            "invalid_attribute",
            name,
            format!("{name} must be 1-{max} bytes long"),
        ));
    }
    Ok(s)
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn malformed(e: &serde_json::Error) -> EventError {
    EventError::new("malformed_json", format!("the body is not valid JSON: {e}"))
}

fn check_size(len: usize) -> Result<(), EventError> {
    if len > MAX_EVENT_BYTES {
        return Err(EventError::new(
            "event_too_large",
            format!("the event is {len} bytes; one event may be at most {MAX_EVENT_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// One event in structured mode (`application/cloudevents+json`).
pub fn parse_structured(bytes: &[u8]) -> Result<Event, EventError> {
    check_size(bytes.len())?;
    let json: Value = serde_json::from_slice(bytes).map_err(|e| malformed(&e))?;
    Event::build(json, Some(bytes))
}

/// A batch (`application/cloudevents-batch+json`): a JSON array of structured events. The outer
/// error is for a body that is not an array at all; each element gets its own result.
pub fn parse_batch(bytes: &[u8]) -> Result<Vec<Result<Event, EventError>>, EventError> {
    let items: Vec<&serde_json::value::RawValue> = match serde_json::from_slice(bytes) {
        Ok(items) => items,
        Err(_) if !bytes.trim_ascii_start().starts_with(b"[") => {
            return match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => Err(EventError::new(
                    "invalid_batch",
                    "a batch must be a JSON array of CloudEvents",
                )),
                Err(e) => Err(malformed(&e)),
            };
        }
        Err(e) => return Err(malformed(&e)),
    };
    Ok(items
        .into_iter()
        .map(|raw| {
            let json: Value = serde_json::from_str(raw.get()).map_err(|e| malformed(&e))?;
            Event::build(json, Some(raw.get().as_bytes()))
        })
        .collect())
}

/// One event in binary mode: attributes in `ce-*` headers (percent-encoded), the body is `data`.
///
/// `headers` are (lowercase name, value) pairs. JSON bodies become `data`; `text/*` bodies become
/// a JSON string; other media types are refused (send them as `data_base64` in structured mode).
pub fn parse_binary<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Event, EventError> {
    let mut attrs = Map::new();
    for (name, value) in headers {
        let Some(attr) = name.strip_prefix("ce-") else {
            continue;
        };
        let value = percent_decode(value).ok_or_else(|| {
            EventError::field(
                "invalid_attribute",
                truncate(attr, 40),
                "the header value is not valid percent-encoded UTF-8",
            )
        })?;
        if matches!(attr, "data" | "data_base64" | "datacontenttype") {
            return Err(EventError::field(
                "invalid_attribute",
                attr,
                "in binary mode data is the body and its type is Content-Type",
            ));
        }
        attrs.insert(attr.to_owned(), Value::String(value));
    }
    if !body.is_empty() {
        let ct = content_type.unwrap_or("application/json");
        let data = if is_json_media_type(ct) {
            serde_json::from_slice(body).map_err(|e| {
                EventError::field(
                    "malformed_json",
                    "data",
                    format!("the body is not valid JSON: {e}"),
                )
            })?
        } else if ct.trim_start().to_ascii_lowercase().starts_with("text/") {
            Value::String(String::from_utf8(body.to_vec()).map_err(|_| {
                EventError::field("invalid_data", "data", "a text/* body must be UTF-8")
            })?)
        } else {
            return Err(EventError::field(
                "unsupported_media_type",
                "datacontenttype",
                format!(
                    "binary mode accepts JSON or text data, not {ct:?}; send other data as data_base64 in structured mode"
                ),
            ));
        };
        attrs.insert("datacontenttype".into(), Value::String(ct.to_owned()));
        attrs.insert("data".into(), data);
    }
    Event::from_value(Value::Object(attrs))
}

fn percent_decode(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = std::str::from_utf8(raw.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn llm() -> Value {
        json!({
            "specversion": "1.0", "id": "e-1", "source": "gw/eu", "type": "kairos.llm.call.completed.v1",
            "subject": "p1", "time": "2026-11-25T10:00:00Z",
            "data": {"project": "p1", "model": "gpt-4o", "provider": "openai", "input_tokens": 10,
                     "output_tokens": 5, "cost": 0.012, "latency_ms": 100, "status": "ok"}
        })
    }

    fn field_of(v: Value) -> Option<String> {
        Event::from_value(v).unwrap_err().field
    }

    #[test]
    fn a_valid_event_gets_subject_and_msg_id() {
        let e = Event::from_value(llm()).unwrap();
        assert_eq!(e.nats_subject("kairos"), "kairos.events.llm.p1");
        assert_eq!(e.msg_id().len(), 64);
        // Identity is source + id, separated so that ("a","bc") and ("ab","c") differ.
        let mut other = llm();
        other["source"] = json!("gw/e");
        other["id"] = json!("ue-1");
        assert_ne!(Event::from_value(other).unwrap().msg_id(), e.msg_id());
        // The number keeps its text on the way to the stream.
        assert!(
            std::str::from_utf8(e.to_bytes())
                .unwrap()
                .contains("\"cost\":0.012")
        );
    }

    #[test]
    fn envelope_errors_name_the_attribute() {
        for attr in ["specversion", "id", "source", "type"] {
            let mut v = llm();
            v.as_object_mut().unwrap().remove(attr);
            assert_eq!(field_of(v).as_deref(), Some(attr));
        }
        let mut v = llm();
        v["specversion"] = json!("0.3");
        assert_eq!(field_of(v).as_deref(), Some("specversion"));
        let mut v = llm();
        v["id"] = json!(5);
        assert_eq!(field_of(v).as_deref(), Some("id"));
        let mut v = llm();
        v["time"] = json!("yesterday");
        assert_eq!(field_of(v).as_deref(), Some("time"));
        let mut v = llm();
        v["subject"] = json!("p2");
        assert_eq!(Event::from_value(v).unwrap_err().code, "subject_mismatch");
        let mut v = llm();
        v.as_object_mut().unwrap().remove("subject");
        assert_eq!(field_of(v).as_deref(), Some("subject"));
        let mut v = llm();
        v["subject"] = json!("a.b");
        assert_eq!(field_of(v).as_deref(), Some("subject"));
        let mut v = llm();
        v["Data"] = json!({});
        assert_eq!(field_of(v).as_deref(), Some("Data"));
        let mut v = llm();
        v["traceparent"] = json!({"nested": true});
        assert_eq!(field_of(v).as_deref(), Some("traceparent"));
        let mut v = llm();
        v["data"]["cost"] = json!("1,50");
        assert_eq!(field_of(v).as_deref(), Some("data.cost"));
        assert_eq!(
            Event::from_value(json!([1])).unwrap_err().code,
            "invalid_event"
        );
    }

    #[test]
    fn unknown_types_are_accepted_without_data_checks() {
        let v = json!({"specversion": "1.0", "id": "x", "source": "s", "type": "com.example.thing",
                       "data": {"anything": [1, 2]}});
        let e = Event::from_value(v).unwrap();
        assert_eq!(e.nats_subject("k"), "k.events.ext._global");
    }

    #[test]
    fn oversized_events_are_refused() {
        let mut v = llm();
        v["pad"] = json!("x".repeat(MAX_EVENT_BYTES));
        assert_eq!(Event::from_value(v).unwrap_err().code, "event_too_large");
    }

    #[test]
    fn batch_reports_each_element() {
        let body = serde_json::to_vec(&json!([llm(), {"id": 1}, llm()])).unwrap();
        let results = parse_batch(&body).unwrap();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 2);
        assert_eq!(parse_batch(b"{}").unwrap_err().code, "invalid_batch");
        assert_eq!(parse_batch(b"[{").unwrap_err().code, "malformed_json");
    }

    #[test]
    fn binary_mode_maps_headers() {
        let headers: Vec<(&str, &[u8])> = vec![
            ("ce-specversion", b"1.0"),
            ("ce-id", b"b%C3%A9-1"),
            ("ce-source", b"gw"),
            ("ce-type", b"kairos.llm.call.completed.v1"),
            ("ce-subject", b"p1"),
            ("x-other", b"ignored"),
        ];
        let body = serde_json::to_vec(&llm()["data"]).unwrap();
        let e = parse_binary(headers.clone(), Some("application/json"), &body).unwrap();
        assert_eq!(e.id(), "bé-1");
        assert_eq!(e.project().map(ProjectId::as_str), Some("p1"));
        let err =
            parse_binary(headers.clone(), Some("application/octet-stream"), b"\x00").unwrap_err();
        assert_eq!(err.code, "unsupported_media_type");
        let err = parse_binary(headers, Some("application/json"), b"{nope").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("data"));
    }
}
