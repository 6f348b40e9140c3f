//! The protocol as JSON Schema (draft 2020-12), generated from the types in this module and
//! committed as `docs/protocol.schema.json`. A unit test fails when the committed file and the
//! types disagree; `CCX_UPDATE_SCHEMA=1 cargo test --lib protocol` rewrites it.
//!
//! The document lists each method with its params and result, every notification, and the
//! error object, all as `$ref`s into `$defs`.

use super::frame::ErrorObject;
use super::jobs::{Attach, Detach, GetJob, ListJobs};
use super::methods::{Control, Execute, HookStatus, Method, Pong, Status};
use super::notify::Notification;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

/// The whole protocol as one JSON Schema document.
pub fn document() -> Value {
    let mut generator = SchemaGenerator::new(SchemaSettings::draft2020_12());
    let mut methods = Map::new();
    fn method<M: Method>(generator: &mut SchemaGenerator, methods: &mut Map<String, Value>)
    where
        M::Params: JsonSchema,
        M::Result: JsonSchema,
    {
        let params = generator.subschema_for::<M::Params>();
        let result = generator.subschema_for::<M::Result>();
        methods.insert(
            M::NAME.to_string(),
            json!({ "params": params, "result": result }),
        );
    }
    method::<Execute>(&mut generator, &mut methods);
    method::<Control>(&mut generator, &mut methods);
    method::<Status>(&mut generator, &mut methods);
    method::<HookStatus>(&mut generator, &mut methods);
    method::<Pong>(&mut generator, &mut methods);
    method::<Attach>(&mut generator, &mut methods);
    method::<Detach>(&mut generator, &mut methods);
    method::<ListJobs>(&mut generator, &mut methods);
    method::<GetJob>(&mut generator, &mut methods);
    let notification = generator.subschema_for::<Notification>();
    let error = generator.subschema_for::<ErrorObject>();
    let defs = generator.take_definitions(true);
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ccx WebSocket protocol (JSON-RPC 2.0)",
        "description": "Requests are {jsonrpc: \"2.0\", id, method, params}; replies carry `result` \
            or `error`; notifications carry `method` and `params` and no id. `methods` maps each \
            method to its params and result; `notification` is any notification frame's \
            {method, params}; `error` is the error object of a failed reply.",
        "methods": methods,
        "notification": notification,
        "error": error,
        "$defs": defs,
    })
}

/// The document as committed: pretty-printed with a trailing newline.
pub fn render() -> String {
    let mut text = serde_json::to_string_pretty(&document()).expect("schema serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_schema_matches_the_types() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/protocol.schema.json");
        let generated = super::render();
        if std::env::var_os("CCX_UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &generated).expect("writing the schema");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/protocol.schema.json is out of date with the protocol types; \
             regenerate it with `CCX_UPDATE_SCHEMA=1 cargo test --lib protocol`"
        );
    }
}
