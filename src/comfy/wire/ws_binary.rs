//! The binary WebSocket frames: big-endian u32 headers, then a preview image (events 1 and 4) or
//! a node's progress text (event 3).
//!
//! Parsing never panics: a frame inconsistent with its header is a [`WireError`], and an unknown
//! event is kept as sent. Deciding which prompt a frame belongs to is `ws`'s job.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::lenient::{lenient_opt_string, lenient_string};
use super::{NodeId, WireError};

/// Binary event 1: a preview image with no metadata.
pub const EVENT_PREVIEW_IMAGE: u32 = 1;
/// Binary event 3: progress text of a node.
pub const EVENT_TEXT: u32 = 3;
/// Binary event 4: a preview image with its metadata (after negotiating
/// `supports_preview_metadata`).
pub const EVENT_PREVIEW_IMAGE_WITH_METADATA: u32 = 4;

/// Image format of a binary event 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// `1`.
    Jpeg,
    /// `2`.
    Png,
    /// Another code.
    Other(u32),
}

impl ImageFormat {
    fn from_code(code: u32) -> Self {
        match code {
            1 => Self::Jpeg,
            2 => Self::Png,
            other => Self::Other(other),
        }
    }

    /// The MIME type (`application/octet-stream` for unknown codes).
    pub fn mime(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Other(_) => "application/octet-stream",
        }
    }
}

/// The JSON header of a binary event 4.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PreviewMetadata {
    /// The node that produced the preview.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub node_id: Option<NodeId>,
    /// The prompt.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub prompt_id: Option<String>,
    /// The node shown in the UI.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub display_node_id: Option<NodeId>,
    /// The enclosing subgraph node.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub parent_node_id: Option<NodeId>,
    /// The node id in the graph as sent.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub real_node_id: Option<NodeId>,
    /// The image's MIME type (`image/png`).
    #[serde(default, deserialize_with = "lenient_string")]
    pub image_type: String,
}

/// A binary WebSocket frame, read by its big-endian u32 headers.
#[derive(Debug, Clone, PartialEq)]
pub enum BinaryFrame {
    /// Event 1: `[event][image_type][image]`. Carries no prompt or node.
    PreviewImage {
        /// The image's format.
        format: ImageFormat,
        /// The encoded image.
        image: Bytes,
    },
    /// Event 3: `[event][node_id_len][node_id][text]`. Carries the node only.
    Text {
        /// The node.
        node_id: NodeId,
        /// The text.
        text: String,
    },
    /// Event 4: `[event][json_len][json][image]`.
    PreviewImageWithMetadata {
        /// The JSON header.
        metadata: PreviewMetadata,
        /// The encoded image.
        image: Bytes,
    },
    /// Any other event, kept as sent (event 2 is internal and never on the wire).
    Unknown {
        /// The event number.
        event: u32,
        /// The bytes after the event number.
        payload: Bytes,
    },
}

fn read_u32(frame: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = frame.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

impl BinaryFrame {
    /// Parses a binary frame. Never panics; a frame inconsistent with its header is an error.
    pub fn parse(frame: Bytes) -> Result<Self, WireError> {
        let event = read_u32(&frame, 0).ok_or(WireError::ShortFrame {
            len: frame.len(),
            need: 4,
        })?;
        let header = |frame: &Bytes| {
            read_u32(frame, 4).ok_or(WireError::ShortFrame {
                len: frame.len(),
                need: 8,
            })
        };
        match event {
            EVENT_PREVIEW_IMAGE => {
                let code = header(&frame)?;
                Ok(Self::PreviewImage {
                    format: ImageFormat::from_code(code),
                    image: frame.slice(8..),
                })
            }
            EVENT_TEXT | EVENT_PREVIEW_IMAGE_WITH_METADATA => {
                let len = usize::try_from(header(&frame)?).map_err(|_| WireError::Binary {
                    event,
                    message: "length does not fit in memory".into(),
                })?;
                let end = 8usize
                    .checked_add(len)
                    .filter(|end| *end <= frame.len())
                    .ok_or_else(|| WireError::Binary {
                        event,
                        message: format!(
                            "declared {len}-byte header but only {} bytes follow",
                            frame.len().saturating_sub(8)
                        ),
                    })?;
                let head = &frame[8..end];
                if event == EVENT_TEXT {
                    let utf8 = |bytes: &[u8], what: &str| {
                        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| {
                            WireError::Binary {
                                event,
                                message: format!("{what} is not utf-8"),
                            }
                        })
                    };
                    Ok(Self::Text {
                        node_id: utf8(head, "node id")?,
                        text: utf8(&frame[end..], "text")?,
                    })
                } else {
                    let metadata = serde_json::from_slice::<Value>(head)
                        .ok()
                        .filter(Value::is_object)
                        .and_then(|v| serde_json::from_value::<PreviewMetadata>(v).ok())
                        .ok_or_else(|| WireError::Binary {
                            event,
                            message: "metadata is not a json object".into(),
                        })?;
                    Ok(Self::PreviewImageWithMetadata {
                        metadata,
                        image: frame.slice(end..),
                    })
                }
            }
            other => Ok(Self::Unknown {
                event: other,
                payload: frame.slice(4..),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::comfy::wire::test_support::{events, transcripts};

    /// Builds the bytes of a transcript binary frame from its header hex and decoded fields.
    fn frame_bytes(event: &Value) -> Bytes {
        let hex = event["first8_hex"].as_str().unwrap();
        let mut bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let decoded = &event["decoded"];
        let len = usize::try_from(event["len"].as_u64().unwrap()).unwrap();
        match decoded["event_type"].as_u64().unwrap() {
            3 => {
                bytes.extend_from_slice(decoded["node_id"].as_str().unwrap().as_bytes());
                bytes.extend_from_slice(decoded["text"].as_str().unwrap().as_bytes());
            }
            4 => {
                // The JSON text is not stored; re-encode it with Python's separators so the
                // declared length matches.
                let metadata = decoded["metadata"].to_string().replace(",\"", ", \"");
                let metadata = metadata.replace("\":", "\": ");
                bytes.extend_from_slice(metadata.as_bytes());
            }
            _ => {}
        }
        if decoded.get("image_magic_hex").is_some() {
            let magic = decoded["image_magic_hex"].as_str().unwrap();
            bytes.extend(
                (0..magic.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&magic[i..i + 2], 16).unwrap()),
            );
        }
        bytes.resize(len.max(bytes.len()), 0);
        assert_eq!(bytes.len(), len, "rebuilt frame has the recorded length");
        Bytes::from(bytes)
    }

    #[test]
    fn every_transcript_binary_frame_parses_into_its_type() {
        let mut count = 0;
        for (name, t) in transcripts() {
            for e in events(&t)
                .iter()
                .filter(|e| e["kind"] == "ws_recv" && e["binary"] == true)
            {
                count += 1;
                let decoded = &e["decoded"];
                let frame = BinaryFrame::parse(frame_bytes(e))
                    .unwrap_or_else(|err| panic!("{name}: {err}"));
                match (decoded["event_type"].as_u64().unwrap(), frame) {
                    (1, BinaryFrame::PreviewImage { format, image }) => {
                        assert_eq!(format, ImageFormat::Png);
                        assert_eq!(format.mime(), "image/png");
                        assert_eq!(image.len() as u64, decoded["image_len"].as_u64().unwrap());
                        assert_eq!(&image[..8], b"\x89PNG\r\n\x1a\n");
                    }
                    (3, BinaryFrame::Text { node_id, text }) => {
                        assert_eq!(node_id, decoded["node_id"].as_str().unwrap());
                        assert_eq!(text, decoded["text"].as_str().unwrap());
                        assert!(text.starts_with("step "));
                    }
                    (4, BinaryFrame::PreviewImageWithMetadata { metadata, image }) => {
                        let m = &decoded["metadata"];
                        assert_eq!(metadata.prompt_id.as_deref(), m["prompt_id"].as_str());
                        assert_eq!(metadata.node_id.as_deref(), Some("2"));
                        assert_eq!(metadata.parent_node_id, None);
                        assert_eq!(metadata.image_type, "image/png");
                        assert_eq!(image.len() as u64, decoded["image_len"].as_u64().unwrap());
                        assert_eq!(&image[..8], b"\x89PNG\r\n\x1a\n");
                    }
                    (event, frame) => panic!("{name}: event {event} parsed as {frame:?}"),
                }
            }
        }
        assert_eq!(count, 7, "the transcripts hold 7 binary frames");
    }

    #[test]
    fn malformed_binary_frames_are_errors() {
        let cases: &[&[u8]] = &[
            b"",
            b"\x00\x00\x00",
            b"\x00\x00\x00\x01",
            b"\x00\x00\x00\x03\x00\x00",
            b"\x00\x00\x00\x03\x00\x00\x00\x09node",
            b"\x00\x00\x00\x03\xff\xff\xff\xff",
            b"\x00\x00\x00\x03\x00\x00\x00\x01\xff",
            b"\x00\x00\x00\x04\x00\x00\x00\x02{}",
            b"\x00\x00\x00\x04\x00\x00\x00\x03[1]",
            b"\x00\x00\x00\x04\x00\x00\x00\x05{\"a\":",
        ];
        for case in cases {
            let result = BinaryFrame::parse(Bytes::copy_from_slice(case));
            // `{}` is a valid (empty) metadata object; everything else here is malformed.
            if *case == b"\x00\x00\x00\x04\x00\x00\x00\x02{}" {
                assert!(result.is_ok(), "{case:?}");
            } else {
                assert!(result.is_err(), "{case:?} parsed as {result:?}");
            }
        }
        assert_eq!(
            BinaryFrame::parse(Bytes::from_static(b"\x00\x00\x00\x02abc")).unwrap(),
            BinaryFrame::Unknown {
                event: 2,
                payload: Bytes::from_static(b"abc")
            }
        );
        assert_eq!(
            BinaryFrame::parse(Bytes::from_static(b"\x00\x00\x00\x03\x00\x00\x00\x01\x37"))
                .unwrap(),
            BinaryFrame::Text {
                node_id: "7".into(),
                text: String::new()
            }
        );
    }

    proptest! {

        #[test]
        fn binary_parser_never_panics(
            event in 0u32..6,
            len in any::<u32>(),
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut frame = event.to_be_bytes().to_vec();
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&tail);
            let _ = BinaryFrame::parse(Bytes::from(frame.clone()));
            for cut in 0..frame.len().min(10) {
                let _ = BinaryFrame::parse(Bytes::copy_from_slice(&frame[..cut]));
            }
        }

        #[test]
        fn binary_parser_never_panics_on_small_lengths(
            event in prop_oneof![Just(3u32), Just(4u32)],
            len in 0u32..80,
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut frame = event.to_be_bytes().to_vec();
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&tail);
            let _ = BinaryFrame::parse(Bytes::from(frame));
        }

    }
}
