//! Black-box tests of the `comfy-reality` binary as a child process:
//! `serve` on port 0 (the bound address is read from stdout, never waited for
//! with sleeps), `healthcheck`, graceful exit on SIGTERM and SIGINT,
//! `config check` / `config print` error reporting and redaction, JSON logs
//! that carry the caller's request id, and the store's absolute path in the log.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use comfy_reality::pb::CreateTaskRequest;
use comfy_reality::pb::task_service_client::TaskServiceClient;
use tempfile::TempDir;

/// Upper bound on how long the tests wait for the child to say something or
/// to exit. A hang guard, not a timing assertion: healthy runs take
/// milliseconds.
const HANG_GUARD: Duration = Duration::from_secs(20);

/// A command for the binary with a clean configuration environment: no
/// inherited `COMFY_REALITY*` variables, and the data directory in `data`.
fn command(data: &TempDir) -> Command {
    let mut command = common::clean_command();
    command
        .env("COMFY_REALITY__SERVICE__DATA_DIR", data.path())
        .stdin(Stdio::null());
    command
}

/// A running `comfy-reality serve`.
struct ServeProcess {
    /// The child; killed on drop if still running.
    child: Child,
    /// The address printed on stdout.
    addr: SocketAddr,
    /// Collects everything the child writes to stderr.
    stderr: Option<JoinHandle<String>>,
    /// Keeps the data directory alive as long as the child.
    _data: TempDir,
}

impl ServeProcess {
    /// Starts `serve --listen 127.0.0.1:0 <extra>` and reads the bound address
    /// from the first stdout line.
    fn start(extra: &[&str]) -> Self {
        Self::start_with(extra, |_| {})
    }

    /// [`ServeProcess::start`], with `configure` applied to the command last
    /// (to change its working directory or environment).
    fn start_with(extra: &[&str], configure: impl FnOnce(&mut Command)) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let mut command = command(&data);
        configure(&mut command);
        let mut child = command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn comfy-reality serve");

        let stderr = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut text);
            text
        });

        let stdout = child.stdout.take().expect("piped stdout");
        let (first_line, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines_read = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines_read.next() {
                let _ = first_line.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines_read {}
        });
        let line = match lines.recv_timeout(HANG_GUARD) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = stderr.join().unwrap_or_default();
                panic!("no address line on stdout ({e}); stderr:\n{stderr}");
            }
        };
        let addr = line
            .strip_prefix("comfy-reality listening on ")
            .unwrap_or_else(|| panic!("unexpected first stdout line {line:?}"))
            .parse()
            .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
        Self {
            child,
            addr,
            stderr: Some(stderr),
            _data: data,
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits (bounded by the hang guard) for the child to exit.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("server did not exit within {HANG_GUARD:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the child wrote to stderr; call after it exited.
    fn stderr(&mut self) -> String {
        self.stderr
            .take()
            .map(|h| h.join().expect("stderr reader"))
            .unwrap_or_default()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `command` to completion with captured output (see [`common::run_bounded`]).
fn run_bounded(command: &mut Command) -> Output {
    common::run_bounded(command, HANG_GUARD)
}

fn healthcheck(addr: SocketAddr, service: Option<&str>) -> Output {
    let data = tempfile::tempdir().expect("tempdir");
    let mut cmd = command(&data);
    cmd.args(["healthcheck", "--addr", &addr.to_string()]);
    if let Some(service) = service {
        cmd.args(["--service", service]);
    }
    run_bounded(&mut cmd)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write config file");
    path
}

#[test]
fn serve_prints_its_address_and_healthcheck_reports_serving() {
    let mut server = ServeProcess::start(&[]);
    let ok = healthcheck(server.addr, None);
    assert!(
        ok.status.success(),
        "healthcheck failed: {:?}\n{}",
        ok.status,
        text(&ok.stderr)
    );
    assert_eq!(text(&ok.stdout).trim(), "SERVING");

    for service in [
        "readiness",
        "liveness",
        "comfyreality.runtime.v1.TaskService",
    ] {
        let ok = healthcheck(server.addr, Some(service));
        assert!(ok.status.success(), "{service}: {}", text(&ok.stderr));
    }

    let unknown = healthcheck(server.addr, Some("nope"));
    assert!(!unknown.status.success(), "unknown service must fail");
    assert!(
        !text(&unknown.stdout).contains("SERVING"),
        "{}",
        text(&unknown.stdout)
    );

    server.signal("TERM");
    assert!(server.wait_exit().success());
}

#[test]
fn healthcheck_of_a_closed_port_fails() {
    // Bind and drop to get a port nobody listens on.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = healthcheck(addr, None);
    assert!(!output.status.success());
    assert!(!text(&output.stdout).contains("SERVING"));
    // One line naming the address, each cause once.
    let stderr = text(&output.stderr);
    assert!(stderr.contains(&addr.to_string()), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(stderr.matches("tcp connect error").count(), 1, "{stderr}");
}

#[test]
fn sigterm_stops_the_server_with_status_zero() {
    let mut server = ServeProcess::start(&[]);
    server.signal("TERM");
    let status = server.wait_exit();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        server.stderr()
    );
}

#[test]
fn sigint_stops_the_server_with_status_zero() {
    let mut server = ServeProcess::start(&[]);
    server.signal("INT");
    let status = server.wait_exit();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        server.stderr()
    );
}

#[test]
fn config_check_names_an_unknown_key_and_its_file() {
    let data = tempfile::tempdir().unwrap();
    let path = write(
        data.path(),
        "bad.toml",
        "[runtime]\nmax_concurent_tasks = 3\n",
    );
    let output = run_bounded(
        command(&data)
            .args(["config", "check", "--config"])
            .arg(&path),
    );
    let stderr = text(&output.stderr);
    assert!(
        !output.status.success(),
        "an unknown key must fail: {stderr}"
    );
    assert!(stderr.contains("runtime.max_concurent_tasks"), "{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");

    let good = write(
        data.path(),
        "good.toml",
        "[runtime]\nmax_concurrent_tasks = 3\n",
    );
    let output = run_bounded(
        command(&data)
            .args(["config", "check", "--config"])
            .arg(&good),
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[test]
fn config_check_names_a_bad_env_value_and_its_variable() {
    let data = tempfile::tempdir().unwrap();
    let output = run_bounded(
        command(&data)
            .env("COMFY_REALITY__RUNTIME__MAX_CONCURRENT_TASKS", "0")
            .args(["config", "check"]),
    );
    let stderr = text(&output.stderr);
    assert!(
        !output.status.success(),
        "0 concurrent tasks must fail: {stderr}"
    );
    assert!(stderr.contains("runtime.max_concurrent_tasks"), "{stderr}");
    assert!(
        stderr.contains("COMFY_REALITY__RUNTIME__MAX_CONCURRENT_TASKS"),
        "{stderr}"
    );
}

#[test]
fn serve_refuses_an_invalid_configuration() {
    let data = tempfile::tempdir().unwrap();
    let output = run_bounded(
        command(&data)
            .env("COMFY_REALITY__RUNTIME__MAX_CONCURRENT_TASKS", "0")
            .args(["serve", "--listen", "127.0.0.1:0"]),
    );
    assert!(!output.status.success());
    assert!(
        !text(&output.stdout).contains("listening"),
        "{}",
        text(&output.stdout)
    );
    assert!(text(&output.stderr).contains("runtime.max_concurrent_tasks"));
}

#[test]
fn config_print_redacts_secrets() {
    let data = tempfile::tempdir().unwrap();
    let path = write(
        data.path(),
        "secret.toml",
        "[[servers]]\nurl = \"http://comfy:8188\"\napi_key = \"s3cr3t\"\nauth_header = \"Bearer s3cr3t\"\n",
    );
    let output = run_bounded(
        command(&data)
            .args(["config", "print", "--config"])
            .arg(&path),
    );
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stdout.contains("s3cr3t"), "{stdout}");
    assert!(!stderr.contains("s3cr3t"), "{stderr}");
    assert!(stdout.contains("[REDACTED]"), "{stdout}");
    assert!(stdout.contains("http://comfy:8188"), "{stdout}");
}

/// Whether `value` holds a `request_id` field equal to `id` at any depth
/// (the event's own fields or its span's).
fn has_request_id(value: &serde_json::Value, id: &str) -> bool {
    match value {
        serde_json::Value::Object(map) => map.iter().any(|(key, v)| {
            (key == "request_id" && v.as_str() == Some(id)) || has_request_id(v, id)
        }),
        serde_json::Value::Array(items) => items.iter().any(|v| has_request_id(v, id)),
        _ => false,
    }
}

#[test]
fn json_logs_carry_the_callers_request_id() {
    const ID: &str = "it-log-7e1d2f9c";
    let mut server = ServeProcess::start(&["--log-format", "json", "--log-level", "info"]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = server.addr;
    let task_id = runtime.block_on(async move {
        let mut client = TaskServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let mut request = tonic::Request::new(CreateTaskRequest {
            name: "logged".into(),
            ..CreateTaskRequest::default()
        });
        request
            .metadata_mut()
            .insert("x-request-id", ID.parse().unwrap());
        let response = client.create_task(request).await.expect("create task");
        assert_eq!(
            response
                .metadata()
                .get("x-request-id")
                .map(|v| v.to_str().unwrap()),
            Some(ID)
        );
        response.into_inner().task.unwrap().id
    });
    drop(runtime);

    server.signal("TERM");
    assert!(server.wait_exit().success());
    let stderr = server.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines on stderr");
    let mut parsed = Vec::new();
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line:?}"));
        assert!(value.is_object(), "{line}");
        parsed.push(value);
    }
    let tagged: Vec<&serde_json::Value> = parsed.iter().filter(|v| has_request_id(v, ID)).collect();
    assert!(
        !tagged.is_empty(),
        "no log line carries request_id {ID}:\n{stderr}"
    );
    assert!(
        tagged.iter().any(|v| v.to_string().contains(&task_id)),
        "the request's log lines do not name task {task_id}:\n{stderr}"
    );
}

#[test]
fn serve_logs_the_absolute_path_of_a_relative_store() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let mut server = ServeProcess::start_with(
        &["--log-format", "json", "--log-level", "info"],
        |command| {
            // The default data directory: relative, so resolved against the working directory.
            command
                .current_dir(cwd.path())
                .env("COMFY_REALITY__SERVICE__DATA_DIR", "data");
        },
    );
    server.signal("TERM");
    assert!(server.wait_exit().success());
    let stderr = server.stderr();
    let expected = cwd
        .path()
        .canonicalize()
        .expect("canonical working directory")
        .join("data")
        .join("comfy-reality.db");
    let logged: Vec<String> = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"] == "durable store opened")
        .filter_map(|line| line["path"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        logged,
        [expected.display().to_string()],
        "the store's path must be logged once, absolute:\n{stderr}"
    );
}

#[test]
fn healthcheck_without_addr_probes_the_configured_listen_address() {
    let mut server = ServeProcess::start(&[]);
    let data = tempfile::tempdir().expect("tempdir");
    // The configured address is the unspecified one, as in the container image;
    // healthcheck asks on loopback at the same port.
    let listen = format!("0.0.0.0:{}", server.addr.port());
    let ok = run_bounded(
        command(&data)
            .env("COMFY_REALITY__SERVICE__LISTEN", &listen)
            .env("COMFY_REALITY__AUTH__ALLOW_ANONYMOUS", "true")
            .arg("healthcheck"),
    );
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert_eq!(text(&ok.stdout).trim(), "SERVING");

    let bad_timeout = run_bounded(command(&data).args([
        "healthcheck",
        "--addr",
        &server.addr.to_string(),
        "--timeout",
        "inf",
    ]));
    assert!(!bad_timeout.status.success());
    assert!(
        text(&bad_timeout.stderr).contains("--timeout"),
        "{}",
        text(&bad_timeout.stderr)
    );
    server.signal("TERM");
    assert!(server.wait_exit().success());
}

#[test]
fn serve_runs_the_configured_number_of_async_threads() {
    for (threads, expected) in [(None, 1), (Some("3"), 3)] {
        let mut server = ServeProcess::start_with(&[], |command| {
            command.env("COMFY_REALITY__RUNTIME__LOG_FORMAT", "json");
            if let Some(threads) = threads {
                command.env("COMFY_REALITY__SERVICE__WORKER_THREADS", threads);
            }
        });
        // Served by those threads: a call answers.
        let ok = healthcheck(server.addr, Some("readiness"));
        assert!(ok.status.success(), "{}", text(&ok.stderr));
        server.signal("TERM");
        assert!(server.wait_exit().success());
        let logs = server.stderr();
        let serving = logs
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|line| line["message"] == "serving gRPC")
            .unwrap_or_else(|| panic!("no \"serving gRPC\" line in {logs}"));
        assert_eq!(
            serving["worker_threads"], expected,
            "service.worker_threads = {threads:?}: {serving}"
        );
    }
}
#[test]
fn serve_refuses_too_many_async_threads_naming_the_key() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = run_bounded(
        command(&data)
            .env("COMFY_REALITY__SERVICE__WORKER_THREADS", "5000")
            .args(["serve", "--listen", "127.0.0.1:0"]),
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("service.worker_threads"), "{stderr}");
}
