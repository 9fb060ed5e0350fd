//! The ComfyUI client against the fake ComfyUI over real sockets: submitting and following
//! prompts to each outcome, surviving dropped and silent sockets and a restarted server,
//! targeted interrupts, queue deletion, and downloads.
//!
//! Waits are for events, each with a generous timeout that only guards against a hang.

use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use comfy_reality::comfy::client::{ComfyClient, ComfyError, PromptLocation};
use comfy_reality::comfy::wire::{FileType, OutputFile, QueuePosition};
use comfy_reality::comfy::ws::{
    BackendSocket, BackendSocketHandle, LostReason, PromptEvent, PromptWatch, SocketSettings,
};
use comfy_reality::config::ServerConfig;
use comfy_reality_fake_comfyui::{FakeComfy, FakeOptions};

/// Guards every wait against a hang; never expected to expire.
const HANG_GUARD: Duration = Duration::from_secs(60);

struct Harness {
    fake: FakeComfy,
    socket: BackendSocketHandle,
    cancel: CancellationToken,
}

impl Harness {
    async fn start() -> Self {
        let fake = FakeComfy::start(FakeOptions {
            time_scale: 0.05,
            ..Default::default()
        })
        .await
        .expect("the fake starts");
        let config = ServerConfig {
            url: fake.base_url().to_string(),
            timeout_seconds: 5.0,
            max_retries: 2,
            silence_timeout_seconds: 0.3,
            reconnect_max_delay_seconds: 0.2,
            ..ServerConfig::default()
        };
        let client = ComfyClient::new(&config).expect("a client");
        let cancel = CancellationToken::new();
        let socket = BackendSocket::spawn(
            client,
            Uuid::new_v4().to_string(),
            SocketSettings::from_config(&config),
            cancel.clone(),
        );
        tokio::time::timeout(HANG_GUARD, socket.wait_connected())
            .await
            .expect("hang guard")
            .expect("the socket connects");
        Self {
            fake,
            socket,
            cancel,
        }
    }

    fn client(&self) -> &ComfyClient {
        self.socket.client()
    }

    async fn submit(&self, prompt: &Value) -> PromptWatch {
        let (watch, response) =
            tokio::time::timeout(HANG_GUARD, self.socket.submit(Uuid::new_v4(), prompt, None))
                .await
                .expect("hang guard")
                .expect("the prompt is accepted");
        assert!(response.node_errors.is_empty());
        assert_eq!(watch.prompt_id(), response.prompt_id);
        watch
    }

    async fn stop(self) {
        self.socket.shutdown().await;
        self.cancel.cancel();
        self.fake.shutdown().await;
    }
}

fn nonce() -> u64 {
    // Random, so that runs are never served from the cache.
    Uuid::new_v4().as_u64_pair().0 >> 1
}

fn image_prompt(prefix: &str) -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": nonce() % 16_777_215}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    })
}

/// `seconds` of fake time (scaled by 0.05) in `steps` progress steps.
fn delay_prompt(seconds: f64, steps: u64) -> Value {
    json!({
        "1": {"class_type": "TestDelay", "inputs": {"seconds": seconds, "steps": steps, "nonce": nonce()}},
    })
}

async fn terminal(watch: &mut PromptWatch) -> PromptEvent {
    tokio::time::timeout(HANG_GUARD, watch.terminal())
        .await
        .expect("hang guard")
        .expect("a terminal event")
}

/// Waits for the first event that `wanted` accepts; fails if the prompt ends first.
async fn until(watch: &mut PromptWatch, wanted: impl Fn(&PromptEvent) -> bool) -> PromptEvent {
    tokio::time::timeout(HANG_GUARD, async {
        while let Some(event) = watch.next_event().await {
            if wanted(&event) {
                return event;
            }
            assert!(
                !event.is_terminal(),
                "ended before the awaited event: {event:?}"
            );
        }
        panic!("the watch ended");
    })
    .await
    .expect("hang guard")
}

fn is_node_started(event: &PromptEvent) -> bool {
    matches!(event, PromptEvent::NodeStarted { .. })
}

#[tokio::test]
async fn success_delivers_outputs_and_the_png_downloads() {
    let h = Harness::start().await;
    let capabilities = h.client().capabilities().await.unwrap();
    assert!(capabilities.targeted_interrupt && capabilities.client_prompt_id);

    let mut watch = h.submit(&image_prompt("client_test/success")).await;
    let mut seen = Vec::new();
    let completion = loop {
        let event = tokio::time::timeout(HANG_GUARD, watch.next_event())
            .await
            .expect("hang guard")
            .expect("an event");
        match event {
            PromptEvent::Success(completion) => break completion,
            other => {
                assert!(!other.is_terminal(), "{other:?}");
                seen.push(other);
            }
        }
    };
    assert!(
        matches!(seen.first(), Some(PromptEvent::Started { .. })),
        "{seen:?}"
    );
    assert!(seen.iter().any(is_node_started));
    assert!(
        seen.iter()
            .any(|e| matches!(e, PromptEvent::Executed { node, .. } if node == "3"))
    );
    assert!(
        watch.next_event().await.is_none(),
        "nothing after the terminal event"
    );

    // The socket reported every output (no cached node, no reconnect): the
    // outputs come from its `executed` messages and history is not read.
    assert!(completion.history.is_none(), "history read without need");
    let files = completion.outputs["3"].files();
    assert_eq!(files.len(), 1);
    let file: OutputFile = files[0].1.clone();
    assert_eq!(file.file_type, "output");

    let bytes: Vec<u8> = h
        .client()
        .view_output(watch.prompt_id(), &file)
        .await
        .expect("the output downloads")
        .try_fold(Vec::new(), |mut all, chunk| async move {
            all.extend_from_slice(&chunk);
            Ok(all)
        })
        .await
        .unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");

    // `..` is refused before anything is sent.
    for (filename, subfolder) in [("../etc/passwd", ""), ("x.png", "../.."), ("x.png", "/etc")] {
        let refused = h.client().view(filename, subfolder, FileType::Output).await;
        assert!(
            matches!(refused, Err(ComfyError::InvalidArgument { .. })),
            "{filename} {subfolder}"
        );
    }
    // A file that exists but is not this prompt's output is refused too.
    let other = OutputFile {
        filename: "not_this_prompts.png".into(),
        ..file.clone()
    };
    assert!(matches!(
        h.client().view_output(watch.prompt_id(), &other).await,
        Err(ComfyError::NotAnOutput { .. })
    ));
    // A missing file is a 404.
    let missing = h.client().view("missing.png", "", FileType::Output).await;
    assert_eq!(missing.err().and_then(|e| e.status()), Some(404));
    h.stop().await;
}

#[tokio::test]
async fn execution_error_is_the_terminal_event() {
    let h = Harness::start().await;
    let prompt = json!({
        "1": {"class_type": "TestDelay", "inputs": {"seconds": 0.2, "steps": 2, "nonce": nonce()}},
        "2": {"class_type": "TestFail", "inputs": {"message": "boom from the client test", "value": ["1", 0]}},
    });
    let mut watch = h.submit(&prompt).await;
    let PromptEvent::Error { error, completion } = terminal(&mut watch).await else {
        panic!("expected an execution error");
    };
    assert_eq!(error.node_id, "2");
    assert_eq!(error.node_type, "TestFail");
    assert!(
        error
            .exception_message
            .contains("boom from the client test")
    );
    let history = completion.history.expect("history");
    assert_eq!(history.status.as_ref().unwrap().status_str, "error");
    h.stop().await;
}

#[tokio::test]
async fn a_validation_error_keeps_every_node_error() {
    let h = Harness::start().await;
    let prompt = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 99999, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    });
    let error = h
        .socket
        .submit(Uuid::new_v4(), &prompt, None)
        .await
        .expect_err("an invalid prompt is rejected");
    let ComfyError::Validation(body) = error else {
        panic!("expected a validation error, got {error}");
    };
    assert_eq!(body.error.kind, "prompt_outputs_failed_validation");
    assert_eq!(body.node_errors["1"].errors.len(), 2);
    h.stop().await;
}

#[tokio::test]
async fn interrupting_a_pending_prompt_leaves_the_running_one_alone() {
    let h = Harness::start().await;
    let mut a = h.submit(&delay_prompt(200.0, 400)).await;
    let mut b = h.submit(&delay_prompt(200.0, 400)).await;
    until(&mut a, is_node_started).await;

    // B waits, so a targeted interrupt of B does nothing; above all it does not touch A.
    h.client().interrupt(b.prompt_id()).await.unwrap();
    until(&mut a, |e| matches!(e, PromptEvent::Progress { .. })).await;
    let queue = h.client().queue().await.unwrap();
    assert_eq!(queue.position(a.prompt_id()), Some(QueuePosition::Running));
    assert_eq!(
        queue.position(b.prompt_id()),
        Some(QueuePosition::Pending { ahead: 0 })
    );

    // Interrupting A ends A only; B then starts.
    h.client().interrupt(a.prompt_id()).await.unwrap();
    let PromptEvent::Interrupted { interrupted, .. } = terminal(&mut a).await else {
        panic!("A is interrupted");
    };
    assert_eq!(interrupted.node_type, "TestDelay");
    until(&mut b, is_node_started).await;
    h.client().interrupt(b.prompt_id()).await.unwrap();
    assert!(matches!(
        terminal(&mut b).await,
        PromptEvent::Interrupted { .. }
    ));
    h.stop().await;
}

#[tokio::test]
async fn a_deleted_queued_prompt_is_reported_lost() {
    let h = Harness::start().await;
    let mut a = h.submit(&delay_prompt(200.0, 400)).await;
    let mut b = h.submit(&delay_prompt(1.0, 1)).await;
    until(&mut a, is_node_started).await;

    h.client()
        .delete_from_queue(&[b.prompt_id().to_owned()])
        .await
        .unwrap();
    let queue = h.client().queue().await.unwrap();
    assert_eq!(queue.position(b.prompt_id()), None);
    assert_eq!(queue.position(a.prompt_id()), Some(QueuePosition::Running));
    assert_eq!(
        h.client().locate(b.prompt_id()).await.unwrap(),
        PromptLocation::Unknown
    );
    // Nothing is ever sent about a deleted prompt: silence, then reconciliation, finds it gone.
    assert_eq!(
        terminal(&mut b).await,
        PromptEvent::Lost {
            reason: LostReason::NotFound
        }
    );
    h.client().interrupt(a.prompt_id()).await.unwrap();
    assert!(matches!(
        terminal(&mut a).await,
        PromptEvent::Interrupted { .. }
    ));
    h.stop().await;
}

#[tokio::test]
async fn dropped_sockets_reconnect_without_losing_the_completion() {
    let h = Harness::start().await;
    let before = h.socket.counters();
    let mut watch = h.submit(&delay_prompt(20.0, 20)).await;
    until(&mut watch, is_node_started).await;

    h.fake.faults().drop_websockets_once();
    let PromptEvent::Success(completion) = terminal(&mut watch).await else {
        panic!("the prompt still succeeds");
    };
    assert_eq!(completion.outputs["1"].texts().len(), 1);
    let after = h.socket.counters();
    assert!(
        after.reconnects > before.reconnects,
        "{before:?} -> {after:?}"
    );
    assert!(after.disconnects > before.disconnects);
    h.stop().await;
}

#[tokio::test]
async fn a_silent_server_is_reconciled_over_http() {
    let h = Harness::start().await;
    h.fake.faults().set_silent(true);
    let before = h.socket.counters();
    let mut watch = h.submit(&delay_prompt(4.0, 4)).await;
    // No WebSocket frame arrives: the terminal event can only come from reconciliation.
    let PromptEvent::Success(completion) = terminal(&mut watch).await else {
        panic!("the prompt finishes");
    };
    assert!(completion.history.is_some());
    assert_eq!(completion.outputs["1"].texts().len(), 1);
    assert!(h.socket.counters().reconciliations > before.reconciliations);
    h.fake.faults().set_silent(false);
    h.stop().await;
}

#[tokio::test]
async fn a_restart_that_forgets_the_prompt_reports_it_lost() {
    let h = Harness::start().await;
    let mut watch = h.submit(&delay_prompt(200.0, 400)).await;
    until(&mut watch, is_node_started).await;
    h.fake.restart().await;
    assert_eq!(
        terminal(&mut watch).await,
        PromptEvent::Lost {
            reason: LostReason::NotFound
        }
    );
    // The socket comes back and the restarted server works.
    tokio::time::timeout(HANG_GUARD, h.socket.wait_connected())
        .await
        .expect("hang guard")
        .unwrap();
    let mut again = h.submit(&delay_prompt(0.2, 1)).await;
    assert!(matches!(
        terminal(&mut again).await,
        PromptEvent::Success(_)
    ));
    h.stop().await;
}

#[tokio::test]
async fn typed_reads_of_the_servers_catalogue_and_state() {
    let h = Harness::start().await;
    let stats = h.client().system_stats().await.unwrap();
    assert!(stats.system.comfyui_version.is_some());
    let features = h
        .client()
        .features()
        .await
        .unwrap()
        .expect("the fake has /features");
    assert!(features.supports_preview_metadata);
    let delay = h
        .client()
        .object_info_class("TestDelay")
        .await
        .unwrap()
        .expect("TestDelay is known");
    assert_eq!(
        delay.input.required["nonce"].max().unwrap().to_string(),
        "18446744073709551615"
    );
    assert!(
        h.client()
            .object_info_class("NoSuchNode")
            .await
            .unwrap()
            .is_none()
    );
    let all = h.client().object_info().await.unwrap();
    assert!(all.contains_key("SaveImage") && all.contains_key("TestWriteBlob"));

    let mut watch = h.submit(&delay_prompt(0.2, 1)).await;
    assert!(matches!(
        terminal(&mut watch).await,
        PromptEvent::Success(_)
    ));
    let job = h
        .client()
        .job(watch.prompt_id())
        .await
        .unwrap()
        .expect("a job");
    assert!(job.status.is_finished());
    assert!(
        h.client()
            .job(&Uuid::new_v4().to_string())
            .await
            .unwrap()
            .is_none()
    );
    h.client().free(false, true).await.unwrap();
    h.stop().await;
}

#[tokio::test]
async fn a_completion_during_an_outage_is_delivered_after_it() {
    let h = Harness::start().await;
    let mut watch = h.submit(&delay_prompt(6.0, 6)).await;
    until(&mut watch, is_node_started).await;

    // Sockets are closed and refused: the end of the prompt is never seen on a socket.
    h.fake.faults().set_drop_websockets(true);
    let PromptEvent::Success(completion) = terminal(&mut watch).await else {
        panic!("the prompt's success survives the outage");
    };
    assert!(completion.history.is_some());
    assert!(!h.socket.is_connected());

    h.fake.faults().set_drop_websockets(false);
    tokio::time::timeout(HANG_GUARD, h.socket.wait_connected())
        .await
        .expect("hang guard")
        .unwrap();
    let mut again = h.submit(&delay_prompt(0.2, 1)).await;
    assert!(matches!(
        terminal(&mut again).await,
        PromptEvent::Success(_)
    ));
    h.stop().await;
}

#[tokio::test]
async fn an_ambiguous_submit_is_looked_up_not_resubmitted() {
    let h = Harness::start().await;
    // A client that gives up long before the (slowed) server answers.
    let impatient = ComfyClient::new(&ServerConfig {
        url: h.fake.base_url(),
        timeout_seconds: 0.3,
        max_retries: 8,
        ..ServerConfig::default()
    })
    .unwrap();
    impatient.capabilities().await.unwrap();

    let prompt_id = Uuid::new_v4();
    let mut watch = h.socket.watch(&prompt_id.to_string()).await.unwrap();
    h.fake.faults().set_slow(Some(Duration::from_millis(600)));
    let client_id = h.socket.client_id();
    let prompt = delay_prompt(200.0, 400);
    let submit = tokio::spawn(async move {
        impatient
            .submit_prompt(prompt_id, &client_id, &prompt, None)
            .await
    });
    // The server got the prompt although the client timed out.
    until(&mut watch, is_node_started).await;
    h.fake.faults().set_slow(None);

    let response = tokio::time::timeout(HANG_GUARD, submit)
        .await
        .expect("hang guard")
        .unwrap()
        .expect("the lookup finds the prompt");
    assert_eq!(response.prompt_id, prompt_id.to_string());
    let queue = h.client().queue().await.unwrap();
    assert_eq!(
        queue.position(&response.prompt_id),
        Some(QueuePosition::Running)
    );
    assert!(
        queue
            .queue_pending
            .iter()
            .all(|item| item.prompt_id != response.prompt_id),
        "the prompt was not submitted a second time"
    );
    h.client().interrupt(&response.prompt_id).await.unwrap();
    assert!(matches!(
        terminal(&mut watch).await,
        PromptEvent::Interrupted { .. }
    ));
    h.stop().await;
}

#[tokio::test]
async fn uploads_land_in_input_and_download_again() {
    let h = Harness::start().await;
    // Any bytes do: the fake stores uploads as they come.
    let content = Bytes::from(
        (0..4096u32)
            .map(|i| (i * 31 % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let first = h
        .client()
        .upload_image(content.clone(), "client_upload.png", "client_test", true)
        .await
        .unwrap();
    assert_eq!(first.name, "client_upload.png");
    assert_eq!(first.subfolder, "client_test");
    assert_eq!(first.file_type, "input");
    // Without overwrite, different content under the same name is renamed (identical content
    // is recognised as a duplicate, as ComfyUI does).
    let same = h
        .client()
        .upload_image(content.clone(), "client_upload.png", "client_test", false)
        .await
        .unwrap();
    assert_eq!(same.name, first.name);
    let second = h
        .client()
        .upload_image(
            Bytes::from_static(b"other bytes"),
            "client_upload.png",
            "client_test",
            false,
        )
        .await
        .unwrap();
    assert_ne!(second.name, first.name);

    let back: Vec<u8> = h
        .client()
        .view(&first.name, &first.subfolder, FileType::Input)
        .await
        .unwrap()
        .try_fold(Vec::new(), |mut all, chunk| async move {
            all.extend_from_slice(&chunk);
            Ok(all)
        })
        .await
        .unwrap();
    assert_eq!(back, content);
    assert!(matches!(
        h.client()
            .upload_image(content, "../escape.png", "", true)
            .await,
        Err(ComfyError::InvalidArgument { .. })
    ));
    h.stop().await;
}

#[tokio::test]
async fn a_server_error_on_submit_is_typed_and_not_retried() {
    let h = Harness::start().await;
    h.fake.faults().set_http_500(true);
    let error = h
        .socket
        .submit(Uuid::new_v4(), &delay_prompt(0.2, 1), None)
        .await
        .expect_err("the server fails");
    let ComfyError::Http { status, body, .. } = &error else {
        panic!("expected an http error, got {error}");
    };
    assert_eq!(*status, 500);
    assert!(body.starts_with("500 Internal Server Error"), "{body}");
    // Idempotent reads are retried, then fail typed too.
    assert_eq!(h.client().queue().await.unwrap_err().status(), Some(500));

    h.fake.faults().set_http_500(false);
    let queue = h.client().queue().await.unwrap();
    assert!(queue.queue_running.is_empty() && queue.queue_pending.is_empty());
    h.stop().await;
}

/// A backend behind a hop that redirects every request (307: same method, same body) to the
/// fake. The prompt's POST, which goes through hyper directly on a plain-http backend, is sent
/// again through reqwest, which follows redirects as it does for every other route.
#[tokio::test]
async fn a_redirected_prompt_post_follows_the_redirect() {
    use axum::http::{StatusCode, Uri, header::LOCATION};
    use axum::response::IntoResponse;

    let fake = FakeComfy::start(FakeOptions::default())
        .await
        .expect("the fake starts");
    let target = fake.base_url().trim_end_matches('/').to_owned();
    let hop = axum::Router::new().fallback(move |uri: Uri| {
        let target = target.clone();
        async move {
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(LOCATION, format!("{target}{path}"))],
            )
                .into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hop_url = format!("http://{}/", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, hop).await });

    let client = ComfyClient::new(&ServerConfig {
        url: hop_url,
        timeout_seconds: 5.0,
        ..ServerConfig::default()
    })
    .expect("a client");
    let prompt_id = Uuid::new_v4();
    let response = tokio::time::timeout(
        HANG_GUARD,
        client.submit_prompt(prompt_id, "redirected", &delay_prompt(0.0, 1), None),
    )
    .await
    .expect("hang guard")
    .expect("the prompt is accepted through the redirect");
    assert_eq!(response.prompt_id, prompt_id.hyphenated().to_string());
    // It reached the fake: the fake knows the prompt.
    let found = tokio::time::timeout(HANG_GUARD, async {
        loop {
            match client.locate(&response.prompt_id).await.expect("lookup") {
                PromptLocation::Unknown => tokio::time::sleep(Duration::from_millis(20)).await,
                found => return found,
            }
        }
    })
    .await
    .expect("hang guard");
    assert!(!matches!(found, PromptLocation::Unknown));
    server.abort();
    fake.shutdown().await;
}
