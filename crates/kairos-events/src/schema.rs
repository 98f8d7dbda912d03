//! The JSON Schemas of the known event types, compiled once.

use std::collections::HashMap;
use std::sync::LazyLock;

use jsonschema::Validator;
use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

use crate::EventError;

/// A known event type: its compiled schema and whether its data carries a `project`.
pub struct KnownType {
    validator: Validator,
    /// `data.project` is required, so the CloudEvent `subject` is required and must equal it.
    pub project_required: bool,
    /// `data.project` exists as a property (optional or required).
    pub has_project: bool,
}

static REGISTRY: LazyLock<HashMap<&'static str, KnownType>> = LazyLock::new(|| {
    crate::catalogue::CATALOGUE
        .iter()
        .map(|spec| (spec.ty, spec.schema))
        .map(|(name, text)| {
            // The schemas are part of this crate's source and checked by its tests; a broken one is
            // a build defect, not an input error.
            let schema: Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("events-schema/{name}.json is not JSON: {e}"));
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(&schema)
                .unwrap_or_else(|e| panic!("events-schema/{name}.json is not a valid schema: {e}"));
            let required = |p: &str| {
                schema["required"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|v| v == p))
            };
            let known = KnownType {
                validator,
                project_required: required("project"),
                has_project: schema["properties"].get("project").is_some(),
            };
            (name, known)
        })
        .collect()
});

/// The known type called `name`, if Kairos has a schema for it.
pub fn known_type(name: &str) -> Option<&'static KnownType> {
    REGISTRY.get(name)
}

/// The JSON Schema text of a known type.
pub fn schema_source(name: &str) -> Option<&'static str> {
    crate::catalogue::spec(name).map(|s| s.schema)
}

/// The names of every event type Kairos has a schema for.
pub fn known_types() -> impl Iterator<Item = &'static str> {
    crate::catalogue::CATALOGUE.iter().map(|s| s.ty)
}

impl KnownType {
    /// Validates `data`; the first error names the offending field as `data.<path>`.
    pub fn validate(&self, data: &Value) -> Result<(), EventError> {
        // A valid instance is the usual case and `is_valid` stops at nothing to explain; the
        // errors are only collected for an invalid one.
        if self.validator.is_valid(data) {
            return Ok(());
        }
        let Some(err) = self.validator.iter_errors(data).next() else {
            return Ok(());
        };
        let mut field = String::from("data");
        for seg in err
            .instance_path()
            .as_str()
            .split('/')
            .filter(|s| !s.is_empty())
        {
            field.push('.');
            field.push_str(&seg.replace("~1", "/").replace("~0", "~"));
        }
        match err.kind() {
            ValidationErrorKind::Required { property } => {
                field.push('.');
                field.push_str(property.as_str().unwrap_or_default());
            }
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                if let Some(first) = unexpected.first() {
                    field.push('.');
                    field.push_str(first);
                }
            }
            _ => {}
        }
        let mut message = err.to_string();
        if message.len() > 300 {
            // Error messages quote the offending value; keep them short for hostile input.
            let cut = (0..=300)
                .rev()
                .find(|i| message.is_char_boundary(*i))
                .unwrap_or(0);
            message.truncate(cut);
            message.push('…');
        }
        Err(EventError::field("schema_violation", field, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_compiles_and_is_listed() {
        assert_eq!(REGISTRY.len(), known_types().count());
        for name in known_types() {
            assert!(known_type(name).is_some(), "{name}");
            assert!(
                schema_source(name).is_some_and(|s| s.contains(name)),
                "{name} $id"
            );
        }
    }

    #[test]
    fn errors_name_the_field() {
        let llm = known_type("kairos.llm.call.completed.v1").unwrap();
        let mut data = serde_json::json!({
            "project": "p1", "model": "gpt-4o", "provider": "openai", "input_tokens": 10,
            "output_tokens": 5, "cost": "0.01", "latency_ms": 100, "status": "ok"
        });
        assert_eq!(llm.validate(&data), Ok(()));
        data["input_tokens"] = serde_json::json!("ten");
        assert_eq!(
            llm.validate(&data).unwrap_err().field.as_deref(),
            Some("data.input_tokens")
        );
        data["input_tokens"] = serde_json::json!(10);
        data.as_object_mut().unwrap().remove("model");
        assert_eq!(
            llm.validate(&data).unwrap_err().field.as_deref(),
            Some("data.model")
        );
        data["model"] = serde_json::json!("m");
        data["surprise"] = serde_json::json!(1);
        assert_eq!(
            llm.validate(&data).unwrap_err().field.as_deref(),
            Some("data.surprise")
        );
        assert!(llm.project_required && llm.has_project);
    }
}
