//! Logs, request ids and metrics.

mod grpc_layer;
pub mod logging;
mod metrics;
#[cfg(feature = "otel")]
pub mod otel;

pub use grpc_layer::{method_name, RequestId, TelemetryLayer, REQUEST_ID_HEADER};
pub use metrics::Metrics;
