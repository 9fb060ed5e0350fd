//! Behaviour the transcripts do not show: an image uploaded then loaded, malformed input.

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn upload_then_load_image() {
    let fake = fake(0.05).await;
    let http = Http::new(&fake.base_url());
    let png = std::fs::read(fake.input_dir().join("example.png")).expect("example.png");
    let boundary = "fakeboundary";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"up.png\"\r\nContent-Type: image/png\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(&png);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let reply = http
        .client
        .post(format!("{}/upload/image", http.base))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .expect("upload");
    assert_eq!(reply.status(), 200);
    let uploaded: Value = reply.json().await.expect("json");
    assert_eq!(
        uploaded,
        json!({"name": "up.png", "subfolder": "", "type": "input"})
    );

    let socket = Socket::connect(&fake.base_url(), "/ws?clientId=u").await;
    let reply = http
        .post(
            "/prompt",
            &json!({"client_id": "u", "prompt": {
                "1": {"class_type": "LoadImage", "inputs": {"image": "up.png"}},
                "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
            }}),
        )
        .await;
    assert_eq!(reply.status, 200);
    let id = reply.json()["prompt_id"].as_str().expect("id").to_owned();
    let frames = socket.wait_done(&id).await;
    let executed = frames
        .iter()
        .filter_map(Frame::json)
        .find(|v| v["type"] == "executed")
        .expect("executed")
        .clone();
    let image = &executed["data"]["output"]["images"][0];
    assert_eq!(image["type"], "temp");
    let view = http
        .get(&format!(
            "/view?filename={}&type=temp",
            image["filename"].as_str().expect("name")
        ))
        .await;
    assert_eq!(view.status, 200);
    assert_eq!(view.content_type.as_deref(), Some("image/png"));

    let reply = http
        .post("/prompt", &json!({"prompt": {"1": {"class_type": "LoadImage", "inputs": {"image": "missing.png"}}, "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}}))
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json()["node_errors"]["1"]["errors"][0]["type"],
        "custom_validation_failed"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn malformed_input_never_breaks_the_server() {
    let fake = fake(0.05).await;
    let http = Http::new(&fake.base_url());
    let bodies = [
        "",
        "{",
        "[]",
        "null",
        "5",
        "\"prompt\"",
        "{\"prompt\": null}",
        "{\"prompt\": []}",
        "{\"prompt\": {\"1\": 5}}",
        "{\"prompt\": {\"1\": {\"class_type\": 5}}}",
        "{\"prompt\": {\"1\": {\"class_type\": \"SaveImage\", \"inputs\": []}}}",
        "{\"prompt\": {\"1\": {\"class_type\": \"SaveImage\", \"inputs\": {\"images\": [1, \"x\"]}}}}",
        "{\"prompt\": {\"1\": {\"class_type\": \"SaveImage\", \"inputs\": {\"images\": [[1], 0]}}}}",
        "{\"prompt\": {\"1\": {\"class_type\": \"SaveImage\", \"inputs\": {\"images\": \"x\", \"filename_prefix\": \"../../x\"}}}}",
        "{\"number\": \"abc\", \"prompt\": {}}",
        "{\"number\": 1e999, \"prompt\": {}}",
        "{\"extra_data\": 5, \"client_id\": \"x\", \"prompt\": {}}",
        "{\"delete\": 5}",
        "{\"clear\": true, \"delete\": [[1]]}",
        "{\"job_ids\": [1, null, {}]}",
        "\u{0}\u{1}",
    ];
    let routes = [
        "/prompt",
        "/queue",
        "/history",
        "/interrupt",
        "/free",
        "/api/jobs/cancel",
        "/upload/image",
        "/api/jobs/x/cancel",
    ];
    for route in routes {
        for body in bodies {
            let reply = http.send("POST", route, Some(body.to_owned())).await;
            assert!(
                [200, 400, 404, 500].contains(&reply.status),
                "POST {route} {body:?}: {}",
                reply.status
            );
            if reply.status == 500 {
                assert_eq!(
                    reply.content_type.as_deref(),
                    Some("text/plain; charset=utf-8")
                );
            }
        }
    }
    for path in [
        "/view?filename=%2e%2e%2fx",
        "/view?filename=&type=output",
        "/view?filename=a&subfolder=../../",
        "/view?filename=a&subfolder=%00",
        "/history?max_items=abc",
        "/history?max_items=-5&offset=99999999999999999999",
        "/api/jobs?limit=-1&offset=x",
        "/api/jobs?sort_by=x",
        "/api/jobs?status=,,,",
        "/object_info/%ff",
        "/ws",
        "/api/jobs/cancel",
        "/%",
        "/interrupt",
    ] {
        let reply = http.get(path).await;
        assert!(reply.status < 600, "GET {path}");
    }
    // Odd WebSocket input: binary frames, bad JSON, a late feature_flags.
    let mut socket = Socket::connect(&fake.base_url(), "/ws?clientId=odd").await;
    socket.send_raw(Message::Binary(vec![0, 1, 2].into())).await;
    socket.send_raw(Message::Text("{not json".into())).await;
    socket.send_json(&json!(["feature_flags"])).await;
    socket
        .send_json(&json!({"type": "feature_flags", "data": 5}))
        .await;
    let frames = socket.wait_count(2).await;
    assert_eq!(
        frames[1].kind(),
        "feature_flags",
        "a first JSON object message negotiates"
    );
    // Still serving.
    assert_eq!(http.get("/system_stats").await.status, 200);
    let _ = socket.close().await;
    fake.shutdown().await;
}
