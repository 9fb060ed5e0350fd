//! `SubscribeEventsFrame`: what the server's `SubscribeEvents` stream yields. The wire format is
//! `SubscribeEventsResponse`'s (clients decode it as that message); the server may hand over an
//! event already encoded, so that one encoding serves every subscriber.

// Hand-written: linted like the rest of the crate (the generated code beside it is not).
#![warn(missing_docs, clippy::all)]

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{
    DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len,
};
use prost::{DecodeError, Message};

use super::subscribe_events_response::Item;
use super::{Event, SubscribeEventsResponse};

/// The `event` field of `SubscribeEventsResponse`.
const EVENT_FIELD: u32 = 1;

/// One `SubscribeEventsResponse` on its way out. Encodes exactly as the message it stands for.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "a frame is moved where the message it stands for would be; boxing would add an allocation per message"
)]
pub enum SubscribeEventsFrame {
    /// A message, encoded as it is sent.
    Message(SubscribeEventsResponse),
    /// A response whose item is an event given as the encoding of its `Event` message.
    EncodedEvent(Bytes),
}

impl SubscribeEventsFrame {
    /// The response this frame stands for.
    ///
    /// # Errors
    /// When an encoded event is not a valid `Event`.
    pub fn into_message(self) -> Result<SubscribeEventsResponse, DecodeError> {
        match self {
            Self::Message(message) => Ok(message),
            Self::EncodedEvent(bytes) => Ok(SubscribeEventsResponse {
                item: Some(Item::Event(Event::decode(bytes)?)),
            }),
        }
    }
}

impl Default for SubscribeEventsFrame {
    fn default() -> Self {
        Self::Message(SubscribeEventsResponse::default())
    }
}

impl From<SubscribeEventsResponse> for SubscribeEventsFrame {
    fn from(message: SubscribeEventsResponse) -> Self {
        Self::Message(message)
    }
}

impl Message for SubscribeEventsFrame {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Self::Message(message) => message.encode_raw(buf),
            Self::EncodedEvent(bytes) => {
                encode_key(EVENT_FIELD, WireType::LengthDelimited, buf);
                encode_varint(bytes.len() as u64, buf);
                buf.put_slice(bytes);
            }
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let message = match std::mem::take(self) {
            Self::Message(message) => message,
            encoded @ Self::EncodedEvent(_) => encoded.into_message()?,
        };
        let mut message = message;
        let merged = message.merge_field(tag, wire_type, buf, ctx);
        *self = Self::Message(message);
        merged
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Message(message) => message.encoded_len(),
            Self::EncodedEvent(bytes) => {
                key_len(EVENT_FIELD) + encoded_len_varint(bytes.len() as u64) + bytes.len()
            }
        }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{Heartbeat, TaskEvent, event};

    fn event_message() -> Event {
        Event {
            sequence: 7,
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            payload: Some(event::Payload::TaskEvent(TaskEvent {
                id: "e".into(),
                task_id: "t".into(),
                message: Some("halfway".into()),
                data: "{\"progress\":0.5}".into(),
                sequence: 7,
                ..TaskEvent::default()
            })),
            task_id: Some("t".into()),
            node: true,
            ..Event::default()
        }
    }

    #[test]
    fn an_encoded_event_is_byte_for_byte_the_response_that_carries_it() {
        let event = event_message();
        let response = SubscribeEventsResponse {
            item: Some(Item::Event(event.clone())),
        };
        let frame = SubscribeEventsFrame::EncodedEvent(event.encode_to_vec().into());
        assert_eq!(frame.encoded_len(), response.encoded_len());
        assert_eq!(frame.encode_to_vec(), response.encode_to_vec());
        assert_eq!(
            SubscribeEventsResponse::decode(frame.encode_to_vec().as_slice()).unwrap(),
            response
        );
        assert_eq!(frame.into_message().unwrap(), response);
    }

    #[test]
    fn a_message_frame_encodes_as_its_message() {
        let response = SubscribeEventsResponse {
            item: Some(Item::Heartbeat(Heartbeat { last_sequence: 42 })),
        };
        let frame = SubscribeEventsFrame::from(response.clone());
        assert_eq!(frame.encode_to_vec(), response.encode_to_vec());
    }

    #[test]
    fn decoding_a_frame_yields_the_message() {
        let response = SubscribeEventsResponse {
            item: Some(Item::Event(event_message())),
        };
        let decoded = SubscribeEventsFrame::decode(response.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, SubscribeEventsFrame::Message(response.clone()));
        // Merging into an encoded frame merges into the message it stands for.
        let mut merged = SubscribeEventsFrame::EncodedEvent(event_message().encode_to_vec().into());
        let heartbeat = SubscribeEventsResponse {
            item: Some(Item::Heartbeat(Heartbeat { last_sequence: 1 })),
        };
        merged.merge(heartbeat.encode_to_vec().as_slice()).unwrap();
        assert_eq!(merged, SubscribeEventsFrame::Message(heartbeat));
    }
}
