//! The only place generated protobuf code is included. Everything else uses
//! these types through `crate::pb`; only `api/` converts them to domain types.
//!
//! One exception to "generated": the server side of `EventService.SubscribeEvents` yields a
//! hand-written [`SubscribeEventsFrame`] (see `build.rs`), which encodes exactly as a
//! `SubscribeEventsResponse` but can carry an event already encoded once for every subscriber.
//! Clients, the SDKs and reflection see the `SubscribeEventsResponse` of the proto.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("comfyreality.runtime.v1");

mod frame;

pub use frame::SubscribeEventsFrame;

/// The encoded `FileDescriptorSet` of the v1 API, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("comfyreality_descriptor");

/// The API version sent as `x-api-version` on every response.
pub const API_VERSION: &str = "v1";
