//! The fake as its binary: it serves, and stops on SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[test]
fn binary_serves_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let output = std::env::temp_dir().join(format!(
        "fake-comfyui-bin-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_comfy-reality-fake-comfyui"))
        .args([
            "--port",
            "0",
            "--time-scale",
            "0.05",
            "--http-500",
            "--output-dir",
        ])
        .arg(&output)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the fake");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok);
        let _ = tx.send(first);
        lines.map_while(Result::ok).collect::<Vec<String>>()
    });
    let line = rx
        .recv_timeout(HANG_GUARD)
        .expect("a line on stdout")
        .expect("first line");
    let base = line
        .strip_prefix("comfy-reality-fake-comfyui listening on ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Started with the --http-500 fault: every route fails until the control
    // route turns it off.
    let (failing, stats) = runtime.block_on(async {
        let http = Http::new(&base);
        let failing = http.get("/system_stats").await;
        let off = http
            .post("/__fake/faults", &json!({"http_500": false}))
            .await;
        assert_eq!(off.status, 200);
        (failing, http.get("/system_stats").await)
    });
    assert_eq!(failing.status, 500);
    assert_eq!(stats.status, 200);
    assert_eq!(stats.json()["system"]["comfyui_version"], "0.33.0");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let deadline = std::time::Instant::now() + HANG_GUARD;
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the fake did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(exit.success(), "exit status {exit}");
    let rest = reader.join().expect("reader");
    assert!(rest.is_empty(), "exactly one line on stdout, then {rest:?}");
    let _ = std::fs::remove_dir_all(output);
}
