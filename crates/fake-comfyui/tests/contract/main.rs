//! Contract tests of the fake ComfyUI (`comfy_reality_fake_comfyui`) against
//! the transcripts captured from a real ComfyUI 0.33 in
//! `../shared/comfyui-protocol/`.
//!
//! Each scenario test replays the recorded client actions over real sockets
//! (reqwest and tokio-tungstenite), waiting before every action until each
//! socket has received as many frames as the recording had at that point
//! (never sleeping for readiness), then compares per socket the sequence of
//! WebSocket messages (runs of progress updates collapse to one step, since
//! their count depends on timing), and per request the status, content
//! type and JSON shape (keys and value types, recursively; ids normalized).
//! Further tests cover each fault switch, the control routes, malformed
//! input and the binary.
//!
//! The tests are split by what they cover: `scenarios` (the transcripts), `behaviour` (what the
//! transcripts do not show), `faults`, `binary`, `properties`; `support` holds what they share.

mod behaviour;
mod binary;
mod faults;
mod properties;
mod scenarios;
mod support;
