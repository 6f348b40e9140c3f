//! W3C Trace Context (<https://www.w3.org/TR/trace-context/#traceparent-header>): a client's
//! `traceparent` joins a job to the client's trace. The job gets a span id of its own, logged
//! with the job's span (`trace_id`, `span_id`, `parent_span_id`), and its processes get
//! `TRACEPARENT` naming that span as their parent, so what they trace nests under the job.
//!
//! When spans are exported over OTLP (the binary installs `tracing-opentelemetry`), the
//! job's `tracing` span *is* that span: [`join`] makes the client's context its remote
//! parent and takes the span id OpenTelemetry gave it; without an exporter the id is random.

use std::fmt;

/// The variable a job's processes find their trace context in (the name OpenTelemetry's
/// environment-carrier convention uses).
pub const TRACEPARENT_ENV: &str = "TRACEPARENT";

/// A parsed `traceparent`: `00-<trace-id: 32 hex>-<parent-id: 16 hex>-<flags: 2 hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// 16 lowercase hex digits, not all zero: the span this context's work is a child of.
    pub parent_id: String,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

fn hex_field(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl TraceParent {
    /// Parses a `traceparent` value as the spec's §3.2 says: version `00` is exactly 55
    /// characters; a later version (not `ff`) may carry more fields after a `-`, which are
    /// ignored. Errors say what is wrong, for the client.
    pub fn parse(value: &str) -> Result<TraceParent, String> {
        let bad = |why: &str| {
            Err(format!(
                "`traceparent` {why}: expected 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>"
            ))
        };
        let v = value.trim();
        if v.len() < 55 || !v.is_char_boundary(55) {
            return bad("is too short");
        }
        let (head, rest) = v.split_at(55);
        let fields: Vec<&str> = head.split('-').collect();
        let [version, trace_id, parent_id, flags] = fields[..] else {
            return bad("does not have four fields");
        };
        if !hex_field(version, 2) || version == "ff" {
            return bad("has an invalid version");
        }
        if version == "00" && !rest.is_empty() {
            return bad("is longer than version 00 allows");
        }
        if !rest.is_empty() && !rest.starts_with('-') {
            return bad("has a malformed extra field");
        }
        if !hex_field(trace_id, 32) || trace_id.bytes().all(|b| b == b'0') {
            return bad("has an invalid trace id (lowercase hex, not all zeros)");
        }
        if !hex_field(parent_id, 16) || parent_id.bytes().all(|b| b == b'0') {
            return bad("has an invalid parent id (lowercase hex, not all zeros)");
        }
        if !hex_field(flags, 2) {
            return bad("has invalid flags");
        }
        Ok(TraceParent {
            trace_id: trace_id.to_string(),
            parent_id: parent_id.to_string(),
            flags: u8::from_str_radix(flags, 16).map_err(|e| e.to_string())?,
        })
    }

    /// The context of a new span in the same trace, a child of this one's parent: a fresh
    /// random 16-hex-digit span id becomes the parent id.
    pub fn child(&self) -> TraceParent {
        let bytes = uuid::Uuid::new_v4().into_bytes();
        let mut id: String = bytes[..8].iter().map(|b| format!("{b:02x}")).collect();
        if id.bytes().all(|b| b == b'0') {
            id.replace_range(15.., "1");
        }
        TraceParent {
            trace_id: self.trace_id.clone(),
            parent_id: id,
            flags: self.flags,
        }
    }
}

/// Makes `span` (a job's) a child of `parent` for OpenTelemetry, when an OpenTelemetry layer
/// is installed, and returns the job's own context: same trace and flags, the job span's id
/// as the parent id (OpenTelemetry's, else a random one). Call it before the span is entered.
pub fn join(span: &tracing::Span, parent: &TraceParent) -> TraceParent {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let (Ok(trace_id), Ok(parent_id)) = (
        TraceId::from_hex(&parent.trace_id),
        SpanId::from_hex(&parent.parent_id),
    ) else {
        return parent.child();
    };
    let remote = SpanContext::new(
        trace_id,
        parent_id,
        TraceFlags::new(parent.flags),
        true,
        TraceState::default(),
    );
    let cx = opentelemetry::Context::new().with_remote_span_context(remote);
    if span.set_parent(cx).is_ok() {
        let cx = span.context();
        let own = cx.span().span_context().clone();
        if own.is_valid() && own.trace_id() == trace_id {
            return TraceParent {
                trace_id: parent.trace_id.clone(),
                parent_id: own.span_id().to_string(),
                flags: parent.flags,
            };
        }
    }
    parent.child()
}

/// Version `00`, as sent to a job's processes.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_specs_example_and_makes_a_child() {
        let t = TraceParent::parse(GOOD).unwrap();
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id, "00f067aa0ba902b7");
        assert_eq!(t.flags, 1);
        assert_eq!(t.to_string(), GOOD);
        let c = t.child();
        assert_eq!(c.trace_id, t.trace_id);
        assert_ne!(c.parent_id, t.parent_id);
        assert_eq!(TraceParent::parse(&c.to_string()).unwrap(), c);
        // A later version may carry more.
        let v1 = format!("01{}-extra", &GOOD[2..]);
        assert_eq!(TraceParent::parse(&v1).unwrap().trace_id, t.trace_id);
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_err(), "{bad}");
        }
    }
}
