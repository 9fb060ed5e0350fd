//! Contract of the fake's devices: `/system_stats` reports the device chosen with
//! `--device-type` / `--vram-total-mb` (or [`FakeOptions`]) in the shape ComfyUI gives each
//! kind of torch device, and `POST /__fake/vram` moves the memory in use it reports.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use comfy_reality_fake_comfyui::{DeviceType, FakeComfy, FakeOptions};
use serde_json::{Value, json};

/// Hang guard for the binary's first line; not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(30);
const MIB: u64 = 1024 * 1024;

async fn fake(device_type: DeviceType, vram_total_mb: Option<u64>) -> FakeComfy {
    FakeComfy::start(FakeOptions {
        device_type,
        vram_total_mb,
        ..FakeOptions::default()
    })
    .await
    .expect("fake starts")
}

async fn get(url: &str) -> Value {
    let response = reqwest::get(url).await.expect("GET");
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    response.json().await.expect("json")
}

async fn post_vram(base: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/__fake/vram"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("POST");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_cuda_device_reports_its_memory_and_the_memory_set_in_use() {
    let fake = fake(DeviceType::Cuda, Some(8192)).await;
    let base = fake.base_url();
    let stats = get(&format!("{base}/system_stats")).await;
    let device = &stats["devices"][0];
    assert_eq!(stats["devices"].as_array().unwrap().len(), 1);
    assert_eq!(device["type"], "cuda");
    assert_eq!(device["index"], 0);
    assert!(device["name"].as_str().unwrap().starts_with("cuda:0 "));
    assert_eq!(device["vram_total"], json!(8192 * MIB));
    assert_eq!(device["vram_free"], json!(8192 * MIB), "nothing in use yet");
    assert!(
        !stats["system"]["argv"]
            .as_array()
            .unwrap()
            .contains(&json!("--cpu"))
    );

    let (status, answer) = post_vram(&base, r#"{"used_mb": 6000}"#).await;
    assert_eq!(status, 200);
    assert_eq!(
        answer,
        json!({"device_type": "cuda", "total_mb": 8192, "used_mb": 6000})
    );
    // Both mounts of the route see it.
    for path in ["/system_stats", "/api/system_stats"] {
        let device = get(&format!("{base}{path}")).await["devices"][0].clone();
        assert_eq!(device["vram_free"], json!((8192 - 6000) * MIB), "{path}");
        assert_eq!(device["torch_vram_total"], json!(6000 * MIB), "{path}");
        assert_eq!(device["torch_vram_free"], json!(0), "{path}");
    }
    assert_eq!(get(&format!("{base}/__fake/vram")).await["used_mb"], 6000);
    fake.set_vram_used_mb(0).unwrap();
    let device = get(&format!("{base}/system_stats")).await["devices"][0].clone();
    assert_eq!(device["vram_free"], json!(8192 * MIB));
    fake.shutdown().await;
}

#[tokio::test]
async fn a_bad_vram_update_is_refused_and_changes_nothing() {
    let fake = fake(DeviceType::Cuda, Some(1024)).await;
    let base = fake.base_url();
    for (body, needle) in [
        (r#"{"used_mb": 1025}"#, "above the device's 1024 MiB"),
        (r#"{"used_mb": -1}"#, "invalid vram update"),
        (r#"{"used": 5}"#, "invalid vram update"),
        ("not json", "invalid vram update"),
    ] {
        let (status, answer) = post_vram(&base, body).await;
        assert_eq!(status, 400, "{body}");
        let text = answer.to_string();
        assert!(text.contains(needle), "{body}: {text}");
    }
    assert_eq!(get(&format!("{base}/__fake/vram")).await["used_mb"], 0);
    assert!(fake.set_vram_used_mb(2048).is_err());
    fake.shutdown().await;
}

#[tokio::test]
async fn each_device_type_has_comfyuis_shape() {
    // DirectML is torch's out-of-tree "privateuseone"; MPS has no index.
    for (kind, reported, index, total_mb) in [
        (DeviceType::Mps, "mps", Value::Null, 16_384u64),
        (DeviceType::Directml, "privateuseone", json!(0), 8_192),
    ] {
        let fake = fake(kind, None).await;
        let device = get(&format!("{}/system_stats", fake.base_url())).await["devices"][0].clone();
        assert_eq!(device["type"], reported);
        assert_eq!(device["index"], index);
        assert_eq!(device["vram_total"], json!(total_mb * MIB));
        fake.shutdown().await;
    }
    // The default stays the captured CPU machine.
    let fake = fake(DeviceType::Cpu, None).await;
    let stats = get(&format!("{}/system_stats", fake.base_url())).await;
    assert_eq!(stats["devices"][0]["type"], "cpu");
    assert_eq!(stats["devices"][0]["vram_total"], json!(25_276_510_208u64));
    assert_eq!(stats["devices"][0]["vram_free"], json!(23_749_312_512u64));
    assert!(
        stats["system"]["argv"]
            .as_array()
            .unwrap()
            .contains(&json!("--cpu"))
    );
    fake.shutdown().await;
    // Zero memory is not a device.
    let error = FakeComfy::start(FakeOptions {
        vram_total_mb: Some(0),
        ..FakeOptions::default()
    })
    .await
    .unwrap_err();
    assert!(error.to_string().contains("vram_total_mb"), "{error}");
}

#[test]
fn the_binary_takes_the_device_flags_and_refuses_bad_ones() {
    let exe = env!("CARGO_BIN_EXE_comfy-reality-fake-comfyui");
    let refused = Command::new(exe)
        .args(["--port", "0", "--device-type", "rocm"])
        .output()
        .expect("run the fake");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("unknown device type `rocm`: expected cuda, cpu, mps or directml"),
        "{stderr}"
    );
    let refused = Command::new(exe)
        .args(["--port", "0", "--vram-total-mb", "0"])
        .output()
        .expect("run the fake");
    assert!(!refused.status.success());

    let mut child = Command::new(exe)
        .args([
            "--port",
            "0",
            "--device-type",
            "cuda",
            "--vram-total-mb",
            "4096",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the fake");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let first = BufReader::new(stdout).lines().next().and_then(Result::ok);
        let _ = tx.send(first);
    });
    let line = rx.recv_timeout(HANG_GUARD).ok().flatten();
    let result = std::panic::catch_unwind(|| {
        let line = line.expect("a line on stdout");
        let base = line
            .rsplit(' ')
            .next()
            .expect("the url ends the line")
            .to_owned();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(post_vram(&base, r#"{"used_mb": 1024}"#).await.0, 200);
            let device = get(&format!("{base}/system_stats")).await["devices"][0].clone();
            assert_eq!(device["type"], "cuda");
            assert_eq!(device["vram_total"], json!(4096 * MIB));
            assert_eq!(device["vram_free"], json!(3072 * MIB));
        });
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
