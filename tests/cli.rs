//! The client commands of the `comfy-reality` binary as a user runs them:
//! a fake ComfyUI (in process) and the real `serve` binary on port 0 (its
//! address read from stdout), then `submit`, `watch`, `get`, `list`,
//! `cancel`, `events`, `workflows` and `artifacts get` as child processes,
//! their text and JSON output and their exit codes. Waits are on printed
//! lines and process exits; the only timeouts are hang guards.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use comfy_reality_fake_comfyui::{FakeComfy, FakeOptions};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::runtime::Runtime;

/// Upper bound on waiting for a child to print or exit. A hang guard, not
/// a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// A fake ComfyUI, the real server in front of it, and a scratch folder.
struct Env {
    /// Runs the fake.
    rt: Runtime,
    /// The fake; `None` once shut down.
    fake: Option<FakeComfy>,
    /// `comfy-reality serve`; killed on drop.
    server: Child,
    /// The server's gRPC address.
    addr: SocketAddr,
    /// Workflow files, downloads, and the server's data.
    dir: TempDir,
}

impl Env {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let fake = rt
            .block_on(FakeComfy::start(FakeOptions::default()))
            .expect("fake ComfyUI starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let (server, addr) = serve(dir.path(), &fake.base_url(), "127.0.0.1:0");
        Self {
            rt,
            fake: Some(fake),
            server,
            addr,
            dir,
        }
    }

    /// Waits (bounded) until the server's backend is up with its node
    /// catalogue read.
    fn wait_backend_catalogue(&self) {
        use comfy_reality::pb::admin_service_client::AdminServiceClient;
        let endpoint = format!("http://{}", self.addr);
        self.rt.block_on(async {
            let mut client = AdminServiceClient::connect(endpoint)
                .await
                .expect("connect to the server");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let info = client
                    .get_runtime_info(comfy_reality::pb::GetRuntimeInfoRequest::default())
                    .await
                    .expect("GetRuntimeInfo")
                    .into_inner();
                if info.backends.iter().any(|b| b.node_classes > 0) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "the backend never came up: {info:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    /// Stops the server with SIGTERM and starts it again on the same address
    /// and data folder, as an operator's restart would (the fake restarts in
    /// between).
    fn restart_server(&mut self) {
        // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
        let pid = libc::pid_t::try_from(self.server.id()).expect("a pid");
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + HANG_GUARD;
        let status = loop {
            if let Some(status) = self.server.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "the server stopped with {status}");
        // The fake restarts too, as after a machine restart: a ComfyUI that has
        // not yet noticed the old socket's close would orphan the new server's
        // socket under the same client id (ComfyUI's own quirk), which is not
        // what this test is about.
        self.rt.block_on(self.fake().restart());
        let (server, addr) = serve(
            self.dir.path(),
            &self.fake().base_url(),
            &self.addr.to_string(),
        );
        assert_eq!(addr, self.addr);
        self.server = server;
    }

    fn fake(&self) -> &FakeComfy {
        self.fake.as_ref().expect("fake running")
    }

    /// A client command with `--server` before the subcommand.
    fn command(&self) -> Command {
        let mut command = common::clean_command();
        command
            .current_dir(self.dir.path())
            .arg("--server")
            .arg(self.addr.to_string())
            .stdin(Stdio::null());
        command
    }

    /// Runs `comfy-reality --server ADDR ARGS...` to its end.
    fn run(&self, args: &[&str]) -> Output {
        run_bounded(self.command().args(args))
    }

    /// Writes `workflow` into the scratch folder and returns its path.
    fn write(&self, name: &str, workflow: &Value) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, workflow.to_string()).expect("write workflow");
        path.to_str().expect("utf-8 path").to_owned()
    }

    /// Submits `workflow` and returns the execution id.
    fn submit(&self, workflow: &Value, extra: &[&str]) -> String {
        let file = self.write("submitted.json", workflow);
        let mut args = vec!["submit", file.as_str(), "--output", "json"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        json_lines(&out.stdout)[0]["id"]
            .as_str()
            .expect("an id")
            .to_owned()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        if let Some(fake) = self.fake.take() {
            self.rt.block_on(fake.shutdown());
        }
    }
}

/// Starts `comfy-reality serve` on `listen` in front of `comfyui`, its data in
/// `dir/data`; returns the process and its address once it printed it.
fn serve(dir: &Path, comfyui: &str, listen: &str) -> (Child, SocketAddr) {
    let mut server = common::clean_command()
        .env("COMFY_REALITY__SERVICE__DATA_DIR", dir.join("data"))
        .args([
            "serve",
            "--listen",
            listen,
            "--metrics-listen",
            "127.0.0.1:0",
            "--comfyui",
            comfyui,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn comfy-reality serve");
    let lines = line_reader(server.stdout.take().expect("piped stdout"));
    let first = next_line(&lines, &mut server);
    let addr = first
        .strip_prefix("comfy-reality listening on ")
        .unwrap_or_else(|| panic!("unexpected first stdout line {first:?}"))
        .parse()
        .expect("an address");
    (server, addr)
}

fn line_reader(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

fn next_line(lines: &mpsc::Receiver<String>, child: &mut Child) -> String {
    match lines.recv_timeout(HANG_GUARD) {
        Ok(line) => line,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no line on stdout ({e})");
        }
    }
}

/// Runs `command` to completion with captured output, killing it (and
/// failing) if it is still running after the hang guard.
fn run_bounded(command: &mut Command) -> Output {
    common::run_bounded(command, HANG_GUARD)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json_lines(bytes: &[u8]) -> Vec<Value> {
    text(bytes)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// EmptyImage -> ImageInvert -> SaveImage, and a short TestDelay; `color`
/// also names the saved file (`cli<color>_00001_.png`), so that files of
/// different runs never share a name.
fn image_workflow(color: u32) -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": color}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": format!("cli{color}")}},
        "4": {"class_type": "TestDelay", "inputs": {"seconds": 0.2, "steps": 2, "nonce": color}}
    })
}

fn slow_workflow() -> Value {
    json!({"1": {"class_type": "TestDelay", "inputs": {"seconds": 60, "steps": 120, "nonce": 7}}})
}

/// The file named `name` somewhere under `dir`.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}

#[test]
fn submit_then_get_and_list_in_text_and_json() {
    let env = Env::start();
    let id = env.submit(
        &image_workflow(1),
        &[
            "--priority",
            "High",
            "--tag",
            "cli-a",
            "--tag",
            "cli-b",
            "--name",
            "first",
        ],
    );

    let out = env.run(&["get", &id, "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let execution = &json_lines(&out.stdout)[0];
    assert_eq!(execution["id"], id.as_str());
    assert_eq!(execution["priority"], "TASK_PRIORITY_HIGH");
    let tags: Vec<&str> = execution["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        tags.contains(&"cli-a") && tags.contains(&"cli-b"),
        "{tags:?}"
    );

    let out = env.run(&["get", &id]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("id:        {id}")), "{stdout}");
    assert!(stdout.contains("priority:  HIGH"), "{stdout}");
    assert!(stdout.contains("name:      first"), "{stdout}");

    let other = env.submit(&image_workflow(2), &["--priority", "TASK_PRIORITY_LOW"]);
    let out = env.run(&["list", "--tag", "cli-a", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let ids: Vec<String> = json_lines(&out.stdout)
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids, vec![id.clone()]);

    let out = env.run(&["list", "--all", "--page-size", "1"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("ID "), "{stdout}");
    assert!(stdout.contains(&id) && stdout.contains(&other), "{stdout}");
}

#[test]
fn submit_watch_ends_with_the_artifacts_and_download_saves_them() {
    let env = Env::start();
    let file = env.write("image.json", &image_workflow(3));
    let out = env.run(&["submit", &file, "--watch"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("node PROGRESS"), "{stdout}");
    assert!(stdout.contains("task COMPLETED"), "{stdout}");
    let last_lines: Vec<&str> = stdout.lines().rev().take(2).collect();
    assert!(
        last_lines[0].starts_with("  artifact cli3_") && last_lines[0].ends_with(".png"),
        "{stdout}"
    );
    assert!(last_lines[1].contains(" COMPLETED in "), "{stdout}");

    let file = env.write("image2.json", &image_workflow(4));
    let downloads = env.dir.path().join("downloads");
    let out = env.run(&[
        "submit",
        &file,
        "--download",
        downloads.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let saved: Vec<PathBuf> = std::fs::read_dir(&downloads)
        .expect("downloads folder")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    let name = saved[0]
        .file_name()
        .expect("a name")
        .to_str()
        .expect("utf-8");
    let original = find_file(env.fake().output_dir(), name).expect("the fake's file");
    assert_eq!(
        std::fs::read(&saved[0]).expect("saved"),
        std::fs::read(original).expect("original")
    );
    assert!(
        text(&out.stdout).contains("saved "),
        "{}",
        text(&out.stdout)
    );

    // artifacts get: all into a folder, and one by path into a file.
    let id = env.submit(&image_workflow(5), &[]);
    let out = env.run(&["watch", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all = env.dir.path().join("all");
    let out = env.run(&["artifacts", "get", &id, "-o", all.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let saved: Vec<PathBuf> = std::fs::read_dir(&all)
        .expect("folder")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(saved.len(), 1);
    let name = saved[0]
        .file_name()
        .expect("a name")
        .to_str()
        .expect("utf-8");
    let one = env.dir.path().join("one.png");
    let out = env.run(&[
        "artifacts",
        "get",
        &id,
        name,
        "-o",
        one.to_str().expect("utf-8"),
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json_lines(&out.stdout)[0]["artifact"], name);
    assert_eq!(
        std::fs::read(&one).expect("one"),
        std::fs::read(&saved[0]).expect("all")
    );
    assert!(std::fs::read(&one).expect("one").starts_with(b"\x89PNG"));
}

#[test]
fn off_a_terminal_watch_prints_plain_lines_whatever_the_ui_settings() {
    // stdout is a pipe here: the live view is never drawn, even with the UI
    // enabled in the configuration and colours not forbidden.
    let env = Env::start();
    let file = env.write("plain.json", &image_workflow(5));
    for no_color in [false, true] {
        let mut command = env.command();
        command
            .env("COMFY_REALITY__RUNTIME__ENABLE_UI", "true")
            .env("COMFY_REALITY__RUNTIME__UI_UPDATE_INTERVAL_SECONDS", "0.05")
            .args(["submit", &file, "--watch"]);
        if no_color {
            command.env("NO_COLOR", "1");
        } else {
            command.env_remove("NO_COLOR");
        }
        let out = run_bounded(&mut command);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(!stdout.contains('\x1b'), "{stdout:?}");
        assert!(!stdout.contains('█') && !stdout.contains('░'), "{stdout}");
        let lines: Vec<&str> = stdout.lines().collect();
        let (events, ending) = lines.split_at(lines.len() - 2);
        assert!(!events.is_empty(), "{stdout}");
        for line in events {
            assert!(line.starts_with('#'), "not an event line: {line:?}");
        }
        assert!(ending[0].starts_with("execution ") && ending[0].contains(" COMPLETED in "));
        assert!(ending[1].starts_with("  artifact "), "{stdout}");
    }
}

#[test]
fn a_failing_workflow_exits_1() {
    let env = Env::start();
    // TestFail is an output node only by the backend's object_info: submit
    // once the backend's node catalogue is known (before it, the name-based
    // check would refuse the graph).
    env.wait_backend_catalogue();
    let file = env.write(
        "fail.json",
        &json!({"1": {"class_type": "TestFail", "inputs": {"message": "boom"}}}),
    );
    let out = env.run(&["submit", &file, "--watch", "--max-retries", "0"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(" FAILED"), "{stdout}");
    assert!(stdout.contains("boom"), "{stdout}");
}

#[test]
fn a_cancel_from_another_process_shows_up_in_watch() {
    let env = Env::start();
    let id = env.submit(&slow_workflow(), &[]);
    let mut watch = env
        .command()
        .args(["watch", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn watch");
    let lines = line_reader(watch.stdout.take().expect("piped stdout"));
    // The watcher is live once it printed an event of the running node.
    let first = next_line(&lines, &mut watch);
    assert!(first.contains(&format!("execution={id}")), "{first}");

    let out = env.run(&["cancel", &id, "--reason", "enough"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with(&format!("execution {id} ")));

    let mut rest = Vec::new();
    let deadline = Instant::now() + HANG_GUARD;
    while let Ok(line) = lines.recv_timeout(HANG_GUARD) {
        rest.push(line);
        assert!(Instant::now() < deadline, "watch did not end");
    }
    let status = watch.wait().expect("watch exits");
    assert_eq!(status.code(), Some(1), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("task CANCELLED")),
        "{rest:?}"
    );
    assert!(
        rest.last()
            .is_some_and(|l| l == &format!("execution {id} CANCELLED")
                || l.starts_with(&format!("execution {id} CANCELLED "))),
        "{rest:?}"
    );
}

#[test]
fn a_64_bit_override_arrives_exactly() {
    let env = Env::start();
    let file = env.write("slowish.json", &image_workflow(6));
    let out = env.run(&[
        "submit",
        &file,
        "--set",
        "4.nonce=18446744073709551615",
        "--watch",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let url = format!("{}/history", env.fake().base_url());
    let body = env.rt.block_on(async {
        reqwest::get(url)
            .await
            .expect("history")
            .text()
            .await
            .expect("body")
    });
    let history: Value = serde_json::from_str(&body).expect("json");
    let nonces: Vec<String> = history
        .as_object()
        .expect("an object")
        .values()
        .map(|entry| entry["prompt"][2]["4"]["inputs"]["nonce"].to_string())
        .collect();
    assert_eq!(nonces, vec!["18446744073709551615".to_owned()], "{body}");
}

#[test]
fn refusals_exit_4_with_the_code_and_the_field_path() {
    let env = Env::start();
    let file = env.write(
        "bad.json",
        &json!({"1": {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}}}),
    );
    let out = env.run(&["submit", &file]);
    assert_eq!(out.status.code(), Some(4));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("INVALID_ARGUMENT"), "{stderr}");
    assert!(
        stderr.contains("  workflow_json[\"1\"].inputs.images: "),
        "{stderr}"
    );

    let out = env.run(&["get", "no-such-execution"]);
    assert_eq!(out.status.code(), Some(4));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("NOT_FOUND"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn an_unreachable_server_exits_3_with_one_line() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let out = run_bounded(
        common::clean_command()
            .args(["list", "--server", &addr])
            .stdin(Stdio::null()),
    );
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn the_server_flag_goes_after_the_subcommand_or_comes_from_the_environment() {
    let env = Env::start();
    let addr = env.addr.to_string();
    let out = run_bounded(
        common::clean_command()
            .args(["list", "--output", "json", "--server", &addr])
            .stdin(Stdio::null()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run_bounded(
        common::clean_command()
            .args(["list"])
            .env("COMFY_REALITY_SERVER", format!("http://{addr}"))
            .stdin(Stdio::null()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("ID "));
}

#[test]
fn workflows_register_list_get_validate_delete() {
    let env = Env::start();
    let file = env.write("wf.json", &image_workflow(7));
    let out = env.run(&[
        "workflows",
        "register",
        &file,
        "--name",
        "cli-demo",
        "--version",
        "1.2.3",
        "--description",
        "from the CLI",
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let registered = &json_lines(&out.stdout)[0];
    let id = registered["id"].as_str().expect("id").to_owned();
    assert_eq!(registered["version"], "1.2.3");
    assert_eq!(registered["name"], "cli-demo");

    let out = env.run(&["workflows", "list", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        json_lines(&out.stdout)
            .iter()
            .any(|w| w["id"] == id.as_str())
    );
    let out = env.run(&["workflows", "list"]);
    assert!(text(&out.stdout).contains("cli-demo"));

    let out = env.run(&["workflows", "get", &id, "--version", "1.2.3"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("description: from the CLI"), "{stdout}");
    assert!(stdout.contains("  2 ImageInvert"), "{stdout}");

    let out = env.run(&["workflows", "validate", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("valid\n"));
    let out = env.run(&[
        "workflows",
        "validate",
        "--id",
        &id,
        "--set",
        "4.nonce=3",
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json_lines(&out.stdout)[0]["valid"], true);
    let bad = env.write(
        "bad.json",
        &json!({"1": {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}}}),
    );
    let out = env.run(&["workflows", "validate", &bad]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains("workflow_json[\"1\"].inputs.images")
            || text(&out.stderr).contains("workflow_json[\"1\"].inputs.images"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let out = env.run(&["workflows", "delete", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("deleted {id} 1.2.3\n"));
    let out = env.run(&["workflows", "get", &id]);
    assert_eq!(out.status.code(), Some(4));
    assert!(text(&out.stderr).contains("NOT_FOUND"));
}

#[test]
fn events_lists_what_is_retained_and_follows_after_a_sequence() {
    let env = Env::start();
    let id = env.submit(&image_workflow(8), &[]);
    assert_eq!(env.run(&["watch", &id]).status.code(), Some(0));

    let out = env.run(&["events", "--execution", &id, "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let events = json_lines(&out.stdout);
    assert!(events.len() >= 3, "{events:?}");
    let sequences: Vec<u64> = events
        .iter()
        .map(|e| {
            e["sequence"]
                .as_str()
                .expect("a string")
                .parse()
                .expect("u64")
        })
        .collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    assert!(events.iter().all(|e| e["executionId"] == id.as_str()));

    let out = env.run(&["events", "--node-events", "--type", "completed"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("node COMPLETED"), "{stdout}");
    assert!(!stdout.contains("STARTED"), "{stdout}");

    let after = sequences[0];
    let mut follow = env
        .command()
        .args([
            "events",
            "--follow",
            "--after",
            &after.to_string(),
            "--execution",
            &id,
            "--output",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn events --follow");
    let lines = line_reader(follow.stdout.take().expect("piped stdout"));
    let mut followed = Vec::new();
    while followed.len() < sequences.len() - 1 {
        let line = next_line(&lines, &mut follow);
        let event: Value = serde_json::from_str(&line).expect("json");
        followed.push(
            event["sequence"]
                .as_str()
                .expect("a string")
                .parse::<u64>()
                .expect("u64"),
        );
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(followed, sequences[1..]);
}

#[test]
fn events_follow_resumes_after_a_restart_of_the_server_without_a_gap() {
    let mut env = Env::start();
    let mut follow = env
        .command()
        .args(["events", "--follow", "--after", "0", "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn events --follow");
    let lines = line_reader(follow.stdout.take().expect("piped stdout"));
    let sequence = |event: &Value| -> u64 {
        event["sequence"]
            .as_str()
            .expect("a string")
            .parse()
            .expect("u64")
    };
    // Reads followed events until one is about `execution`.
    let mut followed: Vec<u64> = Vec::new();
    let mut read_until = |follow: &mut Child, execution: &str| loop {
        let event: Value = serde_json::from_str(&next_line(&lines, follow)).expect("json");
        followed.push(sequence(&event));
        if event["executionId"] == execution {
            break;
        }
    };
    let before = env.submit(&image_workflow(21), &[]);
    assert_eq!(env.run(&["watch", &before]).status.code(), Some(0));
    read_until(&mut follow, &before);

    env.restart_server();
    let after = env.submit(&image_workflow(22), &[]);
    assert_eq!(env.run(&["watch", &after]).status.code(), Some(0));
    read_until(&mut follow, &after);
    let _ = follow.kill();
    let _ = follow.wait();

    // Every retained event up to the last one followed, each once, in order.
    let out = env.run(&["events", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let last = *followed.last().expect("followed events");
    let retained: Vec<u64> = json_lines(&out.stdout)
        .iter()
        .map(sequence)
        .filter(|s| *s <= last)
        .collect();
    assert_eq!(
        followed, retained,
        "a gap or a duplicate across the restart"
    );
}
