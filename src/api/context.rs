//! What every handler reads off a request: the authenticated caller and the request id.

use crate::auth::Caller;
use crate::telemetry::RequestId;
use std::sync::Arc;
use tonic::{Request, Status};

/// The caller and request id of one RPC.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// Who is calling (set by the auth layer).
    pub caller: Arc<Caller>,
    /// The request id (set by the telemetry layer).
    pub request_id: Option<String>,
}

impl CallContext {
    /// Reads the context of `request`; an unauthenticated request here is a wiring bug.
    pub fn of<T>(request: &Request<T>) -> Result<Self, Status> {
        let caller = request
            .extensions()
            .get::<Arc<Caller>>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("missing credentials"))?;
        let request_id = request.extensions().get::<RequestId>().map(|r| r.0.clone());
        Ok(Self { caller, request_id })
    }

    /// The request id as `Option<&str>`.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }
}
