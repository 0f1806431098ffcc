//! The HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the process runs) and `/readyz`
//! (consuming: broker connected, topology declared, model loaded), served by axum (hyper), so
//! request parsing, keep-alive and accept errors (which back off instead of spinning) are a
//! maintained library's job.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// The content type of the Prometheus text exposition.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Ready = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Clone)]
struct Endpoint {
    metrics: Arc<Metrics>,
    ready: Ready,
}

async fn metrics(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        endpoint.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(endpoint): State<Endpoint>) -> (StatusCode, &'static str) {
    if (endpoint.ready)() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found\n")
}

/// The routes, for serving or for tests.
pub fn router<F>(metrics: Arc<Metrics>, ready: F) -> Router
where
    F: Fn() -> bool + Send + Sync + 'static,
{
    Router::new()
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(Endpoint {
            metrics,
            ready: Arc::new(ready),
        })
}

/// Serves until the task is aborted (or the listener fails for good, which is logged).
pub async fn serve<F>(listener: TcpListener, metrics: Arc<Metrics>, ready: F)
where
    F: Fn() -> bool + Send + Sync + 'static,
{
    if let Err(e) = axum::serve(listener, router(metrics, ready)).await {
        tracing::error!(error = %e, "the HTTP endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use inpaint_job::JobStatus;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// One HTTP/1.1 GET over a real socket: (status code, content type, body).
    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
        let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
        socket.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        socket
            .read_to_string(&mut response)
            .await
            .expect("response");
        let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let content_type = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type:")
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_default();
        (status, content_type, body.to_owned())
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::default());
        metrics.count_status(JobStatus::Succeeded);
        metrics.count_plugin_action("blocked", "evil \"stage\"\nsays \\ this");
        let ready = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ready);
        let server = tokio::spawn(serve(listener, Arc::clone(&metrics), move || {
            flag.load(Ordering::SeqCst)
        }));

        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/readyz").await.0, 503);
        ready.store(true, Ordering::SeqCst);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        assert_eq!(get(addr, "/nope").await.0, 404);

        let (status, content_type, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let samples = crate::metrics::exposition::parse(&body).expect("the scrape parses");
        let status_sample = samples
            .iter()
            .find(|(metric, _, _)| metric == "inpaint_jobs_total")
            .expect("jobs counter");
        assert_eq!(
            status_sample.1.get("status").map(String::as_str),
            Some("succeeded")
        );
        assert!(
            samples.iter().any(|(metric, labels, _)| {
                metric == "inpaint_plugin_actions_total"
                    && labels.get("category").map(String::as_str)
                        == Some("evil \"stage\"\nsays \\ this")
            }),
            "{body}"
        );
        server.abort();
    }
}
