//! The `GET /metrics` endpoint: bounded connections, header and lifetime timeouts, OpenMetrics
//! or the classic text format as the scraper asks.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use super::{text::prometheus_text, Metrics};

/// Scrapers served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 64;
/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection (keep-alive included) lives at most this long.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// A `--metrics` value that is neither a port nor an address and port.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither a port nor ADDR:PORT (e.g. 9101, 127.0.0.1:9101, [::1]:9101)")]
pub struct ListenError(String);

/// Parses `--metrics`: `PORT` alone binds 127.0.0.1, otherwise `ADDR:PORT` / `[V6]:PORT`.
pub fn parse_listen(text: &str) -> Result<SocketAddr, ListenError> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse::<SocketAddr>().map_err(|_| ListenError(text.to_owned()))
}

/// Serves `GET /metrics` on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // EMFILE and friends: back off rather than spin.
                tracing::warn!("metrics endpoint: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!("metrics endpoint: {MAX_CONNECTIONS} connections open, closing a new one");
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |request| respond(request, Arc::clone(&metrics)));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
        });
    }
}

async fn respond(
    request: Request<hyper::body::Incoming>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let plain = |status: StatusCode, body: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response
    };
    // Prometheus asks for OpenMetrics; curl and promtool get the classic text format.
    let openmetrics = request
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    Ok(match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => match metrics.encode() {
            Ok(text) => {
                let (body, content_type) = if openmetrics {
                    (text, "application/openmetrics-text; version=1.0.0; charset=utf-8")
                } else {
                    (prometheus_text(&text), "text/plain; version=0.0.4; charset=utf-8")
                };
                let mut response = Response::new(Full::new(Bytes::from(body)));
                if let Ok(value) = content_type.parse() {
                    response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
                }
                response
            }
            Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
        },
        (&Method::GET, _) => plain(StatusCode::NOT_FOUND, "rstwatch serves /metrics\n"),
        _ => plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_default_to_loopback() {
        assert_eq!(parse_listen("9101"), Ok(SocketAddr::from(([127, 0, 0, 1], 9101))));
        assert_eq!(parse_listen("0.0.0.0:80"), Ok(SocketAddr::from(([0, 0, 0, 0], 80))));
        assert!(parse_listen("[::1]:9101").is_ok());
        assert!(parse_listen("localhost:9101").is_err());
        assert!(parse_listen("99999").is_err());
    }
}
