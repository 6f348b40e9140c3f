//! The binary's tracing: logs on stderr (text or JSON lines, `RUST_LOG` filter), and for
//! `ccx serve`, when `[trace] otlp_endpoint` or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` variables name a collector, the spans (one per
//! connection, one per job, joined to the client's trace by `traceparent`) exported over
//! OTLP/HTTP with protobuf bodies, in batches (`opentelemetry-otlp`, `tracing-opentelemetry`).

use super::{Cli, Command, LogFormat};
use ccx::config::{Config, TraceConfig};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Flushes and stops the span exporter when dropped (at the end of `main`).
pub struct Telemetry(Option<SdkTracerProvider>);

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("ccx: the last spans could not be exported: {e}");
        }
    }
}

/// The `[trace]` section `ccx serve` will run with (read here, before the server starts, so
/// that its spans are exported from the first; a config that cannot be read gives none and
/// `serve` reports the error itself).
fn serve_trace_config(cli: &Cli) -> Option<TraceConfig> {
    let Command::Serve(args) = &cli.command else {
        return None;
    };
    let path = super::config_path(args.config.clone())?;
    Config::load(&path).ok().map(|c| c.trace)
}

fn exporter(cfg: &TraceConfig) -> Option<SdkTracerProvider> {
    let from_env = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
    if cfg.otlp_endpoint.is_none() && !from_env {
        return None;
    }
    use opentelemetry_otlp::WithExportConfig;
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    if let Some(url) = &cfg.otlp_endpoint {
        builder = builder.with_endpoint(url.clone());
    }
    let exporter = match builder.build() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("ccx: OTLP export is off: {e}");
            return None;
        }
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(cfg.service_name.clone())
        .build();
    Some(
        SdkTracerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(exporter)
            .build(),
    )
}

/// Sets up logging (and span export, see the module docs) for the whole process.
pub fn init(cli: &Cli) -> Telemetry {
    let default = match cli.command {
        Command::Serve(_) | Command::Worker(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match cli.log_format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let provider = serve_trace_config(cli).and_then(|cfg| exporter(&cfg));
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("ccx")));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .init();
    Telemetry(provider)
}
