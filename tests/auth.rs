//! Access control against the real server on port 0: API keys (both headers, rotation, wrong
//! and missing keys), the role of every method (a table test over every RPC), open health,
//! reflection per `auth.reflection`, rate limits and stream quotas hit and recovered, and
//! audit events for refused and mutating calls.

mod common;

use std::time::Duration;

use comfy_reality::api::access::{METHODS, key_sha256_hex};
use comfy_reality::config::{
    AuthMode, Config, LimitsOverride, PrincipalConfig, ReflectionAccess, Role, Secret,
};
use comfy_reality::pb::{
    CreateTaskRequest, GetRuntimeInfoRequest, ListTasksRequest, SubscribeEventsRequest,
};
use common::TestServer;
use http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt as _;

const VIEWER: &str = "viewer-key-0123456789";
const SUBMITTER: &str = "submitter-key-0123456789";
const SUBMITTER_ROTATED: &str = "submitter-key-rotated";
const ADMIN: &str = "admin-key-0123456789";

fn principal(name: &str, role: Role, keys: &[&str]) -> PrincipalConfig {
    PrincipalConfig {
        name: name.into(),
        tenant: None,
        role,
        api_key_sha256: keys
            .iter()
            .map(|k| Secret::new(key_sha256_hex(k)))
            .collect(),
        cert_names: vec![],
        limits: LimitsOverride::default(),
    }
}

fn auth_config() -> Config {
    let mut config = Config::default();
    config.runtime.queue_type = comfy_reality::config::QueueType::Memory;
    config.auth.mode = AuthMode::ApiKey;
    config.auth.principals = vec![
        principal("vera", Role::Viewer, &[VIEWER]),
        principal("sam", Role::Submitter, &[SUBMITTER, SUBMITTER_ROTATED]),
        principal("ada", Role::Admin, &[ADMIN]),
    ];
    config
}

/// `request` with `authorization: Bearer key`.
fn with_key<T>(message: T, key: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(key) = key {
        let value: MetadataValue<_> = format!("Bearer {key}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Calls `path` with an empty message (every field at its default) and returns the status
/// the server answered with (OK when it answered with a message).
async fn call_empty(channel: Channel, path: &'static str, key: Option<&str>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = PathAndQuery::from_static(path);
    let streaming = comfy_reality::api::access::classify(path.as_str()).stream;
    let result = if streaming {
        grpc.server_streaming(with_key((), key), path, codec)
            .await
            .map(|_| ())
    } else {
        grpc.unary(with_key((), key), path, codec).await.map(|_| ())
    };
    match result {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    }
}

fn assert_reason(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, reason, "{status:?}");
}

#[tokio::test]
async fn every_method_checks_credentials_and_roles() {
    let server = TestServer::start_with(auth_config()).await;
    for (path, class) in METHODS {
        let required = match class.requirement {
            comfy_reality::api::access::Requirement::Role(role) => role,
            other => panic!("{path}: {other:?}"),
        };
        for key in [None, Some("not-a-key")] {
            let code = call_empty(server.channel(), path, key).await;
            assert_eq!(code, Code::Unauthenticated, "{path} with {key:?}");
        }
        for (key, role) in [
            (VIEWER, Role::Viewer),
            (SUBMITTER, Role::Submitter),
            (ADMIN, Role::Admin),
        ] {
            let code = call_empty(server.channel(), path, Some(key)).await;
            if role < required {
                assert_eq!(code, Code::PermissionDenied, "{path} as {role}");
            } else {
                assert!(
                    !matches!(code, Code::PermissionDenied | Code::Unauthenticated),
                    "{path} as {role}: {code:?}"
                );
            }
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn refusals_carry_reasons_and_health_stays_open() {
    let server = TestServer::start_with(auth_config()).await;
    let status = server
        .tasks()
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap_err();
    assert_reason(&status, Code::Unauthenticated, "AuthenticationError");
    assert_eq!(
        status.get_details_error_info().unwrap().metadata["cause"],
        "missing_credentials"
    );
    let status = server
        .tasks()
        .list_tasks(with_key(ListTasksRequest::default(), Some("wrong")))
        .await
        .unwrap_err();
    assert_eq!(
        status.get_details_error_info().unwrap().metadata["cause"],
        "invalid_api_key"
    );
    assert!(!status.message().contains("wrong"), "{status:?}");

    let status = server
        .admin()
        .get_runtime_info(with_key(GetRuntimeInfoRequest::default(), Some(SUBMITTER)))
        .await
        .unwrap_err();
    assert_reason(&status, Code::PermissionDenied, "PermissionError");

    // Both keys of a principal work (rotation), and x-api-key does too.
    for key in [SUBMITTER, SUBMITTER_ROTATED] {
        server
            .tasks()
            .list_tasks(with_key(ListTasksRequest::default(), Some(key)))
            .await
            .unwrap();
    }
    let mut request = Request::new(ListTasksRequest::default());
    request
        .metadata_mut()
        .insert("x-api-key", VIEWER.parse().unwrap());
    server.tasks().list_tasks(request).await.unwrap();

    // Health needs nothing.
    for service in ["", "readiness", "liveness"] {
        server
            .health()
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
    }
    server.shutdown().await;
}

#[tokio::test]
async fn reflection_follows_its_setting() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    let list = || ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    for (access, anonymous_code) in [
        (ReflectionAccess::Authenticated, Some(Code::Unauthenticated)),
        (ReflectionAccess::Open, None),
        (ReflectionAccess::Off, Some(Code::Unauthenticated)),
    ] {
        let mut config = auth_config();
        config.auth.reflection = access;
        let server = TestServer::start_with(config).await;
        let result = server
            .reflection_v1()
            .server_reflection_info(tokio_stream::iter([list()]))
            .await;
        assert_eq!(result.err().map(|s| s.code()), anonymous_code, "{access:?}");
        let with_key_result = server
            .reflection_v1()
            .server_reflection_info(with_key(tokio_stream::iter([list()]), Some(VIEWER)))
            .await;
        let expected = (access == ReflectionAccess::Off).then_some(Code::Unimplemented);
        assert_eq!(
            with_key_result.err().map(|s| s.code()),
            expected,
            "{access:?}"
        );
        server.shutdown().await;
    }
}

#[tokio::test]
async fn a_rate_limit_is_hit_then_recovered() {
    let mut config = auth_config();
    config.auth.principals[1].limits = LimitsOverride {
        submits_per_second: Some(10.0),
        submit_burst: Some(2),
        ..LimitsOverride::default()
    };
    let server = TestServer::start_with(config).await;
    let create = || {
        with_key(
            CreateTaskRequest {
                name: "limited".into(),
                ..CreateTaskRequest::default()
            },
            Some(SUBMITTER),
        )
    };
    for _ in 0..2 {
        server.tasks().create_task(create()).await.unwrap();
    }
    let status = server.tasks().create_task(create()).await.unwrap_err();
    assert_reason(&status, Code::ResourceExhausted, "RateLimitError");
    let retry = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo with a delay");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_millis(100),
        "{retry:?}"
    );
    assert!(status.metadata().get("retry-after").is_some());
    // Another principal is not limited by it, nor are other calls.
    server
        .tasks()
        .list_tasks(with_key(ListTasksRequest::default(), Some(SUBMITTER)))
        .await
        .unwrap();
    // After the advertised delay the limit has room again.
    tokio::time::sleep(retry).await;
    server.tasks().create_task(create()).await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn the_stream_quota_is_hit_then_recovered() {
    let mut config = auth_config();
    config.auth.principals[0].limits.max_streams = Some(1);
    let server = TestServer::start_with(config).await;
    let subscribe = || with_key(SubscribeEventsRequest::default(), Some(VIEWER));
    let held = server.events().subscribe_events(subscribe()).await.unwrap();
    let status = server
        .events()
        .subscribe_events(subscribe())
        .await
        .unwrap_err();
    assert_reason(&status, Code::ResourceExhausted, "RateLimitError");
    assert_eq!(
        status.get_details_error_info().unwrap().metadata["limit"],
        "max_streams"
    );
    drop(held);
    // The slot comes back once the server sees the stream reset; bounded, not timed.
    let mut attempts = 0;
    loop {
        match server.events().subscribe_events(subscribe()).await {
            Ok(_) => break,
            Err(status) if status.code() == Code::ResourceExhausted && attempts < 250 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("the stream slot never came back: {status:?}"),
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn refused_and_mutating_calls_are_audited_for_admins() {
    use comfy_reality::pb::event::Payload;
    use comfy_reality::pb::subscribe_events_response::Item;
    use tokio_stream::StreamExt as _;
    let server = TestServer::start_with(auth_config()).await;
    let _ = server
        .admin()
        .get_runtime_info(with_key(GetRuntimeInfoRequest::default(), Some(VIEWER)))
        .await
        .unwrap_err();
    let task = server
        .tasks()
        .create_task(with_key(
            CreateTaskRequest {
                name: "audited".into(),
                ..CreateTaskRequest::default()
            },
            Some(SUBMITTER),
        ))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let mut stream = server
        .events()
        .subscribe_events(with_key(
            SubscribeEventsRequest {
                after_sequence: Some(0),
                ..SubscribeEventsRequest::default()
            },
            Some(ADMIN),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut audits = Vec::new();
    while audits.len() < 2 {
        let item = stream.next().await.expect("stream open").expect("event");
        let Some(Item::Event(event)) = item.item else {
            continue;
        };
        if let Some(Payload::RuntimeEvent(e)) = event.payload
            && e.event_type == "audit.call"
        {
            audits.push(serde_json::from_str::<serde_json::Value>(&e.data).unwrap());
        }
    }
    assert_eq!(audits[0]["principal"], "vera");
    assert_eq!(audits[0]["outcome"], "PERMISSION_DENIED");
    assert_eq!(
        audits[0]["method"],
        "/comfyreality.runtime.v1.AdminService/GetRuntimeInfo"
    );
    assert!(
        audits[0]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(audits[1]["principal"], "sam");
    assert_eq!(audits[1]["tenant"], "sam");
    assert_eq!(audits[1]["outcome"], "OK");
    assert_eq!(audits[1]["target_id"], task.id.as_str());
    server.shutdown().await;
}
