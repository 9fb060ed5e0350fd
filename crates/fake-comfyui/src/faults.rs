//! Fault injection for the fake ComfyUI: the switches a test flips to make
//! the fake misbehave the way a real backend does (WebSockets that drop,
//! a server that goes quiet, slow or failing HTTP, refused connections).
//!
//! This module only holds the switches and notifies whoever must act on a
//! change; the server and the WebSocket hub read them. It never touches the
//! queue or the executor.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

/// The fault switches shared by the server, the hub and every handle.
#[derive(Debug)]
pub(crate) struct FaultState {
    /// Close every WebSocket now and refuse new ones while set.
    drop_websockets: AtomicBool,
    /// Run prompts but send no WebSocket frame at all.
    silent: AtomicBool,
    /// Delay of every HTTP answer, in microseconds; 0 when off.
    slow_micros: AtomicU64,
    /// Delay of every WebSocket frame, in microseconds; 0 when off.
    lag_micros: AtomicU64,
    /// Every non-control HTTP route answers 500.
    http_500: AtomicBool,
    /// New TCP connections are closed at once; pooled ones die on their next request.
    refuse_connections: AtomicBool,
    /// Bumped whenever every open WebSocket must be dropped.
    drop_generation: watch::Sender<u64>,
    /// Serializes updates so the "drop now" side effects follow their flag.
    update: Mutex<()>,
}

impl FaultState {
    /// All faults off.
    pub(crate) fn new() -> Self {
        Self {
            drop_websockets: AtomicBool::new(false),
            silent: AtomicBool::new(false),
            slow_micros: AtomicU64::new(0),
            lag_micros: AtomicU64::new(0),
            http_500: AtomicBool::new(false),
            refuse_connections: AtomicBool::new(false),
            drop_generation: watch::Sender::new(0),
            update: Mutex::new(()),
        }
    }

    /// Whether WebSockets are being dropped and refused.
    pub(crate) fn drop_websockets(&self) -> bool {
        self.drop_websockets.load(Ordering::SeqCst)
    }

    /// Whether the fake sends no WebSocket frame.
    pub(crate) fn silent(&self) -> bool {
        self.silent.load(Ordering::SeqCst)
    }

    /// The delay added to every HTTP answer, if any.
    pub(crate) fn slow(&self) -> Option<Duration> {
        match self.slow_micros.load(Ordering::SeqCst) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// How late every WebSocket frame is sent, if at all.
    pub(crate) fn lag(&self) -> Option<Duration> {
        match self.lag_micros.load(Ordering::SeqCst) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// Whether HTTP routes answer 500.
    pub(crate) fn http_500(&self) -> bool {
        self.http_500.load(Ordering::SeqCst)
    }

    /// Whether connections are refused.
    pub(crate) fn refuse_connections(&self) -> bool {
        self.refuse_connections.load(Ordering::SeqCst)
    }

    /// A receiver that changes whenever every open WebSocket must close.
    pub(crate) fn drop_signal(&self) -> watch::Receiver<u64> {
        self.drop_generation.subscribe()
    }

    /// Tells every open WebSocket to close now.
    pub(crate) fn drop_all_websockets(&self) {
        self.drop_generation
            .send_modify(|generation| *generation += 1);
    }

    /// Applies the fields that `update` sets, in a fixed order.
    pub(crate) fn apply(&self, update: &FaultUpdate) {
        let _guard = self.update.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(on) = update.drop_websockets {
            self.drop_websockets.store(on, Ordering::SeqCst);
            if on {
                self.drop_all_websockets();
            }
        }
        if let Some(on) = update.silent {
            self.silent.store(on, Ordering::SeqCst);
        }
        if let Some(slow) = update.slow_ms {
            let micros = slow.map(|ms| ms.saturating_mul(1000)).unwrap_or(0);
            self.slow_micros.store(micros, Ordering::SeqCst);
        }
        if let Some(lag) = update.lag_ms {
            let micros = lag.map(|ms| ms.saturating_mul(1000)).unwrap_or(0);
            self.lag_micros.store(micros, Ordering::SeqCst);
        }
        if let Some(on) = update.http_500 {
            self.http_500.store(on, Ordering::SeqCst);
        }
        if let Some(on) = update.refuse_connections {
            self.refuse_connections.store(on, Ordering::SeqCst);
            if on {
                self.drop_all_websockets();
            }
        }
    }

    /// The current switches, as the control route reports them.
    pub(crate) fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "drop_websockets": self.drop_websockets(),
            "silent": self.silent(),
            "slow_ms": self.slow().map(|d| d.as_millis() as u64),
            "lag_ms": self.lag().map(|d| d.as_millis() as u64),
            "http_500": self.http_500(),
            "refuse_connections": self.refuse_connections(),
        })
    }
}

/// A partial update of the fault switches: the body of `POST /__fake/faults`.
/// Absent fields keep their value; `slow_ms: null` turns the delay off.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultUpdate {
    /// See [`Faults::set_drop_websockets`].
    #[serde(default)]
    pub(crate) drop_websockets: Option<bool>,
    /// See [`Faults::set_silent`].
    #[serde(default)]
    pub(crate) silent: Option<bool>,
    /// See [`Faults::set_slow`]; `Some(None)` is an explicit `null`.
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) slow_ms: Option<Option<u64>>,
    /// See [`Faults::set_lag`]; `Some(None)` is an explicit `null`.
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) lag_ms: Option<Option<u64>>,
    /// See [`Faults::set_http_500`].
    #[serde(default)]
    pub(crate) http_500: Option<bool>,
    /// See [`Faults::set_refuse_connections`].
    #[serde(default)]
    pub(crate) refuse_connections: Option<bool>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, D>(deserializer: D) -> Result<Option<Option<u64>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<u64>::deserialize(deserializer).map(Some)
}

/// The fault-injection handle of a [`FakeComfy`](super::FakeComfy).
///
/// Every switch takes effect at once and stays until changed. The same
/// switches can be flipped over HTTP with `POST /__fake/faults` (see the
/// module documentation), which keeps working while `http_500` or `slow`
/// are on.
#[derive(Debug, Clone)]
pub struct Faults {
    /// The switches, shared with the server.
    state: Arc<FaultState>,
}

impl Faults {
    /// Wraps the shared switches.
    pub(crate) fn new(state: Arc<FaultState>) -> Self {
        Self { state }
    }

    /// `true`: closes every open WebSocket now (the TCP connection is cut
    /// without a close frame) and cuts every new WebSocket handshake while
    /// set. `false`: accepts WebSockets again.
    pub fn set_drop_websockets(&self, on: bool) {
        self.state.apply(&FaultUpdate {
            drop_websockets: Some(on),
            ..FaultUpdate::default()
        });
    }

    /// Closes every open WebSocket now, once; new ones are accepted.
    pub fn drop_websockets_once(&self) {
        self.state.drop_all_websockets();
    }

    /// `true`: prompts keep running and HTTP keeps answering, but no
    /// WebSocket frame is sent at all (not even the first `status`).
    /// Frames skipped while silent are lost, as on a stalled proxy.
    pub fn set_silent(&self, on: bool) {
        self.state.apply(&FaultUpdate {
            silent: Some(on),
            ..FaultUpdate::default()
        });
    }

    /// Delays every HTTP answer (control routes aside, the WebSocket
    /// handshake included) by `delay`; `None` removes the delay. The request
    /// is handled first and only its answer waits, so a client that gives
    /// up may still have queued its prompt.
    pub fn set_slow(&self, delay: Option<Duration>) {
        self.set_delay(&self.state.slow_micros, delay);
    }

    /// Sends every WebSocket frame `lag` after it was made (real time, not
    /// scaled by the fake's time scale), in order, as over a slow proxy or link
    /// between ComfyUI and its client; `None` removes the lag. Prompts run and
    /// HTTP answers as before: `/queue` and `/history` can show a prompt
    /// running or done before its client hears so. A socket waiting out a
    /// frame's lag reads nothing from its client meanwhile, and a frame already
    /// waiting keeps the lag it was taken with.
    pub fn set_lag(&self, lag: Option<Duration>) {
        self.set_delay(&self.state.lag_micros, lag);
    }

    /// Stores `delay` in microseconds (0: none) into `slot`, one of the state's
    /// delays, as an update (serialized with the others).
    fn set_delay(&self, slot: &AtomicU64, delay: Option<Duration>) {
        let micros = delay.map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let _guard = self
            .state
            .update
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        slot.store(micros, Ordering::SeqCst);
    }

    /// `true`: every HTTP route (control routes aside, the WebSocket
    /// handshake included) answers `500 Internal Server Error` in
    /// `text/plain`, like aiohttp does for an unhandled exception.
    pub fn set_http_500(&self, on: bool) {
        self.state.apply(&FaultUpdate {
            http_500: Some(on),
            ..FaultUpdate::default()
        });
    }

    /// `true`: newly accepted TCP connections are closed at once, pooled
    /// keep-alive connections are cut on their next request, and open
    /// WebSockets are dropped. Connections whose first request is a control
    /// route (`POST /__fake/…`) still get through, so the fault can be
    /// turned off over HTTP.
    pub fn set_refuse_connections(&self, on: bool) {
        self.state.apply(&FaultUpdate {
            refuse_connections: Some(on),
            ..FaultUpdate::default()
        });
    }

    /// Turns every fault off.
    pub fn clear(&self) {
        self.state.apply(&FaultUpdate {
            drop_websockets: Some(false),
            silent: Some(false),
            slow_ms: Some(None),
            lag_ms: Some(None),
            http_500: Some(false),
            refuse_connections: Some(false),
        });
    }
}
