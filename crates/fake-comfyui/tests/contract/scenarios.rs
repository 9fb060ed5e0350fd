//! Each recorded scenario replayed against the fake, compared message by message and
//! response by response.

use serde_json::{Map, Value, json};

use crate::support::*;

#[tokio::test]
async fn success_matches_the_capture() {
    let t = transcript("success");
    let fake = fake(0.05).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);

    let history = replay.exchanges[1].actual.json();
    let entry = history
        .as_object()
        .expect("history")
        .values()
        .next()
        .expect("entry");
    assert_eq!(
        entry["outputs"]["4"]["images"][0],
        json!({"filename": "success_00001_.png", "subfolder": "proto", "type": "output"})
    );
    let png =
        std::fs::read(fake.output_dir().join("proto/success_00001_.png")).expect("png written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let view = &replay
        .exchange(
            "GET",
            "/view?filename=success_00001_.png&subfolder=proto&type=output",
        )
        .actual;
    assert_eq!(view.bytes, png, "/view serves the written file");
    // The stored prompt is the validated one; ids line up with the run.
    assert_eq!(entry["prompt"][4], json!(["4"]));
    fake.shutdown().await;
}

/// Runs the success prompt once on `socket`'s client.
pub(crate) async fn run_success_prompt(http: &Http, socket: &Socket, client_id: &str) -> String {
    let t = transcript("success");
    let mut body = events(&t)
        .iter()
        .find(|e| e["kind"] == "http_request" && e["path"] == "/prompt")
        .expect("prompt")["body"]
        .clone();
    body["client_id"] = json!(client_id);
    let reply = http.post("/prompt", &body).await;
    assert_eq!(reply.status, 200);
    let id = reply.json()["prompt_id"].as_str().expect("id").to_owned();
    socket.wait_done(&id).await;
    id
}

#[tokio::test]
async fn cached_matches_the_capture() {
    let t = transcript("cached");
    let fake = fake(0.05).await;
    let http = Http::new(&fake.base_url());
    let setup = Socket::connect(&fake.base_url(), "/ws?clientId=setup").await;
    run_success_prompt(&http, &setup, "setup").await;

    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);

    let frames = replay.frames("A");
    let cached: Vec<Value> = frames
        .iter()
        .filter_map(Frame::json)
        .filter(|v| v["type"] == "execution_cached")
        .map(|v| v["data"]["nodes"].clone())
        .collect();
    assert_eq!(cached, [json!(["1", "2", "3", "4"]), json!(["1", "2"])]);
    let executed: Vec<Value> = frames
        .iter()
        .filter_map(Frame::json)
        .filter(|v| v["type"] == "executed")
        .map(|v| v["data"]["output"]["images"][0]["filename"].clone())
        .collect();
    assert_eq!(
        executed,
        [json!("success_00001_.png"), json!("success_00002_.png")]
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn progress_matches_the_capture() {
    let t = transcript("progress");
    let fake = fake(0.05).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);

    // Throttling scales with time: every step is reported, like the capture.
    let kinds = |frames: &[Frame]| -> Vec<String> { frames.iter().map(Frame::kind).collect() };
    assert_eq!(kinds(&replay.frames("A")), kinds(&recorded_frames(&t, "A")));
    let texts: Vec<String> = replay
        .frames("A")
        .iter()
        .filter_map(Frame::binary)
        .filter_map(|b| b.text)
        .collect();
    assert_eq!(
        texts,
        ["step 1/5", "step 2/5", "step 3/5", "step 4/5", "step 5/5"]
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn binary_preview_matches_the_capture() {
    let t = transcript("binary_preview");
    let fake = fake(0.05).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws(&t, "A", &ShapeOpts::default());
    replay.assert_ws(&t, "B", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);
    let kinds = |frames: &[Frame]| -> Vec<String> { frames.iter().map(Frame::kind).collect() };
    assert_eq!(kinds(&replay.frames("B")), kinds(&recorded_frames(&t, "B")));
    fake.shutdown().await;
}

/// Sorts every node's error list, whose order is Python set order.
fn sorted_errors(mut body: Value) -> Value {
    if let Some(nodes) = body["node_errors"].as_object_mut() {
        for node in nodes.values_mut() {
            if let Some(errors) = node["errors"].as_array_mut() {
                errors.sort_by_key(|e| e["details"].to_string());
            }
        }
    }
    body
}

#[tokio::test]
async fn validation_errors_match_the_capture_exactly() {
    let t = transcript("validation_error");
    let fake = fake(0.05).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);

    let mut numbers = Vec::new();
    for x in &replay.exchanges {
        if x.recorded["status"] == 400 {
            assert_eq!(
                sorted_errors(x.actual.json()),
                sorted_errors(x.recorded["body"].clone()),
                "400 body of {}",
                x.recorded["path"]
            );
        }
        if x.recorded["status"] == 200 && x.path == "/prompt" {
            numbers.push(x.actual.json()["number"].clone());
            assert_eq!(
                x.actual.json()["node_errors"],
                x.recorded["body"]["node_errors"]
            );
        }
    }
    // Every rejected POST with a JSON body advanced the counter (14 of them).
    assert_eq!(numbers, [json!(14)]);
    fake.shutdown().await;
}

#[tokio::test]
async fn execution_error_matches_the_capture_when_the_sibling_runs_first() {
    let t = transcript("execution_error");
    let fake = fake(0.05).await;
    let mut replay = Replay::new(&fake);
    // Python's set order ran the sibling output first in the capture; the
    // fake runs outputs in key order, so send the keys in that order.
    let reorder = |path: &str, body: &mut Value| {
        if path == "/prompt" {
            let prompt = body["prompt"].as_object().expect("prompt").clone();
            let mut reordered = Map::new();
            for key in ["3", "1", "2"] {
                reordered.insert(key.to_owned(), prompt[key].clone());
            }
            body["prompt"] = Value::Object(reordered);
        }
    };
    replay.run(&t, &reorder).await;
    replay.assert_ws(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);

    let error = replay
        .frames("A")
        .iter()
        .filter_map(Frame::json)
        .find(|v| v["type"] == "execution_error")
        .expect("execution_error")["data"]
        .clone();
    let recorded = recorded_frames(&t, "A")
        .iter()
        .filter_map(Frame::json)
        .find(|v| v["type"] == "execution_error")
        .expect("recorded error")["data"]
        .clone();
    for key in [
        "node_id",
        "node_type",
        "executed",
        "exception_message",
        "exception_type",
        "traceback",
        "current_inputs",
        "current_outputs",
    ] {
        assert_eq!(error[key], recorded[key], "execution_error.{key}");
    }
    fake.shutdown().await;
}

#[tokio::test]
async fn execution_error_stops_at_the_first_failure_in_key_order() {
    let t = transcript("execution_error");
    // The README allows the other order: the sibling never runs. Expect the
    // recorded frames without node 3's steps and progress entries.
    let mut variant = t.clone();
    let kept: Vec<Value> = events(&t)
        .iter()
        .filter_map(|e| {
            let mut e = e.clone();
            if e["kind"] != "ws_recv" {
                return Some(e);
            }
            if e["msg"]["data"]["node"] == "3" {
                return None;
            }
            let nodes = e
                .get_mut("msg")
                .and_then(|m| m.get_mut("data"))
                .and_then(|d| d.get_mut("nodes"))
                .and_then(Value::as_object_mut);
            if let Some(nodes) = nodes {
                nodes.shift_remove("3");
                if nodes.is_empty() {
                    return None;
                }
            }
            Some(e)
        })
        .collect();
    variant["events"] = Value::Array(kept);
    let fake = fake(0.05).await;
    let mut replay = Replay::new(&fake);
    replay.run(&variant, &as_recorded).await;
    let opts = ShapeOpts {
        loose_arrays: vec!["executed"],
        ..ShapeOpts::default()
    };
    let actual = replay.frames("A");
    assert_tokens(&actual, &recorded_frames(&variant, "A"), "socket A", &opts);
    let error = actual
        .iter()
        .filter_map(Frame::json)
        .find(|v| v["type"] == "execution_error")
        .expect("error")["data"]
        .clone();
    assert_eq!(error["executed"], json!(["1"]));
    assert_eq!(error["current_outputs"], json!(["1", "2", "3"]));
    let history = replay.exchanges[1].actual.json();
    let entry = history
        .as_object()
        .expect("history")
        .values()
        .next()
        .expect("entry");
    assert_eq!(entry["status"]["status_str"], "error");
    assert_eq!(
        entry["outputs"],
        json!({"1": {"text": ["slept 0.3s in 3 steps"]}})
    );
    let job = replay.exchanges[3].actual.json();
    assert_eq!(job["status"], "failed");
    assert_eq!(job["outputs_count"], 0);
    fake.shutdown().await;
}

#[tokio::test]
async fn interrupt_matches_the_capture() {
    let t = transcript("interrupt");
    let fake = fake(0.1).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);
    let frames = replay.frames("A");
    let interrupted: Vec<&Value> = frames
        .iter()
        .filter_map(Frame::json)
        .filter(|v| v["type"] == "execution_interrupted")
        .collect();
    assert_eq!(interrupted.len(), 2);
    // The interrupt naming another prompt changed nothing: the first prompt
    // went on reporting progress until its own id was interrupted.
    let first = &interrupted[0]["data"]["prompt_id"];
    let progress = frames
        .iter()
        .filter_map(Frame::json)
        .filter(|v| v["type"] == "progress" && &v["data"]["prompt_id"] == first)
        .count();
    assert!(
        progress >= 2,
        "progress after the ignored interrupt: {progress}"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn queue_delete_matches_the_capture() {
    let t = transcript("queue_delete");
    let fake = fake(0.1).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws_per_prompt(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);
    let queue = replay
        .exchanges
        .iter()
        .filter(|x| x.path == "/queue" && x.method == "GET")
        .nth(1)
        .expect("second GET /queue");
    let pending = queue.actual.json()["queue_pending"].clone();
    let recorded_c = queue.recorded["body"]["queue_pending"][0][1]
        .as_str()
        .expect("id");
    assert_eq!(
        pending[0][1],
        json!(replay.ids[recorded_c]),
        "only C is left pending"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn artifacts_match_the_capture() {
    let t = transcript("artifact");
    let fake = fake(0.05).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);
    let usdz = &replay
        .exchange(
            "GET",
            "/view?filename=out_00001_.usdz&subfolder=proto&type=output",
        )
        .actual;
    assert_eq!(usdz.bytes.len(), 64);
    let bin = &replay
        .exchange(
            "GET",
            "/view?filename=blob_00001_.bin&subfolder=&type=output",
        )
        .actual;
    assert_eq!(bin.bytes.len(), 10);
    fake.shutdown().await;
}

#[tokio::test]
async fn priority_matches_the_capture() {
    let t = transcript("priority");
    let fake = fake(0.1).await;
    // The heap layout depends on the numbers: advance the counter to where
    // the capture's server was (every rejected POST counts).
    let http = Http::new(&fake.base_url());
    for _ in 0..29 {
        assert_eq!(http.post("/prompt", &json!({})).await.status, 400);
    }
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws_per_prompt(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);

    // GET /queue shows the same raw heap order as the capture.
    let queue = replay.exchange("GET", "/queue");
    let order = |body: &Value, map: &dyn Fn(&str) -> String| -> Vec<String> {
        body["queue_pending"]
            .as_array()
            .expect("pending")
            .iter()
            .map(|i| map(i[1].as_str().expect("id")))
            .collect()
    };
    assert_eq!(
        order(&queue.actual.json(), &|id| id.to_owned()),
        order(&queue.recorded["body"], &|id| replay.ids[id].clone())
    );
    // And the prompts ran in the captured order.
    let starts = |frames: &[Frame], map: &dyn Fn(&str) -> String| -> Vec<String> {
        frames
            .iter()
            .filter_map(Frame::json)
            .filter(|v| v["type"] == "execution_start")
            .map(|v| map(v["data"]["prompt_id"].as_str().expect("id")))
            .collect()
    };
    assert_eq!(
        starts(&replay.frames("A"), &|id| id.to_owned()),
        starts(&recorded_frames(&t, "A"), &|id| replay.ids[id].clone())
    );
    let numbers: Vec<Value> = replay
        .exchanges
        .iter()
        .filter(|x| x.path == "/prompt" && x.method == "POST")
        .map(|x| x.actual.json()["number"].clone())
        .collect();
    assert_eq!(
        numbers,
        [
            json!(29),
            json!(30),
            json!(-31),
            json!(-1000.0),
            json!(1000000000.0),
            json!(7.5)
        ]
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn client_prompt_ids_match_the_capture() {
    let t = transcript("client_prompt_id");
    let fake = fake(0.05).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);
    let chosen = events(&t)[2]["body"]["prompt_id"]
        .as_str()
        .expect("chosen id");
    let first = replay.exchanges[0].actual.json();
    assert_eq!(first["prompt_id"], chosen);
    let history = replay
        .exchange("GET", &format!("/history/{chosen}"))
        .actual
        .json();
    assert_eq!(
        history[chosen]["prompt"][0],
        json!(1),
        "the duplicate overwrote the entry"
    );
    fake.shutdown().await;
}

/// Runs three short prompts to completion so the history holds jobs like
/// the ones the capture's server had from earlier scenarios.
async fn seed_completed_jobs(http: &Http, socket: &Socket, client_id: &str) {
    for number in [Some(json!(1000000000.0)), Some(json!(7.5)), None] {
        let mut body = json!({
            "prompt": {"1": {"class_type": "TestDelay", "inputs": {"seconds": 0.3, "steps": 1, "nonce": 7}}},
            "client_id": client_id,
        });
        body["prompt"]["1"]["inputs"]["nonce"] = json!(uuid::Uuid::new_v4().as_u128() as u32);
        if let Some(number) = number {
            body["number"] = number;
        }
        let reply = http.post("/prompt", &body).await;
        let id = reply.json()["prompt_id"].as_str().expect("id").to_owned();
        socket.wait_done(&id).await;
    }
}

#[tokio::test]
async fn jobs_api_matches_the_capture() {
    let t = transcript("jobs_api");
    let fake = fake(0.1).await;
    let http = Http::new(&fake.base_url());
    let setup = Socket::connect(&fake.base_url(), "/ws?clientId=setup").await;
    seed_completed_jobs(&http, &setup, "setup").await;
    let _ = setup.close().await;

    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws_per_prompt(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);
    let list = replay.exchange("GET", "/api/jobs?limit=5").actual.json();
    let jobs = list["jobs"].as_array().expect("jobs");
    let statuses: Vec<&str> = jobs
        .iter()
        .map(|j| j["status"].as_str().expect("status"))
        .collect();
    let created: Vec<f64> = jobs
        .iter()
        .map(|j| j["create_time"].as_f64().expect("create_time"))
        .collect();
    assert!(
        created.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {created:?}"
    );
    // Jobs created in the same millisecond keep the order ComfyUI lists
    // them in (running, then pending): a replay on a busy machine can post
    // two prompts within one, so compare the statuses run by run of equal
    // creation times, each run in any order.
    let expected = [
        "pending",
        "pending",
        "in_progress",
        "completed",
        "completed",
    ];
    assert_eq!(statuses.len(), expected.len(), "{statuses:?}");
    let mut at = 0;
    for run in created.chunk_by(|a, b| a == b) {
        let mut got = statuses[at..at + run.len()].to_vec();
        let mut want = expected[at..at + run.len()].to_vec();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "{statuses:?} created at {created:?}");
        at += run.len();
    }
    fake.shutdown().await;
}

#[tokio::test]
async fn ws_reconnect_reproduces_the_orphaned_socket() {
    let t = transcript("ws_reconnect");
    let fake = fake(0.1).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    for label in ["A", "B", "C", "D", "E"] {
        replay.assert_ws(&t, label, &ShapeOpts::default());
    }
    replay.assert_http(&ShapeOpts::default(), &[]);
    // B is open but got nothing after A closed: no end of either prompt.
    let b = replay.frames("B");
    assert!(
        !b.iter()
            .filter_map(Frame::json)
            .any(|v| v["type"] == "executing" && v["data"]["node"].is_null()),
        "the orphaned socket must not see the end of the prompt"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn prompts_without_client_id_match_the_capture() {
    let t = transcript("no_client_id");
    let fake = fake(0.1).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws(&t, "O", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);
    fake.shutdown().await;
}

#[tokio::test]
async fn free_cache_matches_the_capture() {
    let t = transcript("free_cache");
    let fake = fake(0.05).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);
    let cached: Vec<Value> = replay
        .frames("A")
        .iter()
        .filter_map(Frame::json)
        .filter(|v| v["type"] == "execution_cached")
        .map(|v| v["data"]["nodes"].clone())
        .collect();
    assert_eq!(cached, [json!([]), json!(["1"]), json!([])]);
    fake.shutdown().await;
}

/// Waits for a `status` with `queue_remaining: 0` after `from` frames.
async fn wait_idle(socket: &Socket, from: usize) {
    socket
        .wait("an idle status", |frames, _| {
            frames[from.min(frames.len())..]
                .iter()
                .filter_map(Frame::json)
                .any(|v| {
                    v["type"] == "status"
                        && v["data"]["status"]["exec_info"]["queue_remaining"] == 0
                })
        })
        .await;
}

#[tokio::test]
async fn misc_routes_match_the_capture() {
    let t = transcript("misc");
    let fake = fake(0.05).await;
    let http = Http::new(&fake.base_url());
    // The capture's history held the success prompt, then a finished and an
    // interrupted prompt without client_id (no_client_id.json).
    let observer = Socket::connect(&fake.base_url(), "/ws?clientId=observer").await;
    let success = run_success_prompt(&http, &observer, "observer").await;
    let from = observer.snapshot().len();
    let reply = http
        .post("/prompt", &json!({"prompt": {"1": {"class_type": "TestDelay", "inputs": {"seconds": 1.0, "steps": 4, "nonce": 630791956337u64}}}}))
        .await;
    let finished = reply.json()["prompt_id"].as_str().expect("id").to_owned();
    wait_idle(&observer, from).await;
    let from = observer.snapshot().len();
    let reply = http
        .post("/prompt", &json!({"prompt": {"1": {"class_type": "TestDelay", "inputs": {"seconds": 20, "steps": 40, "nonce": 785409369199u64}}}}))
        .await;
    let interrupted = reply.json()["prompt_id"].as_str().expect("id").to_owned();
    observer
        .wait("progress", |frames, _| {
            frames[from..].iter().any(|f| f.kind() == "progress")
        })
        .await;
    let from_interrupt = observer.snapshot().len();
    assert_eq!(
        http.post("/interrupt", &json!({"prompt_id": interrupted}))
            .await
            .status,
        200
    );
    wait_idle(&observer, from_interrupt).await;

    let mut replay = Replay::new(&fake);
    let response = |path: &str| {
        events(&t)
            .iter()
            .find(|e| e["kind"] == "http_response" && e["path"] == path)
            .expect("response")["body"]
            .clone()
    };
    let two = response("/history?max_items=2");
    let keys: Vec<&String> = two.as_object().expect("history").keys().collect();
    replay.ids.insert(keys[0].clone(), finished);
    replay.ids.insert(keys[1].clone(), interrupted);
    let first = response("/history?max_items=1&offset=0");
    replay.ids.insert(
        first
            .as_object()
            .expect("history")
            .keys()
            .next()
            .expect("key")
            .clone(),
        success,
    );
    replay.run(&t, &as_recorded).await;
    replay.assert_http(&ShapeOpts::default(), &["/object_info"]);
    let all = replay.exchange("GET", "/object_info").actual.json();
    let classes: Vec<&String> = all.as_object().expect("object_info").keys().collect();
    assert_eq!(
        classes,
        [
            "EmptyImage",
            "ImageInvert",
            "ImageScale",
            "SaveImage",
            "SaveImageWebsocket",
            "PreviewImage",
            "LoadImage",
            "TestDelay",
            "TestFail",
            "TestWriteBlob"
        ]
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn object_info_matches_the_capture_exactly() {
    let t = transcript("object_info");
    let fake = fake(1.0).await;
    let http = Http::new(&fake.base_url());
    for (class, info) in t.as_object().expect("classes") {
        let reply = http.get(&format!("/api/object_info/{class}")).await;
        assert_eq!(reply.status, 200);
        let mut expected = Map::new();
        expected.insert(class.clone(), info.clone());
        assert_eq!(reply.json(), Value::Object(expected), "{class}");
    }
    assert_eq!(http.get("/object_info/NoSuchNode").await.json(), json!({}));
    fake.shutdown().await;
}
