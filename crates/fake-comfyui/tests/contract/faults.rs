//! Each fault switch of the fake.

use std::time::Duration;

use serde_json::json;

use crate::scenarios::run_success_prompt;
use crate::support::*;

#[tokio::test]
async fn drop_websockets_closes_and_refuses_sockets() {
    let fake = fake(0.05).await;
    let socket = Socket::connect(&fake.base_url(), "/ws?clientId=d").await;
    socket.wait_count(1).await;
    fake.faults().set_drop_websockets(true);
    socket.wait_ended().await;
    assert!(
        Socket::try_connect(&fake.base_url(), "/ws?clientId=d")
            .await
            .is_err()
    );
    fake.faults().set_drop_websockets(false);
    let again = Socket::connect(&fake.base_url(), "/ws?clientId=d").await;
    again.wait_count(1).await;
    fake.faults().drop_websockets_once();
    again.wait_ended().await;
    let third = Socket::connect(&fake.base_url(), "/ws?clientId=d").await;
    third.wait_count(1).await;

    // The same over HTTP.
    let http = Http::new(&fake.base_url());
    let reply = http
        .post("/__fake/faults", &json!({"drop_websockets": true}))
        .await;
    assert_eq!(reply.json()["drop_websockets"], true);
    third.wait_ended().await;
    http.post("/__fake/faults", &json!({"drop_websockets": false}))
        .await;
    Socket::connect(&fake.base_url(), "/ws")
        .await
        .wait_count(1)
        .await;
    fake.shutdown().await;
}

#[tokio::test]
async fn silent_runs_prompts_without_any_frame() {
    let fake = fake(0.05).await;
    let http = Http::new(&fake.base_url());
    fake.faults().set_silent(true);
    let socket = Socket::connect(&fake.base_url(), "/ws?clientId=s").await;
    let reply = http
        .post("/prompt", &json!({"client_id": "s", "prompt": {"1": {"class_type": "TestDelay", "inputs": {"seconds": 0.2, "steps": 2, "nonce": 1}}}}))
        .await;
    let id = reply.json()["prompt_id"].as_str().expect("id").to_owned();
    // Polling history is how a client copes with a silent server.
    let guard = tokio::time::timeout(HANG_GUARD, async {
        loop {
            let history = http.get(&format!("/history/{id}")).await.json();
            if history.get(id.as_str()).is_some() {
                return history;
            }
            tokio::task::yield_now().await;
        }
    });
    let history = guard.await.expect("prompt finished");
    assert_eq!(history[id.as_str()]["status"]["status_str"], "success");
    // Frames are ordered: the first one after silence ends is the status
    // this clear causes, so nothing was sent while silent.
    fake.faults().set_silent(false);
    http.post("/queue", &json!({"clear": true})).await;
    let frames = socket.wait_count(1).await;
    assert_eq!(frames[0].kind(), "status");
    assert!(frames[0].json().expect("json")["data"].get("sid").is_none());
    fake.shutdown().await;
}

#[tokio::test]
async fn lag_sends_every_frame_late_and_in_order() {
    let fake = fake(0.05).await;
    let http = Http::new(&fake.base_url());
    let lag = Duration::from_millis(400);
    fake.faults().set_lag(Some(lag));
    let started = tokio::time::Instant::now();
    let socket = Socket::connect(&fake.base_url(), "/ws?clientId=l").await;
    // The socket's first frame, made as it connected, comes the lag later.
    let first = socket.wait_count(1).await;
    assert_eq!(first[0].kind(), "status");
    assert!(started.elapsed() >= lag, "{:?}", started.elapsed());
    assert_eq!(http.get("/__fake/faults").await.json()["lag_ms"], 400);
    // A prompt runs and is done in /history while its client has heard nothing of it yet.
    let posted = tokio::time::Instant::now();
    let reply = http
        .post("/prompt", &json!({"client_id": "l", "prompt": {"1": {"class_type": "TestDelay", "inputs": {"seconds": 0.2, "steps": 2, "nonce": 1}}}}))
        .await;
    let id = reply.json()["prompt_id"].as_str().expect("id").to_owned();
    let history = tokio::time::timeout(HANG_GUARD, async {
        loop {
            let history = http.get(&format!("/history/{id}")).await.json();
            if history.get(id.as_str()).is_some() {
                return history;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("prompt finished");
    assert_eq!(history[id.as_str()]["status"]["status_str"], "success");
    let so_far = socket.snapshot().len();
    if posted.elapsed() < lag {
        assert_eq!(so_far, 1, "a frame came before the lag");
    }
    // Every frame comes, in the order it was made, the lag after (once: not twice).
    let frames = socket.wait_done(&id).await;
    assert!(posted.elapsed() >= lag, "{:?}", posted.elapsed());
    assert!(posted.elapsed() < lag * 3, "{:?}", posted.elapsed());
    let kinds: Vec<String> = frames.iter().map(|f| f.kind()).collect();
    let start = kinds.iter().position(|k| *k == "execution_start");
    let success = kinds.iter().position(|k| *k == "execution_success");
    assert!(start.is_some() && start < success, "{kinds:?}");
    // Off over HTTP.
    let reply = http.post("/__fake/faults", &json!({"lag_ms": null})).await;
    assert_eq!(reply.json()["lag_ms"], serde_json::Value::Null);
    fake.shutdown().await;
}

#[tokio::test]
async fn slow_delays_answers_but_not_control_routes() {
    let fake = fake(0.05).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .expect("client");
    let url = |p: &str| format!("{}{p}", fake.base_url());
    fake.faults().set_slow(Some(Duration::from_secs(30)));
    let err = impatient
        .get(url("/system_stats"))
        .send()
        .await
        .expect_err("delayed past the timeout");
    assert!(err.is_timeout(), "{err}");
    let control = impatient
        .post(url("/__fake/faults"))
        .body(json!({"slow_ms": null}).to_string())
        .send()
        .await
        .expect("control routes are never slow");
    assert_eq!(control.status(), 200);
    assert_eq!(
        impatient
            .get(url("/system_stats"))
            .send()
            .await
            .expect("fast again")
            .status(),
        200
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn http_500_fails_every_route_like_aiohttp() {
    let fake = fake(0.05).await;
    let http = Http::new(&fake.base_url());
    fake.faults().set_http_500(true);
    for path in ["/queue", "/api/prompt", "/nope"] {
        let reply = http.get(path).await;
        assert_eq!(reply.status, 500, "{path}");
        assert_eq!(
            reply.content_type.as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(
            reply.bytes,
            b"500 Internal Server Error\n\nServer got itself in trouble"
        );
    }
    assert!(Socket::try_connect(&fake.base_url(), "/ws").await.is_err());
    let reply = http
        .post("/__fake/faults", &json!({"http_500": false}))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(http.get("/queue").await.status, 200);
    fake.shutdown().await;
}

#[tokio::test]
async fn refused_connections_fail_until_turned_off_over_http() {
    let fake = fake(0.05).await;
    let url = |p: &str| format!("{}{p}", fake.base_url());
    let pooled = reqwest::Client::new();
    assert_eq!(
        pooled.get(url("/queue")).send().await.expect("up").status(),
        200
    );
    let socket = Socket::connect(&fake.base_url(), "/ws").await;
    fake.faults().set_refuse_connections(true);
    socket.wait_ended().await;
    let fresh = reqwest::Client::new();
    assert!(
        fresh.get(url("/queue")).send().await.is_err(),
        "new connections are closed"
    );
    assert!(
        pooled.get(url("/queue")).send().await.is_err(),
        "pooled connections are cut"
    );
    assert!(Socket::try_connect(&fake.base_url(), "/ws").await.is_err());
    let off = reqwest::Client::new()
        .post(url("/__fake/faults"))
        .body(json!({"refuse_connections": false}).to_string())
        .send()
        .await
        .expect("control requests get through");
    assert_eq!(off.status(), 200);
    assert_eq!(
        fresh
            .get(url("/queue"))
            .send()
            .await
            .expect("back")
            .status(),
        200
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn restart_loses_queue_history_and_sockets() {
    let fake = fake(0.05).await;
    let http = Http::new(&fake.base_url());
    let socket = Socket::connect(&fake.base_url(), "/ws?clientId=r").await;
    let done = run_success_prompt(&http, &socket, "r").await;
    let long = |nonce: u64| json!({"client_id": "r", "prompt": {"1": {"class_type": "TestDelay", "inputs": {"seconds": 600, "steps": 600, "nonce": nonce}}}});
    let running = http.post("/prompt", &long(1)).await.json()["prompt_id"]
        .as_str()
        .expect("id")
        .to_owned();
    http.post("/prompt", &long(2)).await;
    socket
        .wait("the long prompt running", |frames, _| {
            frames
                .iter()
                .filter_map(Frame::json)
                .any(|v| v["type"] == "executing" && v["data"]["prompt_id"] == running.as_str())
        })
        .await;
    fake.restart().await;
    socket.wait_ended().await;
    let queue = http.get("/queue").await.json();
    assert_eq!(queue, json!({"queue_running": [], "queue_pending": []}));
    assert_eq!(http.get("/history").await.json(), json!({}));
    assert_eq!(
        http.get(&format!("/history/{done}")).await.json(),
        json!({})
    );
    assert_eq!(http.get(&format!("/api/jobs/{running}")).await.status, 404);
    let again = http.post("/prompt", &long(3)).await.json();
    assert_eq!(again["number"], 0, "the counter starts over");

    // The HTTP control route does the same.
    let socket = Socket::connect(&fake.base_url(), "/ws").await;
    socket.wait_count(1).await;
    assert_eq!(http.send("POST", "/__fake/restart", None).await.status, 200);
    socket.wait_ended().await;
    assert_eq!(
        http.get("/prompt").await.json(),
        json!({"exec_info": {"queue_remaining": 0}})
    );
    fake.shutdown().await;
}
