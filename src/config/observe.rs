//! `[metrics]`: the Prometheus endpoint; `[audit]`: the audit log (its keys are
//! [`crate::audit::AuditConfig`]'s); `[trace]`: OTLP export of job spans.

use crate::audit::AuditConfig;
use anyhow::{Result, bail};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    enabled: Option<bool>,
    open_on_loopback: Option<bool>,
}

/// `[metrics]`: `GET /metrics` in the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// Serve `/metrics` at all (default `true`).
    pub enabled: bool,
    /// Let a scraper on a loopback address read `/metrics` without a token (default
    /// `false`: the same token as every other route). The `Origin` check still applies.
    pub open_on_loopback: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            open_on_loopback: false,
        }
    }
}

pub(super) fn apply(cfg: &mut MetricsConfig, raw: RawMetrics) {
    if let Some(e) = raw.enabled {
        cfg.enabled = e;
    }
    if let Some(o) = raw.open_on_loopback {
        cfg.open_on_loopback = o;
    }
}

/// `[audit]` with its `path` taken from the config file's directory when relative.
pub(super) fn audit(mut raw: AuditConfig, base: &Path) -> Result<AuditConfig> {
    if let Some(path) = raw.path.take() {
        if path.as_os_str().is_empty() {
            bail!("audit.path is empty; leave it out to turn the audit log off");
        }
        raw.path = Some(base.join(path));
    }
    if raw.queue == 0 {
        bail!("audit.queue must be at least 1");
    }
    Ok(raw)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrace {
    otlp_endpoint: Option<String>,
    service_name: Option<String>,
}

/// `[trace]`: job spans exported over OTLP (HTTP, protobuf), off unless an endpoint is set
/// here or in the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`
/// variables. Read when `ccx serve` starts.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// The collector's traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans (default `ccx`).
    pub service_name: String,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            otlp_endpoint: None,
            service_name: "ccx".into(),
        }
    }
}

pub(super) fn trace(raw: RawTrace) -> Result<TraceConfig> {
    let mut cfg = TraceConfig::default();
    if let Some(url) = raw.otlp_endpoint {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("trace.otlp_endpoint must be an http:// or https:// URL, got `{url}`");
        }
        cfg.otlp_endpoint = Some(url);
    }
    if let Some(name) = raw.service_name {
        if name.is_empty() {
            bail!("trace.service_name is empty");
        }
        cfg.service_name = name;
    }
    Ok(cfg)
}
