//! The HTTP routes: `/v1/models`, `/v1/chat/completions`, `/v1/completions`, `/health`,
//! `/metrics`; JSON errors for unknown paths and methods.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::errors::ApiError;
use super::openai::{parse_body, ChatRequest, CompletionRequest, SamplingFields};
use super::params;
use super::reply::{Reply, ReplySpec};
use super::state::App;
use super::worker::{self, CancelGuard, Job};
use crate::error::Result;
use crate::generation::GenerationEvent;

/// The router over `app`.
pub(crate) fn router(app: Arc<App>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(app)
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = app.metrics.render(&app.gauges());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn model_json(app: &App) -> Value {
    json!({
        "id": app.model_id,
        "object": "model",
        "created": app.created,
        "owned_by": "moestream",
        "max_model_len": app.max_context,
    })
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_json(&app)]}))
}

async fn model(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    match app.check_model(Some(&id)) {
        Ok(()) => Json(model_json(&app)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn not_found(uri: Uri) -> Response {
    ApiError::route(StatusCode::NOT_FOUND, format!("No route {}", uri.path())).into_response()
}

async fn method_not_allowed(uri: Uri) -> Response {
    ApiError::route(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("Method not allowed on {}", uri.path()),
    )
    .into_response()
}

async fn chat(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let arrived = Instant::now();
    answer(&app, async {
        let body = read_body(body)?;
        let req: ChatRequest = parse_body(&body)?;
        let fields: SamplingFields = parse_body(&body)?;
        app.check_model(req.model.as_deref())?;
        let a = app.clone();
        // Rendering and tokenizing a long prompt is CPU work: off the async threads.
        let planned = tokio::task::spawn_blocking(move || params::chat(&a, req, fields, arrived))
            .await
            .map_err(|e| ApiError::internal(format!("request preparation failed: {e}")))??;
        generate(app.clone(), planned).await
    })
    .await
}

async fn completions(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let arrived = Instant::now();
    answer(&app, async {
        let body = read_body(body)?;
        let req: CompletionRequest = parse_body(&body)?;
        let fields: SamplingFields = parse_body(&body)?;
        app.check_model(req.model.as_deref())?;
        let a = app.clone();
        let planned =
            tokio::task::spawn_blocking(move || params::completion(&a, req, fields, arrived))
                .await
                .map_err(|e| ApiError::internal(format!("request preparation failed: {e}")))??;
        generate(app.clone(), planned).await
    })
    .await
}

/// Counts the request and writes an error as JSON.
async fn answer(
    app: &App,
    f: impl std::future::Future<Output = std::result::Result<Response, ApiError>>,
) -> Response {
    app.metrics.request();
    match f.await {
        Ok(r) => r,
        Err(e) => {
            app.metrics.error();
            if e.status == StatusCode::TOO_MANY_REQUESTS {
                app.metrics.rejected();
            }
            e.into_response()
        }
    }
}

fn read_body(
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Bytes, ApiError> {
    body.map_err(|e| ApiError {
        status: e.status(),
        ..ApiError::invalid(
            format!("could not read the request body: {}", e.body_text()),
            None,
        )
    })
}

/// Waits for a generation slot, starts the generation, and answers: a stream of events,
/// or the whole reply when it is done.
async fn generate(
    app: Arc<App>,
    (job, spec): (Job, ReplySpec),
) -> std::result::Result<Response, ApiError> {
    let permit = app.slots.acquire().await?;
    let (rx, guard) = worker::spawn(app.clone(), job, permit);
    let reply = Reply::new(app, spec);
    if reply.spec.stream {
        Ok(Sse::new(events(rx, guard, reply))
            .keep_alive(KeepAlive::default())
            .into_response())
    } else {
        whole(rx, guard, reply).await
    }
}

/// The whole reply. Dropped early (the client went away), the guard cancels the
/// generation.
async fn whole(
    mut rx: mpsc::Receiver<Result<GenerationEvent>>,
    mut guard: CancelGuard,
    mut reply: Reply,
) -> std::result::Result<Response, ApiError> {
    while let Some(event) = rx.recv().await {
        match event? {
            GenerationEvent::Token {
                id,
                logprob,
                top_logprobs,
                ..
            } => reply.whole_token(id, logprob, &top_logprobs),
            GenerationEvent::Done(c) => {
                guard.disarm();
                return Ok(Json(reply.whole(&c)).into_response());
            }
        }
    }
    Err(ApiError::internal("the generation ended without a result"))
}

struct StreamState {
    rx: mpsc::Receiver<Result<GenerationEvent>>,
    guard: CancelGuard,
    reply: Reply,
    queued: std::collections::VecDeque<Event>,
    started: bool,
    ended: bool,
}

fn data(v: &Value) -> Event {
    Event::default().data(v.to_string())
}

/// The server-sent events of a streamed reply, ending with `data: [DONE]`. Dropped early
/// (the client went away), the guard cancels the generation.
fn events(
    rx: mpsc::Receiver<Result<GenerationEvent>>,
    guard: CancelGuard,
    reply: Reply,
) -> impl Stream<Item = std::result::Result<Event, Infallible>> {
    let state = StreamState {
        rx,
        guard,
        reply,
        queued: Default::default(),
        started: false,
        ended: false,
    };
    stream::unfold(state, |mut s| async move {
        loop {
            if let Some(e) = s.queued.pop_front() {
                return Some((Ok(e), s));
            }
            if s.ended {
                return None;
            }
            if !s.started {
                s.started = true;
                let start = s.reply.stream_start();
                s.queued.extend(start.iter().map(data));
                continue;
            }
            match s.rx.recv().await {
                Some(Ok(GenerationEvent::Token {
                    id,
                    text,
                    logprob,
                    top_logprobs,
                    ..
                })) => {
                    let chunks = s.reply.stream_token(id, &text, logprob, &top_logprobs);
                    s.queued.extend(chunks.iter().map(data));
                }
                Some(Ok(GenerationEvent::Done(c))) => {
                    s.guard.disarm();
                    let chunks = s.reply.stream_end(&c);
                    s.queued.extend(chunks.iter().map(data));
                    s.queued.push_back(Event::default().data("[DONE]"));
                    s.ended = true;
                }
                Some(Err(e)) => {
                    s.queued.push_back(data(&ApiError::from(e).body()));
                    s.queued.push_back(Event::default().data("[DONE]"));
                    s.ended = true;
                }
                None => {
                    let e = ApiError::internal("the generation ended without a result");
                    s.queued.push_back(data(&e.body()));
                    s.queued.push_back(Event::default().data("[DONE]"));
                    s.ended = true;
                }
            }
        }
    })
}
