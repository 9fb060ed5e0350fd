//! The Prometheus scrape endpoint: `GET /metrics` in the text exposition
//! format, served with axum on its own listener (the caller binds it, so
//! port 0 works and the bound address can be printed), plus the periodic
//! upkeep the exporter needs when nothing scrapes it. It renders whatever
//! the installed recorder holds and owns no metric itself.

use std::io;
use std::time::Duration;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Path of the scrape endpoint.
pub const METRICS_PATH: &str = "/metrics";
/// Content type of the Prometheus text exposition format.
pub const EXPOSITION_CONTENT_TYPE: &str = "text/plain; version=0.0.4";
/// How often histogram samples are folded into their buckets between
/// scrapes, so memory stays bounded when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How long shutdown waits for a scrape in progress before closing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The router: `GET /metrics`; every other path is 404.
pub fn router(handle: PrometheusHandle) -> Router {
    Router::new().route(
        METRICS_PATH,
        get(move || {
            let handle = handle.clone();
            async move { ([(CONTENT_TYPE, EXPOSITION_CONTENT_TYPE)], handle.render()) }
        }),
    )
}

/// Serves the endpoint on `listener` until `shutdown` is cancelled, then
/// lets a scrape in progress finish (bounded by a short grace).
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let server = axum::serve(listener, router(handle.clone()))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    let upkeep = async {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    };
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        result = server => result,
        () = upkeep => Ok(()),
        () = deadline => {
            tracing::debug!("metrics endpoint closed with a scrape still open");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_exposition_until_shutdown() {
        let recorder = crate::telemetry::metrics::tests::recorder();
        let handle = recorder.handle();
        ::metrics::with_local_recorder(&recorder, crate::telemetry::metrics::set_build_info);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, handle, shutdown.clone()));

        let response = reqwest::get(format!("http://{addr}{METRICS_PATH}"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()[CONTENT_TYPE.as_str()],
            EXPOSITION_CONTENT_TYPE
        );
        let body = response.text().await.unwrap();
        assert!(body.contains("comfy_reality_build_info{"), "{body}");
        let missing = reqwest::get(format!("http://{addr}/other")).await.unwrap();
        assert_eq!(missing.status(), 404);

        shutdown.cancel();
        server.await.unwrap().unwrap();
        assert!(
            reqwest::get(format!("http://{addr}{METRICS_PATH}"))
                .await
                .is_err(),
            "still serving after shutdown"
        );
    }
}
