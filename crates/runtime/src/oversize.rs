//! Oversize requests answer `RESOURCE_EXHAUSTED` (gRPC's code for a message over the size limit),
//! with the `ErrorInfo` reason `MESSAGE_TOO_LARGE`. tonic checks a message's declared length
//! against `max_decoding_message_size` in its stream decoder, before any codec runs, and answers
//! `OUT_OF_RANGE` with no details; [`OversizeLayer`] rewrites exactly that answer (a
//! trailers-only response carrying tonic's message) and leaves every other response alone.

use crate::errors::status;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::Code;
use tower::{Layer, Service};

/// How tonic's decoder begins the message of the status it answers for an oversize message.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

/// Rewrites tonic's oversize-message answer (see the module doc).
#[derive(Clone, Copy, Debug, Default)]
pub struct OversizeLayer;

impl<S> Layer<S> for OversizeLayer {
    type Service = OversizeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OversizeService { inner }
    }
}

/// The service [`OversizeLayer`] wraps around the router.
#[derive(Clone, Debug)]
pub struct OversizeService<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for OversizeService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let answer = self.inner.call(request);
        Box::pin(async move { answer.await.map(rewrite) })
    }
}

/// The response, or `RESOURCE_EXHAUSTED` in place of tonic's oversize `OUT_OF_RANGE`. Only a
/// trailers-only answer has `grpc-status` among its headers, so a normal answer costs one lookup.
fn rewrite(response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    match tonic::Status::from_header_map(response.headers()) {
        Some(s) if s.code() == Code::OutOfRange && s.message().starts_with(TONIC_TOO_LARGE) => {
            status(Code::ResourceExhausted, "MESSAGE_TOO_LARGE", s.message()).into_http()
        }
        _ => response,
    }
}
