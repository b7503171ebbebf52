//! The listener: accepts TCP connections, serves HTTP/1.1 on them with hyper, and drains
//! everything on SIGTERM or SIGINT.

use std::{convert::Infallible, sync::Arc, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use herald_config::BaseConfig;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Everything a request handler needs.
struct App {
    config: BaseConfig,
}

/// Runs the server until a shutdown signal, then drains within `shutdown_grace`.
pub(crate) async fn run(config: BaseConfig) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (HERALD_LISTEN)", config.listen))?;
    let addr = listener
        .local_addr()
        .context("listener has no local address")?;
    tracing::info!(%addr, "listening");

    let app = Arc::new(App { config });
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));

    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        let shutdown = shutdown.clone();
        let header_timeout = app.config.handshake_timeout;
        tracker.spawn(async move {
            let service = service_fn(move |request| {
                let app = Arc::clone(&app);
                async move { Ok::<_, Infallible>(app.handle(request).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "http connection ended with an error");
                    }
                }
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }

    drop(listener);
    tracker.close();
    let grace = app.config.shutdown_grace;
    tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down");
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("shutdown grace period elapsed; dropping the remaining connections");
    }
    tracing::info!("stopped");
    Ok(())
}

impl App {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        match (request.method().as_str(), request.uri().path()) {
            ("GET", "/health/live") => text(StatusCode::OK, "ok"),
            _ => text(StatusCode::NOT_FOUND, "not found"),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn signal_shutdown(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => tracing::info!("SIGTERM received"),
        result = tokio::signal::ctrl_c() => match result {
            Ok(()) => tracing::info!("SIGINT received"),
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGINT");
                return;
            }
        },
    }
    shutdown.cancel();
}
