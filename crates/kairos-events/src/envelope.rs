//! CloudEvents envelopes: the three encodings in, one validated [`Event`] out.

use std::ops::Range;
use std::sync::OnceLock;

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
    /// The whole envelope as a JSON tree: built on the way in by the general path, on first use
    /// for an event that came in the fast way (see [`fast`]).
    json: OnceLock<Value>,
    /// Where `data` lies in `bytes`, for an event that came in the fast way.
    data: Option<Range<usize>>,
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
        check_specversion(str_attr(attrs, "specversion")?)?;
        let id = bounded("id", str_attr(attrs, "id")?, MAX_ID_LEN)?.to_owned();
        let source = bounded("source", str_attr(attrs, "source")?, MAX_SOURCE_LEN)?.to_owned();
        let ty = EventType::parse(str_attr(attrs, "type")?)?;
        let project = match attrs.get("subject") {
            None => None,
            Some(Value::String(s)) => Some(parse_subject(s)?),
            Some(_) => return Err(wrong_type("subject")),
        };
        let time = match attrs.get("time") {
            None => None,
            Some(Value::String(s)) => Some(parse_time(s)?),
            Some(_) => return Err(wrong_type("time")),
        };
        for name in ["datacontenttype", "dataschema"] {
            if attrs.get(name).is_some_and(|v| !v.is_string()) {
                return Err(wrong_type(name));
            }
        }
        check_strings(&json)?;
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
            if let Some(ct) = attrs.get("datacontenttype").and_then(Value::as_str) {
                check_json_content(&ty, ct)?;
            }
            let data = attrs.get("data").ok_or_else(|| {
                EventError::field("missing_attribute", "data", format!("{ty} requires data"))
            })?;
            known.validate(data)?;
            check_amounts(ty.as_str(), data)?;
            check_payload(ty.as_str(), data)?;
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
            json: OnceLock::from(json),
            data: None,
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
        // `bytes` is the text the event was read from (or the encoding of its tree), so it parses.
        self.json
            .get_or_init(|| serde_json::from_slice(&self.bytes).unwrap_or(Value::Null))
    }

    /// The structured-mode JSON encoding, as published to NATS.
    pub fn to_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// `data` decoded into the typed payload of its event type.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, EventError> {
        let data = match (&self.data, self.json.get()) {
            (Some(text), None) => serde_json::from_slice(&self.bytes[text.clone()]),
            _ => T::deserialize(self.json().get("data").unwrap_or(&Value::Null)),
        };
        data.map_err(|e| EventError::field("invalid_data", "data", e.to_string()))
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
        format!(
            "{prefix}.events.{}.{}",
            self.ty.category(),
            self.subject_token()
        )
    }

    /// Whether `subject` is [`Event::nats_subject`] (or, for an event stored by an earlier
    /// layout, its subject then: see [`EventType::legacy_category`]), without building it.
    pub fn belongs_on(&self, prefix: &str, subject: &str) -> bool {
        let under = |category: &str| {
            subject
                .strip_prefix(prefix)
                .and_then(|s| s.strip_prefix(".events."))
                .and_then(|s| s.strip_prefix(category))
                .and_then(|s| s.strip_prefix('.'))
                == Some(self.subject_token())
        };
        under(self.ty.category()) || self.ty.legacy_category().is_some_and(under)
    }

    fn subject_token(&self) -> &str {
        self.project.as_ref().map_or("_global", ProjectId::as_str)
    }
}

/// Amounts the schema admits but Kairos cannot keep exactly (more than 9 decimals, over a
/// billion USD) are refused here, at every door, rather than dead-lettered later.
fn check_amounts(ty: &str, data: &Value) -> Result<(), EventError> {
    let fields = crate::catalogue::spec(ty).map_or(&[][..], |s| s.money);
    for field in fields {
        if let Some(v) = data.get(*field) {
            crate::Money::from_json(v).map_err(|e| {
                EventError::field("invalid_amount", format!("data.{field}"), e.to_string())
            })?;
        }
    }
    Ok(())
}

/// Control characters (U+0000-U+001F, U+007F) are refused everywhere in an event, but for tab,
/// line feed and carriage return inside string values of `data`: attribute values, and the names
/// of `data`'s members, carry none. PostgreSQL's `text` cannot hold U+0000, so an event with one
/// would fail wherever a projection stores it; the rest are what logs and terminals misread.
fn check_strings(event: &Value) -> Result<(), EventError> {
    fn walk(v: &Value, path: &mut String, free_text: bool) -> Result<(), EventError> {
        match v {
            Value::String(s) => check_text(s, path, free_text),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(item, path, free_text)?;
                    path.truncate(len);
                }
                Ok(())
            }
            Value::Object(members) => {
                for (name, item) in members {
                    check_text(name, path, false)?;
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(name);
                    walk(item, path, free_text)?;
                    path.truncate(len);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    fn check_text(s: &str, path: &str, free_text: bool) -> Result<(), EventError> {
        let allowed = |c: char| free_text && matches!(c, '\t' | '\n' | '\r');
        match s
            .char_indices()
            .find(|(_, c)| c.is_control() && (*c as u32) < 0x80 && !allowed(*c))
        {
            None => Ok(()),
            Some((at, c)) => Err(EventError::field(
                "control_character",
                if path.is_empty() {
                    "event".to_owned()
                } else {
                    crate::error::printable(path, 80)
                },
                format!(
                    "U+{:04X} at byte {at}: control characters are refused (tab, line feed and \
                     carriage return are allowed in the values of data)",
                    c as u32
                ),
            )),
        }
    }
    let Value::Object(attrs) = event else {
        return Ok(());
    };
    for (name, value) in attrs {
        let mut path = name.clone();
        check_text(name, "", false)?;
        walk(value, &mut path, name == "data")?;
    }
    Ok(())
}

/// The typed payload of its type must read from `data` (what the schema cannot say: a
/// `project` that is no project id, say).
fn check_payload(ty: &str, data: &Value) -> Result<(), EventError> {
    match crate::catalogue::spec(ty).and_then(|s| s.payload) {
        Some(reads) => reads(data).map_err(|reason| {
            let reason: String = reason.chars().take(300).collect();
            EventError::field(
                "invalid_data",
                "data",
                format!("data does not read as a {ty}: {reason}"),
            )
        }),
        None => Ok(()),
    }
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

/// The envelope checks, shared by the general path and the fast one.
fn check_specversion(spec: &str) -> Result<(), EventError> {
    if spec != "1.0" {
        return Err(EventError::field(
            "unsupported_specversion",
            "specversion",
            format!("specversion must be \"1.0\", not {spec:?}"),
        ));
    }
    Ok(())
}

fn bounded<'a>(name: &str, s: &'a str, max: usize) -> Result<&'a str, EventError> {
    if s.is_empty() || s.len() > max {
        return Err(EventError::field(
            "invalid_attribute",
            name,
            format!("{name} must be 1-{max} bytes long"),
        ));
    }
    Ok(s)
}

fn parse_subject(s: &str) -> Result<ProjectId, EventError> {
    ProjectId::parse(s).map_err(|e| EventError {
        field: Some("subject".into()),
        message: format!("subject is the project id: {}", e.message),
        ..e
    })
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, EventError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            EventError::field(
                "invalid_attribute",
                "time",
                format!("time must be an RFC 3339 timestamp: {e}"),
            )
        })
}

fn check_json_content(ty: &EventType, ct: &str) -> Result<(), EventError> {
    if !is_json_media_type(ct) {
        return Err(EventError::field(
            "invalid_attribute",
            "datacontenttype",
            format!("{ty} carries JSON data; datacontenttype must be application/json"),
        ));
    }
    Ok(())
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
    match fast::parse(bytes) {
        Some(event) => Ok(event),
        None => parse_general(bytes),
    }
}

/// Any structured-mode event, through a JSON tree and its type's schema: the authority on what is
/// valid, and the one that explains what is not.
fn parse_general(bytes: &[u8]) -> Result<Event, EventError> {
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
        .map(|raw| parse_structured(raw.get().as_bytes()))
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

/// The fast way in for the type that makes up most of the traffic, `kairos.llm.call.completed.v1`:
/// its text read straight into borrowed fields and checked against the rules its schema states,
/// with no JSON tree and no schema interpreter. It answers only for events it can vouch for: no
/// escapes in strings, no extension attributes, no duplicate members, nothing its schema or the
/// envelope rules would refuse. Anything else goes the general way, which is the authority and
/// gives the error (the tests check that whatever this accepts, the general way accepts alike).
mod fast {
    use serde::{Deserialize, Deserializer};
    use serde_json::value::RawValue;

    use super::{
        Event, MAX_EVENT_BYTES, MAX_ID_LEN, MAX_SOURCE_LEN, bounded, check_json_content,
        check_specversion, parse_subject, parse_time,
    };
    use crate::types::LLM_CALL_COMPLETED;
    use crate::{EventType, Money, ProjectId};

    /// Present means a value of the field's type: `null` is refused, not read as absent.
    fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        T::deserialize(d).map(Some)
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Envelope<'a> {
        specversion: &'a str,
        id: &'a str,
        source: &'a str,
        #[serde(rename = "type")]
        ty: &'a str,
        #[serde(default, borrow, deserialize_with = "present")]
        subject: Option<&'a str>,
        #[serde(default, borrow, deserialize_with = "present")]
        time: Option<&'a str>,
        #[serde(default, borrow, deserialize_with = "present")]
        datacontenttype: Option<&'a str>,
        // Read for its type only (a string), as the general path checks it.
        #[serde(default, borrow, deserialize_with = "present", rename = "dataschema")]
        _dataschema: Option<&'a str>,
        #[serde(borrow)]
        data: &'a RawValue,
    }

    /// `events-schema/kairos.llm.call.completed.v1.json`, field by field.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct LlmCall<'a> {
        project: &'a str,
        model: &'a str,
        provider: &'a str,
        input_tokens: u64,
        output_tokens: u64,
        #[serde(default, borrow, deserialize_with = "present")]
        cost: Option<&'a RawValue>,
        latency_ms: u64,
        status: &'a str,
        #[serde(default, borrow, deserialize_with = "present")]
        session_id: Option<&'a str>,
        #[serde(default, borrow, deserialize_with = "present")]
        workflow_id: Option<&'a str>,
        #[serde(default, borrow, deserialize_with = "present")]
        actor: Option<&'a str>,
        // Read for its type only: the schema's one bound on it, a minimum of 0, is u64's.
        #[serde(default, deserialize_with = "present", rename = "context_tokens")]
        _context_tokens: Option<u64>,
        #[serde(default, borrow, deserialize_with = "present")]
        error: Option<&'a str>,
        #[serde(default, borrow, deserialize_with = "present")]
        decision_id: Option<&'a str>,
    }

    /// JSON Schema lengths count characters (code points), not bytes.
    fn chars_within(s: &str, min: usize, max: usize) -> bool {
        (min..=max).contains(&s.chars().count())
    }

    impl LlmCall<'_> {
        fn admitted(&self) -> bool {
            const MAX_TOKENS: u64 = 10_000_000_000;
            let optional = |s: Option<&str>, min, max| s.is_none_or(|s| chars_within(s, min, max));
            ProjectId::parse(self.project).is_ok()
                && chars_within(self.model, 1, 200)
                && chars_within(self.provider, 1, 100)
                && self.input_tokens <= MAX_TOKENS
                && self.output_tokens <= MAX_TOKENS
                && self.latency_ms <= 86_400_000
                && matches!(self.status, "ok" | "error")
                && optional(self.session_id, 1, 200)
                && optional(self.workflow_id, 1, 200)
                && optional(self.actor, 1, 200)
                && optional(self.error, 0, 2000)
                && optional(self.decision_id, 1, 200)
                && self.cost.is_none_or(|c| money_admitted(c.get()))
        }
    }

    /// The schema's `money`: a string `^[0-9]{1,12}(\.[0-9]{1,9})?$` or a number in
    /// [0, 1e12); and an amount Kairos keeps exactly (`check_amounts`).
    fn money_admitted(text: &str) -> bool {
        let digits =
            |s: &str, max| (1..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
        match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            Some(s) => {
                let (int, frac) = s.split_once('.').unwrap_or((s, "1"));
                digits(int, 12) && digits(frac, 9) && Money::parse(s).is_ok()
            }
            // A JSON number (the text is one, or the envelope would not have parsed).
            None => text.starts_with(|c: char| c.is_ascii_digit()) && Money::parse(text).is_ok(),
        }
    }

    /// The event `bytes` holds, if it is an LLM call this path can vouch for.
    pub(super) fn parse(bytes: &[u8]) -> Option<Event> {
        let text = bytes.trim_ascii();
        if text.len() > MAX_EVENT_BYTES || text.contains(&b'\n') || text.contains(&b'\r') {
            return None;
        }
        let e: Envelope = serde_json::from_slice(text).ok()?;
        if e.ty != LLM_CALL_COMPLETED {
            return None;
        }
        check_specversion(e.specversion).ok()?;
        bounded("id", e.id, MAX_ID_LEN).ok()?;
        bounded("source", e.source, MAX_SOURCE_LEN).ok()?;
        let ty = EventType::parse(e.ty).ok()?;
        let project = parse_subject(e.subject?).ok()?;
        let time = e.time.map(parse_time).transpose().ok()?;
        if let Some(ct) = e.datacontenttype {
            check_json_content(&ty, ct).ok()?;
        }
        let data: LlmCall = serde_json::from_str(e.data.get()).ok()?;
        if !data.admitted() || data.project != project.as_str() {
            return None;
        }
        // `data` borrows from `text`: where it starts there is where it lies in the stored bytes.
        let start = (e.data.get().as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
        let range = start..start + e.data.get().len();
        if text.get(range.clone())? != e.data.get().as_bytes() {
            return None;
        }
        Some(Event {
            id: e.id.to_owned(),
            source: e.source.to_owned(),
            ty,
            project: Some(project),
            time,
            json: std::sync::OnceLock::new(),
            data: Some(range),
            bytes: text.to_vec(),
        })
    }
}

/// Whether two stored events with the same identity say the same: the same envelope and data,
/// which a producer's retry keeps though its bytes may differ in spacing or member order.
/// Kairos' signature ([`crate::SIGNATURE_ATTRIBUTE`]) is left out: it is not part of what the
/// producer sent. Two that differ otherwise are an identity conflict, not a retry.
pub fn same_content(first: &[u8], second: &[u8]) -> bool {
    let unsigned = |bytes: &[u8]| {
        serde_json::from_slice::<Value>(bytes).ok().map(|mut v| {
            if let Some(attrs) = v.as_object_mut() {
                attrs.remove(crate::SIGNATURE_ATTRIBUTE);
            }
            v
        })
    };
    first.trim_ascii() == second.trim_ascii()
        || unsigned(first).is_some_and(|a| unsigned(second).is_some_and(|b| a == b))
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

    /// Inputs around an LLM call: valid ones in several shapes, then each with one thing changed
    /// (a member removed, or set to a value at or past a bound, of another type, escaped, …).
    fn llm_variants() -> (Vec<Value>, Vec<Vec<u8>>) {
        let mut full = llm();
        full["datacontenttype"] = json!("application/json; charset=utf-8");
        full["dataschema"] = json!("urn:kairos:schema:kairos.llm.call.completed.v1");
        let data = full["data"].as_object_mut().unwrap();
        for (k, v) in [
            ("session_id", json!("s-1")),
            ("workflow_id", json!("w-1")),
            ("actor", json!("ana@example.com")),
            ("context_tokens", json!(8000)),
            ("error", json!("")),
        ] {
            data.insert(k.into(), v);
        }
        let mut string_cost = llm();
        string_cost["data"]["cost"] = json!("0.000000001");
        let mut no_time = llm();
        no_time.as_object_mut().unwrap().remove("time");
        let bases = vec![llm(), full, string_cost, no_time];

        let long = |c: &str, n: usize| json!(c.repeat(n));
        let values = [
            json!(null),
            json!(true),
            json!(0),
            json!(-1),
            json!(1.0),
            json!(1e3),
            json!(10_000_000_000u64),
            json!(10_000_000_001u64),
            json!(86_400_000),
            json!(86_400_001),
            json!(u64::MAX),
            json!(""),
            json!("x"),
            json!("ok"),
            json!("error"),
            json!("OK"),
            long("x", 64),
            long("x", 65),
            long("x", 100),
            long("x", 101),
            long("x", 200),
            long("x", 201),
            long("é", 200),
            long("é", 201),
            long("x", 2000),
            long("x", 2001),
            json!("a\"b"),
            json!("a.b"),
            json!("-p"),
            json!("p_1-x"),
            json!([]),
            json!({}),
            json!("0.01"),
            json!("1."),
            json!(".5"),
            json!("0.0000000001"),
            json!("1234567890123"),
            json!("999999999999"),
            json!("1000000000"),
            json!("1000000000.000000001"),
            json!("01"),
            json!("1e3"),
            json!(" 1"),
            serde_json::from_str("0.5").unwrap(),
            serde_json::from_str("1e-9").unwrap(),
            serde_json::from_str("1e-10").unwrap(),
            serde_json::from_str("1.5E3").unwrap(),
            serde_json::from_str("999999999999").unwrap(),
            serde_json::from_str("1000000000").unwrap(),
            serde_json::from_str("-0").unwrap(),
            serde_json::from_str("0e2147483647").unwrap(),
            serde_json::from_str("1e400").unwrap(),
        ];
        let data_fields = [
            "project",
            "model",
            "provider",
            "input_tokens",
            "output_tokens",
            "cost",
            "latency_ms",
            "status",
            "session_id",
            "workflow_id",
            "actor",
            "context_tokens",
            "error",
            "surprise",
        ];
        // Every core attribute, an extension and a core name in the wrong case.
        let attributes: Vec<&str> = CORE_ATTRIBUTES
            .iter()
            .copied()
            .chain(["traceparent", "Data"])
            .collect();
        let mut cases = bases.clone();
        for base in &bases {
            for field in data_fields {
                let mut v = base.clone();
                v["data"].as_object_mut().unwrap().remove(field);
                cases.push(v);
                for value in &values {
                    let mut v = base.clone();
                    v["data"][field] = value.clone();
                    cases.push(v);
                }
            }
            for &attr in &attributes {
                let mut v = base.clone();
                v.as_object_mut().unwrap().remove(attr);
                cases.push(v);
                let extra = [
                    json!("1.0"),
                    json!("p1"),
                    json!("p2"),
                    json!("kairos.user.action.v1"),
                    json!("com.example.thing"),
                    json!("2026-11-25T10:00:00+02:00"),
                    json!("yesterday"),
                    json!("text/plain"),
                    json!("application/cloudevents+json"),
                    long("x", 256),
                    long("x", 257),
                    long("x", 1024),
                    long("x", 1025),
                ];
                for value in values.iter().chain(&extra) {
                    let mut v = base.clone();
                    v[attr] = value.clone();
                    cases.push(v);
                }
            }
        }
        let mut texts: Vec<Vec<u8>> = cases
            .iter()
            .map(|v| serde_json::to_vec(v).unwrap())
            .collect();
        for base in &bases {
            let text = serde_json::to_string(base).unwrap();
            for changed in [
                text.replacen('{', "{\"id\":\"first\",", 1),
                text.replacen("\"data\":{", "\"data\":{\"model\":\"m\",", 1),
                text.replacen("gpt-4o", "gpt\\u002d4o", 1),
                text.replacen("\"p1\"", "\"\\u00701\"", 1),
                text.replacen("\"e-1\"", "\"e\\n1\"", 1),
                text.replacen(",\"source\"", ",\n\"source\"", 1),
                format!("  {text}\n"),
                format!("{text} x"),
                format!("\u{feff}{text}"),
                text.replacen("\"1.0\"", "1.0", 1),
            ] {
                texts.push(changed.into_bytes());
            }
        }
        (bases, texts)
    }

    #[test]
    fn the_fast_path_accepts_only_what_the_general_path_accepts_alike() {
        let (bases, texts) = llm_variants();
        for base in &bases {
            let text = serde_json::to_vec(base).unwrap();
            assert!(
                fast::parse(&text).is_some(),
                "not taken the fast way: {base}"
            );
        }
        let (mut fast_ones, mut general_ones) = (0, 0);
        for text in &texts {
            let shown = String::from_utf8_lossy(text);
            let general = parse_general(text);
            general_ones += usize::from(general.is_ok());
            let Some(fast) = fast::parse(text) else {
                continue;
            };
            fast_ones += 1;
            let general = general
                .unwrap_or_else(|e| panic!("fast accepted, general refused ({e:?}): {shown}"));
            assert_eq!(
                (
                    fast.id(),
                    fast.source(),
                    fast.event_type(),
                    fast.project(),
                    fast.time()
                ),
                (
                    general.id(),
                    general.source(),
                    general.event_type(),
                    general.project(),
                    general.time()
                ),
                "{shown}"
            );
            assert_eq!(fast.to_bytes(), general.to_bytes(), "{shown}");
            assert_eq!(fast.json(), general.json(), "{shown}");
            let typed: crate::types::LlmCallCompleted = fast.data_as().unwrap();
            assert_eq!(typed, general.data_as().unwrap(), "{shown}");
        }
        // Most single changes keep an event valid or make it invalid in a way the fast path sees;
        // the count shows the comparison above ran on a good share of them.
        assert!(
            fast_ones > general_ones / 2,
            "{fast_ones} of {general_ones} of {}",
            texts.len()
        );
    }

    #[test]
    fn an_event_knows_the_subject_it_belongs_on() {
        let e = Event::from_value(llm()).unwrap();
        assert!(e.belongs_on("kairos", &e.nats_subject("kairos")));
        for other in [
            "kairos.events.llm.p2",
            "kairos.events.user.p1",
            "kairos2.events.llm.p1",
            "kairos.events.llm.p1.x",
            "kairos.events.llm",
            "x.kairos.events.llm.p1",
        ] {
            assert!(!e.belongs_on("kairos", other), "{other}");
        }
    }

    #[test]
    fn a_retry_says_the_same_and_a_conflict_does_not() {
        let first =
            br#"{"specversion":"1.0","id":"a","source":"s","type":"t","data":{"x":1,"y":[1,2]}}"#;
        // Spacing and member order are not content.
        let respaced = br#" { "source" : "s", "id":"a", "type":"t", "specversion":"1.0",
            "data": {"y":[1, 2], "x":1} }
"#;
        assert!(same_content(first, first));
        assert!(same_content(first, respaced));
        // Kairos' signature on the stored one was not sent by the producer.
        let signed = br#"{"specversion":"1.0","id":"a","source":"s","type":"t","kairossig":"00ff","data":{"x":1,"y":[1,2]}}"#;
        assert!(same_content(signed, first));
        for other in [
            &br#"{"specversion":"1.0","id":"a","source":"s","type":"t","data":{"x":2,"y":[1,2]}}"#[..],
            br#"{"specversion":"1.0","id":"a","source":"s","type":"t","data":{"x":1,"y":[2,1]}}"#,
            br#"{"specversion":"1.0","id":"a","source":"s","type":"u","data":{"x":1,"y":[1,2]}}"#,
            br#"{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"p","data":{"x":1,"y":[1,2]}}"#,
            b"not json",
        ] {
            assert!(!same_content(first, other), "{}", String::from_utf8_lossy(other));
            assert!(!same_content(other, first), "{}", String::from_utf8_lossy(other));
        }
        // Text that is not JSON is the same only byte for byte.
        assert!(same_content(b"not json", b"not json\n"));
        assert!(!same_content(b"not json", b"not  json"));
    }
}
