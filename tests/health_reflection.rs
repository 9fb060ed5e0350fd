//! gRPC health (Check and Watch, readiness on shutdown) and server
//! reflection v1 and v1alpha against a real server.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use comfy_reality::config::Config;
use common::TestServer;
use prost::Message as _;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

/// Bounds waits that only a bug could make long; not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(20);

const API_SERVICES: [&str; 3] = [
    "comfyreality.runtime.v1.TaskService",
    "comfyreality.runtime.v1.WorkflowService",
    "comfyreality.runtime.v1.AdminService",
];

#[tokio::test]
async fn health_check_is_serving_for_server_probes_and_api_services() {
    let server = TestServer::start().await;
    let mut health = server.health();
    for name in ["", "liveness", "readiness"]
        .into_iter()
        .chain(API_SERVICES)
    {
        let response = health
            .check(HealthCheckRequest {
                service: name.to_owned(),
            })
            .await
            .unwrap_or_else(|e| panic!("check {name:?}: {e:?}"))
            .into_inner();
        assert_eq!(
            response.status(),
            ServingStatus::Serving,
            "service {name:?}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn health_check_of_unknown_service_is_not_found() {
    let server = TestServer::start().await;
    let status = server
        .health()
        .check(HealthCheckRequest {
            service: "comfyreality.runtime.v1.NoSuchService".to_owned(),
        })
        .await
        .expect_err("unknown service must not be SERVING");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn readiness_watch_sees_not_serving_when_shutdown_is_requested() {
    let server = TestServer::start().await;
    let mut stream = server
        .health()
        .watch(HealthCheckRequest {
            service: "readiness".to_owned(),
        })
        .await
        .expect("watch readiness")
        .into_inner();
    let first = stream
        .next()
        .await
        .expect("watch sends the current status")
        .expect("first watch message");
    assert_eq!(first.status(), ServingStatus::Serving);

    server.request_shutdown();
    let mut seen = Vec::new();
    loop {
        match stream.next().await {
            Some(Ok(message)) => {
                seen.push(message.status());
                if message.status() == ServingStatus::NotServing {
                    break;
                }
            }
            other => panic!("stream ended before NOT_SERVING: {other:?}, saw {seen:?}"),
        }
    }
    assert_eq!(seen.last(), Some(&ServingStatus::NotServing));
    drop(stream);
    server.shutdown().await;
}

#[tokio::test]
async fn whole_server_and_api_service_watches_go_not_serving_on_shutdown() {
    let server = TestServer::start().await;
    let mut health = server.health();
    let mut streams = Vec::new();
    for name in ["", API_SERVICES[0]] {
        let mut stream = health
            .watch(HealthCheckRequest {
                service: name.to_owned(),
            })
            .await
            .unwrap_or_else(|e| panic!("watch {name:?}: {e:?}"))
            .into_inner();
        let first = stream
            .next()
            .await
            .expect("current status")
            .expect("message");
        assert_eq!(first.status(), ServingStatus::Serving, "{name:?}");
        streams.push((name, stream));
    }
    server.request_shutdown();
    for (name, stream) in &mut streams {
        let message = stream
            .next()
            .await
            .unwrap_or_else(|| panic!("{name:?} stream ended before NOT_SERVING"))
            .unwrap_or_else(|e| panic!("{name:?}: {e:?}"));
        assert_eq!(message.status(), ServingStatus::NotServing, "{name:?}");
    }
    drop(streams);
    server.shutdown().await;
}

#[tokio::test]
async fn open_streams_are_closed_once_the_drain_deadline_passes() {
    // Shutdown gives in-flight calls `shutdown_grace_seconds`, then closes
    // what is left: after `run` returns, no call may still be served.
    let mut config = Config::default();
    config.service.shutdown_grace_seconds = 0.2;
    let server = TestServer::start_with(config).await;
    let mut stream = server
        .health()
        .watch(HealthCheckRequest {
            service: "readiness".to_owned(),
        })
        .await
        .expect("watch readiness")
        .into_inner();
    let first = stream
        .next()
        .await
        .expect("current status")
        .expect("message");
    assert_eq!(first.status(), ServingStatus::Serving);
    server.request_shutdown();
    let second = stream.next().await.expect("update").expect("message");
    assert_eq!(second.status(), ServingStatus::NotServing);

    // The watch stays open, so `run` returns only at the drain deadline.
    server.shutdown().await;

    // A hang guard, not a timing assertion: the stream must end (with an
    // error status or end-of-stream), not keep being served.
    let next = tokio::time::timeout(HANG_GUARD, stream.next()).await;
    match next {
        Ok(None | Some(Err(_))) => {}
        Ok(Some(Ok(message))) => panic!("stream still served after shutdown: {message:?}"),
        Err(_) => panic!("the watch stream is still open {HANG_GUARD:?} after run() returned"),
    }
}

#[tokio::test]
async fn shutdown_ends_idle_event_streams_at_once_with_unavailable_and_where_to_resume() {
    use comfy_reality::pb::SubscribeEventsRequest;
    use tonic_types::StatusExt as _;
    // A grace far longer than the hang guard: the drain must not wait for it.
    let mut config = Config::default();
    config.service.shutdown_grace_seconds = 600.0;
    let server = TestServer::start_with(config).await;
    let mut events = server.events();
    let newest = events
        .list_events(comfy_reality::pb::ListEventsRequest::default())
        .await
        .expect("list events")
        .into_inner()
        .last_sequence;
    let mut stream = events
        .subscribe_events(SubscribeEventsRequest {
            after_sequence: Some(newest),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    server.request_shutdown();
    let status = loop {
        match tokio::time::timeout(HANG_GUARD, stream.next()).await {
            Ok(Some(Ok(_heartbeat_or_event))) => continue,
            Ok(Some(Err(status))) => break status,
            Ok(None) => panic!("the stream ended without a status"),
            Err(_) => panic!("the stream is still open {HANG_GUARD:?} after shutdown began"),
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    let last: u64 = info
        .metadata
        .get("last_sequence")
        .expect("last_sequence in the details")
        .parse()
        .expect("a number");
    assert!(last >= newest, "{last} < {newest}");
    // With the only stream ended, the drain finishes long before its grace.
    tokio::time::timeout(HANG_GUARD, server.shutdown())
        .await
        .expect("the drain waited for its deadline although no call was open");
}

async fn list_services_v1(server: &TestServer) -> BTreeSet<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = server
        .reflection_v1()
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1 call")
        .into_inner();
    let response = responses
        .next()
        .await
        .expect("one response")
        .expect("reflection v1 response");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection v1 response {other:?}"),
    }
}

async fn list_services_v1alpha(server: &TestServer) -> BTreeSet<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = server
        .reflection_v1alpha()
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1alpha call")
        .into_inner();
    let response = responses
        .next()
        .await
        .expect("one response")
        .expect("reflection v1alpha response");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection v1alpha response {other:?}"),
    }
}

#[tokio::test]
async fn reflection_v1_lists_api_health_and_reflection_services() {
    let server = TestServer::start().await;
    let services = list_services_v1(&server).await;
    for name in API_SERVICES.into_iter().chain([
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ]) {
        assert!(services.contains(name), "{name} missing from {services:?}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn reflection_v1alpha_lists_api_health_and_reflection_services() {
    let server = TestServer::start().await;
    let services = list_services_v1alpha(&server).await;
    for name in API_SERVICES.into_iter().chain([
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ]) {
        assert!(services.contains(name), "{name} missing from {services:?}");
    }
    server.shutdown().await;
}

fn defines_service(files: &[Vec<u8>], package: &str, service: &str) -> bool {
    files.iter().any(|bytes| {
        let file = prost_types::FileDescriptorProto::decode(bytes.as_slice())
            .expect("a FileDescriptorProto");
        file.package() == package && file.service.iter().any(|s| s.name() == service)
    })
}

#[tokio::test]
async fn reflection_v1_file_containing_task_service_describes_it() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let server = TestServer::start().await;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "comfyreality.runtime.v1.TaskService".to_owned(),
        )),
    };
    let response = server
        .reflection_v1()
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection call")
        .into_inner()
        .next()
        .await
        .expect("one response")
        .expect("reflection response");
    let Some(MessageResponse::FileDescriptorResponse(files)) = response.message_response else {
        panic!(
            "expected a file descriptor, got {:?}",
            response.message_response
        );
    };
    assert!(
        defines_service(
            &files.file_descriptor_proto,
            "comfyreality.runtime.v1",
            "TaskService"
        ),
        "no descriptor among {} files defines TaskService",
        files.file_descriptor_proto.len()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn reflection_v1alpha_file_containing_task_service_describes_it() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let server = TestServer::start().await;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "comfyreality.runtime.v1.TaskService".to_owned(),
        )),
    };
    let response = server
        .reflection_v1alpha()
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection call")
        .into_inner()
        .next()
        .await
        .expect("one response")
        .expect("reflection response");
    let Some(MessageResponse::FileDescriptorResponse(files)) = response.message_response else {
        panic!(
            "expected a file descriptor, got {:?}",
            response.message_response
        );
    };
    assert!(defines_service(
        &files.file_descriptor_proto,
        "comfyreality.runtime.v1",
        "TaskService"
    ));
    server.shutdown().await;
}
