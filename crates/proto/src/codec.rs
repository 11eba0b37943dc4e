//! The codec every generated client and server uses (`codec_path` in `build.rs`): tonic's prost
//! codec, except that a request a server cannot decode (random bytes, invalid UTF-8 in a string,
//! nesting past prost's recursion limit) answers `INVALID_ARGUMENT` with the `ErrorInfo` reason
//! `MALFORMED_REQUEST`: it is the caller's bug, not the server's (prost's own codec says
//! `INTERNAL`). The answer names what prost could not decode, never the bytes. A client that
//! cannot decode a response keeps prost's `INTERNAL`: the fault is the server's, not its request.

use prost::Message;
use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstDecoder, ProstEncoder};
use tonic_types::{ErrorDetails, StatusExt};

/// Whether a message travels as a request (decoded by a server) or as a response (decoded by a
/// client). `build.rs` implements it for the input and output of every RPC in `proto/`.
pub trait Role {
    /// True for an RPC's input message.
    const REQUEST: bool;
}

include!(concat!(env!("OUT_DIR"), "/codec_roles.rs"));

/// [`tonic_prost::ProstCodec`] with undecodable requests answered as bad input.
#[derive(Debug, Clone)]
pub struct ApiCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ApiCodec<T, U> {
    fn default() -> Self {
        ApiCodec(PhantomData)
    }
}

impl<T, U> Codec for ApiCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Role + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ApiDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ApiDecoder(ProstDecoder::default())
    }
}

/// Prost's decoder, with its error re-coded for requests (see the module doc).
#[derive(Debug, Clone)]
pub struct ApiDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default + Role> Decoder for ApiDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|e| decode_error(e, U::REQUEST))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// What a decode failure answers: [`malformed_request`] for a request, prost's own status for a
/// response.
fn decode_error(prost: Status, request: bool) -> Status {
    if request {
        malformed_request(prost.message())
    } else {
        prost
    }
}

/// `INVALID_ARGUMENT`, reason `MALFORMED_REQUEST`, saying what prost could not decode (a field
/// path and a kind of fault, never the request's bytes).
fn malformed_request(why: &str) -> Status {
    let details = ErrorDetails::with_error_info("MALFORMED_REQUEST", crate::ERROR_DOMAIN, []);
    let why: String = why.chars().take(256).collect();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("the request is not a valid protobuf message of this RPC: {why}"),
        details,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::v1 as pb;

    #[test]
    fn requests_and_responses_have_their_roles() {
        const { assert!(pb::CheckRequest::REQUEST) };
        const { assert!(!pb::CheckResponse::REQUEST) };
        const { assert!(!pb::WatchChangesResponse::REQUEST) };
        const { assert!(crate::profile::v1::EraseSubjectRequest::REQUEST) };
    }

    #[test]
    fn an_undecodable_request_is_bad_input_and_an_undecodable_response_stays_internal() {
        let prost = || Status::internal("failed to decode Protobuf message: invalid wire type");
        let request = decode_error(prost(), true);
        assert_eq!(request.code(), Code::InvalidArgument);
        let info = request.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "MALFORMED_REQUEST");
        assert!(
            request.message().contains("invalid wire type"),
            "{}",
            request.message()
        );
        assert_eq!(decode_error(prost(), false).code(), Code::Internal);
    }
}
