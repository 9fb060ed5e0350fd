//! A fake ComfyUI 0.33 server for tests, benchmarks and the quick start.
//!
//! It speaks the protocol captured in `shared/comfyui-protocol/` (see its
//! README and VERSIONS): the same routes under `/x` and `/api/x` (the jobs
//! routes only as `/api/jobs…`), the same status codes, content types and
//! JSON shapes (written the way Python's `json.dumps` writes them), the same
//! WebSocket messages in the same order, and the same quirks: the `number`
//! counter that advances on rejected prompts, the raw heap order of
//! `queue_pending`, accepted duplicate prompt ids, partly valid prompts, the
//! broadcast rules for prompts without `client_id`, and the orphaned socket
//! when two sockets share a `clientId`.
//!
//! # Nodes
//!
//! `EmptyImage`, `ImageInvert`, `ImageScale`, `SaveImage`,
//! `SaveImageWebsocket`, `PreviewImage`, `LoadImage` and the capture's test
//! nodes `TestDelay`, `TestFail` and `TestWriteBlob`, with the captured
//! `/object_info` entries. Image nodes really compute small RGB images;
//! SaveImage writes real PNG files as `output/<subfolder>/<prefix>_00001_.png`
//! (the counter continues from the files present). TestDelay sleeps
//! `seconds × time_scale` in `steps` progress steps and stops at once on an
//! interrupt. Unchanged nodes are served from an output cache, as ComfyUI
//! does; `POST /free {"free_memory": true}` clears it.
//!
//! # Control routes
//!
//! Beside the ComfyUI routes the fake serves control routes that no fault
//! blocks:
//!
//! - `POST /__fake/faults` with a JSON object
//!   `{"drop_websockets": bool, "silent": bool, "slow_ms": u64 | null,
//!   "lag_ms": u64 | null, "http_500": bool, "refuse_connections": bool}`:
//!   only the fields given change (`"slow_ms": null` turns the delay off,
//!   `"lag_ms": null` the WebSocket's lag). Answers the current
//!   switches; `GET /__fake/faults` reads them. See [`Faults`] for what each
//!   switch does.
//! - `POST /__fake/restart`: the same as [`FakeComfy::restart`].
//! - `POST /__fake/vram {"used_mb": N}`: sets the memory in use (MiB) that
//!   `/system_stats` reports for the device (`--device-type`, `--vram-total-mb`,
//!   [`FakeOptions::device_type`]); a body of another shape or N above the
//!   total is a 400. Answers `{"device_type", "total_mb", "used_mb"}`, which
//!   `GET /__fake/vram` also reads.
//!
//! # Known differences from ComfyUI
//!
//! - The order of independent output branches is fixed: outputs run in the
//!   prompt's key order (ComfyUI uses hash-set order, which varies), and
//!   `outputs_to_execute`, `executed` and `current_outputs` follow it.
//! - `progress` throttling (100 ms) is scaled by `time_scale` like the
//!   sleeps and measured on TestDelay's scheduled step times, so a fast
//!   test on a busy machine sees the same messages as the capture.
//! - Interrupts take effect at once instead of within ~50 ms.
//! - `/view?preview=` is ignored (the file is sent as is); `bicubic` and
//!   `lanczos` scaling are approximated by bilinear.
//! - A float `number` that is not finite gets a 500 instead of a body with
//!   `NaN`.
//! - Bounds a test can rely on: each socket may have 4096 frames waiting
//!   (a socket that falls further behind is cut), the output cache keeps
//!   1024 results, one image batch may hold 256 MiB (bigger ones fail like
//!   an out-of-memory allocation), link chains deeper than Python's
//!   recursion limit fail validation with a `RecursionError`.
//! - A socket's registry entry is gone by the time its close handshake is
//!   acknowledged, so a client that waited for the close can reconnect with
//!   the same `clientId` without being orphaned.
//! - Not served: `/upload/mask`, the asset routes, `/view_metadata`,
//!   `/extensions` and the frontend's static files.

mod devices;
mod executor;
mod faults;
mod files;
mod hub;
mod image;
mod jobs;
mod nodes;
mod pyjson;
mod queue;
mod redis_server;
mod server;
mod shared;
mod validate;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use devices::DeviceType;
pub use faults::Faults;
pub use redis_server::{REDIS_SERVER_ENV, RedisServer};

use devices::DeviceState;
use faults::FaultState;
use files::Dirs;
use server::{ConnHandle, FakeListener};
use shared::{Settings, Shared};

/// The name of this crate's binary.
pub const BINARY_NAME: &str = "comfy-reality-fake-comfyui";

/// The environment variable that names the fake's binary explicitly.
pub const BINARY_ENV: &str = "COMFY_REALITY_FAKE_COMFYUI";

/// Sends log lines to the running test's captured output (shown when it fails), for the tests
/// of the workspace that run the runtime and this fake in their process. `RUST_LOG` filters,
/// `comfy_reality=info` by default. The subscriber is the process's, installed by the first
/// call: a line goes to the captured output of the test whose thread (or a thread it spawned)
/// logs it.
pub fn capture_test_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("comfy_reality=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

/// Where the fake's binary is, for tests and benchmarks of other crates of the
/// workspace that start it as a process (cargo only tells a package the paths
/// of its own binaries): `$COMFY_REALITY_FAKE_COMFYUI` when set, else next to
/// the running executable in cargo's target folder (`target/<profile>/`, the
/// parent of `deps/`), where `cargo build` / `cargo test` at the workspace root
/// put it.
///
/// # Errors
/// `NotFound`, naming the command that builds it, when it is not there.
pub fn binary_path() -> io::Result<PathBuf> {
    if let Some(path) = std::env::var_os(BINARY_ENV) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let name = format!("{BINARY_NAME}{}", std::env::consts::EXE_SUFFIX);
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(&name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "{name} not found near {}: build it with `cargo build -p {BINARY_NAME}` \
             (with --release for benchmarks) or set {BINARY_ENV}",
            exe.display()
        ),
    ))
}

/// How long [`FakeComfy::shutdown`] waits for connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How to start a [`FakeComfy`].
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// Where SaveImage and TestWriteBlob write (`type=output`); `None`: a
    /// folder in a temporary directory the fake owns and deletes on
    /// shutdown.
    pub output_dir: Option<PathBuf>,
    /// Where uploads go and LoadImage reads (`type=input`); `None`: a folder
    /// the fake owns. The fake adds an `example.png` when it is missing.
    pub input_dir: Option<PathBuf>,
    /// Multiplies TestDelay sleeps (and the progress throttle); `1.0` is
    /// real time, `0.05` makes a 1.5 s TestDelay take 75 ms. Must be finite
    /// and not negative.
    pub time_scale: f64,
    /// The `comfyui_version` that `/system_stats` reports.
    pub version: String,
    /// The kind of device `/system_stats` reports.
    pub device_type: DeviceType,
    /// The device's memory in MiB; `None`: the kind's default (the captured machine's RAM for
    /// the CPU, 24576 for CUDA, 16384 for MPS, 8192 for DirectML). Must be at least 1.
    pub vram_total_mb: Option<u64>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        Self {
            output_dir: None,
            input_dir: None,
            time_scale: 1.0,
            version: "0.33.0".to_owned(),
            device_type: DeviceType::default(),
            vram_total_mb: None,
        }
    }
}

/// A running fake ComfyUI server.
///
/// Dropping it stops the server in the background; [`FakeComfy::shutdown`]
/// stops it and waits for every task it started.
#[derive(Debug)]
pub struct FakeComfy {
    /// The address the listener is bound to.
    addr: SocketAddr,
    /// Everything the server and the worker share.
    shared: Arc<Shared>,
    /// The fault-injection handle.
    faults: Faults,
    /// Cancelled to stop everything.
    shutdown: CancellationToken,
    /// Every task the fake spawned.
    tracker: TaskTracker,
    /// The temporary directory the fake created, removed on shutdown.
    owned_root: Option<PathBuf>,
}

impl FakeComfy {
    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start(options: FakeOptions) -> io::Result<FakeComfy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        Self::start_on(listener, options).await
    }

    /// Starts serving on an already bound listener. Requests can be sent as
    /// soon as this returns (the kernel queues connections until the server
    /// accepts them).
    pub async fn start_on(listener: TcpListener, options: FakeOptions) -> io::Result<FakeComfy> {
        if !options.time_scale.is_finite() || options.time_scale < 0.0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "time_scale must be finite and >= 0, got {}",
                    options.time_scale
                ),
            ));
        }
        if options.vram_total_mb == Some(0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "vram_total_mb must be at least 1",
            ));
        }
        let addr = listener.local_addr()?;
        let (dirs, owned_root) = prepare_dirs(&options)?;
        let device = DeviceState::new(options.device_type, options.vram_total_mb);
        let faults = Arc::new(FaultState::new());
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let settings = Settings {
            time_scale: options.time_scale,
            version: options.version,
        };
        let shared = Arc::new(Shared::new(
            dirs,
            settings,
            faults.clone(),
            shutdown.clone(),
            tracker.clone(),
            addr.port(),
            device,
        ));
        shared.start_worker().await;
        let app = server::router(shared.clone());
        let listener =
            FakeListener::new(listener, faults.clone(), tracker.clone(), shutdown.clone());
        let serve = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<ConnHandle>(),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        tracker.spawn(async move {
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "fake comfyui: server stopped with an error");
            }
        });
        Ok(FakeComfy {
            addr,
            shared,
            faults: Faults::new(faults),
            shutdown,
            tracker,
            owned_root,
        })
    }

    /// The address the fake listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets the GPU memory in use that `/system_stats` reports, in MiB (the same as
    /// `POST /__fake/vram`). Refused above the device's total.
    pub fn set_vram_used_mb(&self, used_mb: u64) -> Result<(), String> {
        self.shared.device.set_used_mb(used_mb)
    }

    /// The folder SaveImage writes to (`type=output`).
    pub fn output_dir(&self) -> &Path {
        &self.shared.dirs.output
    }

    /// The folder uploads go to (`type=input`).
    pub fn input_dir(&self) -> &Path {
        &self.shared.dirs.input
    }

    /// The fault-injection handle.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Behaves like a ComfyUI process restart on the same port: the running
    /// prompt stops without a message, the queue, history, `number` counter
    /// and output cache are lost, and every WebSocket is cut. Files on disk
    /// and fault switches stay.
    pub async fn restart(&self) {
        self.shared.restart().await;
    }

    /// Stops accepting, closes WebSockets with 1001, stops the worker, waits
    /// (up to a few seconds) for every task, and removes the folders the fake
    /// created.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("fake comfyui: tasks still running after the shutdown grace period");
        }
        if let Some(root) = &self.owned_root {
            let _ = tokio::fs::remove_dir_all(root).await;
        }
    }
}

impl Drop for FakeComfy {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(root) = self.owned_root.take() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

/// Creates the folders, returning them and the temporary root the fake owns.
fn prepare_dirs(options: &FakeOptions) -> io::Result<(Dirs, Option<PathBuf>)> {
    let absolute = |p: &Path| -> io::Result<PathBuf> {
        if p.is_absolute() {
            Ok(files::normalize(p))
        } else {
            Ok(files::normalize(&std::env::current_dir()?.join(p)))
        }
    };
    let root = std::env::temp_dir().join(format!(
        "comfy-reality-fake-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let root = absolute(&root)?;
    let output = match &options.output_dir {
        Some(dir) => absolute(dir)?,
        None => root.join("output"),
    };
    let input = match &options.input_dir {
        Some(dir) => absolute(dir)?,
        None => root.join("input"),
    };
    let temp = root.join("temp");
    for dir in [&output, &input, &temp] {
        std::fs::create_dir_all(dir)?;
    }
    let example = input.join("example.png");
    if !example.exists() {
        let pixels: Vec<u8> = (0..16 * 16)
            .flat_map(|i| [(i % 16 * 16) as u8, (i / 16 * 16) as u8, 128])
            .collect();
        let png = image::encode_png(16, 16, image::PngLayout::Rgb, &pixels, &[], false)
            .map_err(io::Error::other)?;
        std::fs::write(&example, png)?;
    }
    Ok((
        Dirs {
            output,
            input,
            temp,
        },
        Some(root),
    ))
}
