//! What a client reads when its message itself is bad. tonic answers a message that does not
//! decode (corrupt bytes, a string that is not UTF-8) with INTERNAL and an oversized one with
//! OUT_OF_RANGE; both are the caller's input, so the public API answers INVALID_ARGUMENT and
//! RESOURCE_EXHAUSTED, naming the limit. Unary calls fail before the handler runs, so a layer
//! rewrites their answer; streams see the error in the handler ([`inbound_status`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::{Code, Status};

/// The prefix of prost's decode errors, as tonic passes them on.
const DECODE_ERROR: &str = "failed to decode Protobuf message";
/// The start of tonic's "message too large" error.
const TOO_LARGE: &str = "Error, decoded message length too large";

/// The status a client should see for an error reading its message.
pub fn inbound_status(s: Status) -> Status {
    match s.code() {
        Code::Internal if s.message().starts_with(DECODE_ERROR) => Status::invalid_argument(
            format!("the request is not a valid message: {}", s.message()),
        ),
        Code::OutOfRange if s.message().starts_with(TOO_LARGE) => {
            // "...: found N bytes, the limit is: M bytes"
            let numbers: Vec<&str> = s
                .message()
                .split(|c: char| !c.is_ascii_digit())
                .filter(|w| !w.is_empty())
                .collect();
            let msg = match numbers.as_slice() {
                [found, limit, ..] => format!(
                    "the request is {found} bytes; the limit is {limit} bytes (--max-request-bytes)"
                ),
                _ => format!(
                    "the request is too large (--max-request-bytes): {}",
                    s.message()
                ),
            };
            Status::resource_exhausted(msg)
        }
        _ => s,
    }
}

/// Wraps a tonic service so that unary calls whose message could not be read answer with
/// [`inbound_status`], and a unary `Score` whose message is declared over `unary_limit` is
/// refused on its frame header, before its bytes are read. The service's own decoding limit
/// is then a ceiling for stream messages, each of which the router checks against the same
/// limit and answers in band, so one oversized request does not end a stream.
#[derive(Clone)]
pub struct PublicErrors<S> {
    pub inner: S,
    pub unary_limit: usize,
}

impl<S: NamedService> NamedService for PublicErrors<S> {
    const NAME: &'static str = S::NAME;
}

/// The unary methods whose message size is checked on the frame header.
const UNARY: &str = "/grm.v1.RewardService/Score";

/// The first gRPC frame's declared length, read from the body's first bytes; returns the
/// body whole again (what was read, then the rest).
async fn declared_length(body: Body) -> (Option<u32>, Body) {
    use futures::StreamExt;
    let mut data = axum::body::Body::new(body).into_data_stream();
    let mut read: Vec<axum::body::Bytes> = Vec::new();
    let mut head: Vec<u8> = Vec::with_capacity(5);
    while head.len() < 5 {
        match data.next().await {
            Some(Ok(b)) => {
                head.extend_from_slice(&b[..b.len().min(5 - head.len())]);
                read.push(b);
            }
            // The rest (an error, or the end) is the decoder's to report.
            _ => break,
        }
    }
    let len = (head.len() == 5).then(|| u32::from_be_bytes([head[1], head[2], head[3], head[4]]));
    let rest = futures::stream::iter(read.into_iter().map(Ok::<_, axum::Error>)).chain(data);
    (len, Body::new(axum::body::Body::from_stream(rest)))
}

impl<S> tonic::codegen::Service<http::Request<Body>> for PublicErrors<S>
where
    S: tonic::codegen::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The ready service answers this call; a clone waits for the next (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.unary_limit;
        Box::pin(async move {
            let req = if req.uri().path() == UNARY {
                let (parts, body) = req.into_parts();
                let (len, body) = declared_length(body).await;
                if let Some(n) = len.filter(|&n| n as usize > limit) {
                    return Ok(Status::resource_exhausted(format!(
                        "the request is {n} bytes; the limit is {limit} bytes (--max-request-bytes)"
                    ))
                    .into_http());
                }
                http::Request::from_parts(parts, body)
            } else {
                req
            };
            let resp = inner.call(req).await?;
            // An error before the handler ran is a trailers-only answer: the status is in the
            // headers.
            let Some(status) = Status::from_header_map(resp.headers()) else {
                return Ok(resp);
            };
            if status.code() == Code::Ok {
                return Ok(resp);
            }
            let mapped = inbound_status(status.clone());
            if mapped.code() == status.code() {
                return Ok(resp);
            }
            Ok(mapped.into_http())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_messages_are_the_callers_input() {
        let s = inbound_status(Status::internal(
            "failed to decode Protobuf message: ScoreRequest.id: invalid string value: data is not UTF-8 encoded",
        ));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("ScoreRequest.id"));
        let s = inbound_status(Status::out_of_range(
            "Error, decoded message length too large: found 104857600 bytes, the limit is: 4194304 bytes",
        ));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.message(),
            "the request is 104857600 bytes; the limit is 4194304 bytes (--max-request-bytes)"
        );
        // Anything else passes unchanged.
        let s = inbound_status(Status::internal("the engine has stopped"));
        assert_eq!(s.code(), Code::Internal);
    }
}
