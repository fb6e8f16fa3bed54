//! An OpenAI-compatible HTTP server (feature `server`; the `moestream-server` binary runs
//! it): `GET /v1/models`, `POST /v1/chat/completions` and `POST /v1/completions` (whole or
//! streamed as server-sent events), `GET /health`, `GET /metrics` (Prometheus text). See
//! docs/server.md.
//!
//! Each request runs in its own [`Session`](crate::Session) on one shared
//! [`Model`](crate::Model), on a blocking thread, at most
//! [`ServerConfig::max_concurrent`] at once with a bounded queue in front (429 with
//! `Retry-After` past it). A prompt cache keeps finished sessions and reuses the longest
//! shared prefix of a new prompt. A client that goes away cancels its generation.
//!
//! ```no_run
//! # fn main() -> moestream::Result<()> {
//! use moestream::server::{ServerConfig, ServerHandle};
//! let mut config = ServerConfig::new(None); // the synthetic demo model
//! config.addr = "127.0.0.1:0".parse().unwrap(); // any free port
//! let server = ServerHandle::start(&config)?;
//! println!("listening on http://{}", server.local_addr());
//! server.shutdown()?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::error::{Error, Result};

mod config;
mod errors;
mod metrics;
mod openai;
mod output;
mod params;
mod prompt_cache;
mod reply;
mod routes;
mod state;
mod worker;

pub use config::ServerConfig;

/// A running server: its address, and the way to stop it. Dropping it stops the server
/// too.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    model_id: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl ServerHandle {
    /// Loads the model, binds the address and serves on a runtime of its own threads;
    /// returns once the server accepts connections.
    pub fn start(config: &ServerConfig) -> Result<ServerHandle> {
        let app = Arc::new(state::App::load(config)?);
        let model_id = app.model_id.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(config.max_concurrent.max(1) + 16)
            .thread_name("moestream-server")
            .enable_all()
            .build()
            .map_err(|e| Error::Server(format!("cannot start the async runtime: {e}")))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(config.addr))
            .map_err(|e| Error::Server(format!("cannot listen on {}: {e}", config.addr)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Server(format!("no local address: {e}")))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let router = routes::router(app, config.max_body_bytes);
        let on_signal = config.stop_on_signal;
        let thread = std::thread::Builder::new()
            .name("moestream-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let shutdown = async move {
                        if on_signal {
                            tokio::select! {
                                _ = stopped => {}
                                _ = signal() => {}
                            }
                        } else {
                            let _ = stopped.await;
                        }
                    };
                    axum::serve(listener, router)
                        .with_graceful_shutdown(shutdown)
                        .await
                        .map_err(|e| Error::Server(format!("serving failed: {e}")))
                })
            })
            .map_err(|e| Error::Server(format!("cannot start the server thread: {e}")))?;
        Ok(ServerHandle {
            addr,
            model_id,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address the server listens on (with the port chosen when the config's was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The id requests name the model by.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Blocks until the server stops (on a signal, with
    /// [`ServerConfig::stop_on_signal`]).
    pub fn wait(mut self) -> Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| Error::Server("the server thread panicked".into()))?,
            None => Ok(()),
        }
    }

    /// Stops accepting connections, lets open ones finish, and returns when it has
    /// stopped.
    pub fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.wait()
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Ctrl-C, or SIGTERM on Unix.
async fn signal() {
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
