//! Log set-up: `tracing` to stderr as pretty text or JSON lines, plus
//! OpenTelemetry export when configured (cargo feature `otel`).

use crate::config::{Config, LogFormat};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the global subscriber; `RUST_LOG`, when set, overrides the configured level.
pub fn init(config: &Config) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.is_empty() => EnvFilter::try_new(value),
        _ => EnvFilter::try_new(&config.log.level),
    }
    .map_err(|e| format!("invalid log filter: {e}"))?;
    let output = match config.log.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
    };
    let registry = tracing_subscriber::registry().with(output.with_filter(filter));
    #[cfg(feature = "otel")]
    {
        if config.tracing.otlp_endpoint.is_some() {
            let otel = super::otel::layer(&config.tracing)?;
            return registry
                .with(otel)
                .try_init()
                .map_err(|e| format!("cannot install the log subscriber: {e}"));
        }
    }
    registry
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// Flushes exporters at exit.
pub fn shutdown() {
    #[cfg(feature = "otel")]
    super::otel::shutdown();
}
