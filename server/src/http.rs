//! The HTTP API and the metrics endpoint. Every error is a JSON [`ErrorBody`] with a
//! 4xx status the caller can act on; the OpenAPI document is generated from these
//! handlers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures::Stream;
use jetbridge_core::ErrorKind;
use jetbridge_core::ports::{BuildFilter, BuildId, BuildState, InFlightLimit, NewBuild};
use serde::Deserialize;
use sha2::Digest as _;
use subtle::ConstantTimeEq;
use utoipa::{IntoParams, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{
    BuildList, BuildView, EndEvent, ErrorBody, Health, InfoView, PipelineList, PipelineView,
    SubmitRequest, epoch_ms, kinds,
};
use crate::spec::{BuildSpec, Policy};
use crate::worker::{ABORT_REASON, Server, Shared};

type AppState = Arc<Shared>;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                error: kind.to_owned(),
                message: message.into(),
                location: None,
            },
            retry_after: None,
        }
    }

    /// The response for a failed port call.
    fn port(e: jetbridge_core::Error) -> Self {
        let (status, kind) = match e.kind() {
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not-found"),
            ErrorKind::Conflict | ErrorKind::AlreadyExists => (StatusCode::CONFLICT, "conflict"),
            ErrorKind::Invalid => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ErrorKind::Busy => (StatusCode::TOO_MANY_REQUESTS, "busy"),
            _ if e.is_retryable() => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let mut err = ApiError::new(status, kind, e.to_string());
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            err.retry_after = Some(5);
        }
        err
    }

    /// A request the framework could not read (its status is the framework's: 400,
    /// 413, 415, 422).
    fn rejected(status: StatusCode, message: String) -> Self {
        let kind = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "too-large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
            _ => "invalid",
        };
        ApiError::new(status, kind, message)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::rejected(r.status(), r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::rejected(StatusCode::BAD_REQUEST, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::rejected(StatusCode::BAD_REQUEST, r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn build_id(raw: &str) -> ApiResult<BuildId> {
    raw.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no build {raw:?}: build ids are numbers"),
        )
    })
}

#[derive(OpenApi)]
#[openapi(
    info(title = "jetbridge", description = "Queue CI builds, follow their events, abort them."),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API's router and its OpenAPI document.
fn api(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let (api, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(submit, list))
        .routes(routes!(get_build))
        .routes(routes!(events))
        .routes(routes!(abort))
        .routes(routes!(pipelines))
        .routes(routes!(info))
        .routes(routes!(openapi_json))
        .split_for_parts();
    let doc_for_route = Arc::new(doc.clone());
    let api = api
        .layer(axum::Extension(doc_for_route))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state.clone());
    let (health, health_doc) = OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .split_for_parts();
    let mut doc = doc;
    doc.merge(health_doc);
    let body_limit = state.config.max_body_bytes;
    let router = Router::new()
        .merge(api)
        .merge(health.with_state(state))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit));
    (router, doc)
}

impl Server {
    /// The API router (serve it on `--listen`).
    pub fn router(&self) -> Router {
        api(self.shared.clone()).0
    }

    /// The OpenAPI document of the API.
    pub fn openapi(&self) -> utoipa::openapi::OpenApi {
        api(self.shared.clone()).1
    }

    /// The metrics router (serve it on `--metrics-listen`): `GET /metrics`.
    pub fn metrics_router(&self) -> Router {
        let shared = self.shared.clone();
        Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let s = shared.clone();
                async move {
                    if let Ok(d) = s.queue.depth().await {
                        s.metrics.set_depth(d.queued, d.running);
                    }
                    s.metrics
                        .heartbeat_age
                        .set(s.session.heartbeat_age().as_secs_f64());
                    // Read from what the worker tracks, never kept twice.
                    s.metrics
                        .builds_running
                        .set(i64::try_from(s.running_count()).unwrap_or(i64::MAX));
                    s.metrics.steps_running.set(
                        i64::try_from(s.session.runner().active_steps().len()).unwrap_or(i64::MAX),
                    );
                    s.metrics.read_secrets().await;
                    if let Ok(pods) = s
                        .session
                        .runtime()
                        .pods
                        .list(&jetbridge_core::names::worker_selector(s.session.worker()))
                        .await
                    {
                        s.metrics
                            .pods_owned
                            .set(i64::try_from(pods.len()).unwrap_or(i64::MAX));
                    }
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        s.metrics.encode(),
                    )
                }
            }),
        )
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this route does not take that method (see /api/v1/openapi.json)",
    )
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not-found", "no such route")
}

/// Bearer tokens, when the server has any. Compared in constant time, against every
/// token, so neither the match nor which token matched shows in the timing.
async fn auth(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if s.config.tokens.is_empty() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Digests, so that the comparison takes the same time whatever the lengths.
    let given_digest = sha2::Sha256::digest(given.as_bytes());
    let mut ok = subtle::Choice::from(0);
    for t in &s.config.tokens {
        ok |= given_digest
            .as_slice()
            .ct_eq(sha2::Sha256::digest(t.as_bytes()).as_slice());
    }
    if bool::from(ok) && !given.is_empty() {
        next.run(req).await
    } else {
        let mut res = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a bearer token is required: send `Authorization: Bearer TOKEN` \
             (jetbridge: --token-file or JETBRIDGE_TOKEN_FILE)",
        )
        .into_response();
        res.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        res
    }
}

/// Queue a build.
#[utoipa::path(
    post, path = "/api/v1/builds", tag = "builds",
    request_body = SubmitRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Queued", body = BuildView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "The plan does not validate, or the job does not exist", body = ErrorBody),
        (status = 429, description = "The queue is full; retry after the Retry-After seconds", body = ErrorBody),
        (status = 503, description = "The queue is unreachable", body = ErrorBody),
    )
)]
async fn submit(
    State(s): State<AppState>,
    body: Result<Json<SubmitRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, HeaderMap, Json<BuildView>)> {
    let Json(req) = body?;
    let policy = Policy {
        allow_local_resources: s.config.allow_local_resources,
        local_backend: s.local_backend,
    };
    let rejected = |r: crate::spec::Rejected| {
        s.metrics.submission("invalid");
        let mut e = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            r.message.clone(),
        );
        e.body.location = r.location_view();
        e
    };
    let (spec, pipeline) = BuildSpec::accept(req, policy).map_err(rejected)?;
    spec.check_runnable(&pipeline, s.local_backend, &s.images)
        .map_err(rejected)?;
    let mut spec = spec;
    if !spec.vars.is_empty() {
        match &s.config.vars_key {
            Some(key) => spec
                .seal_vars(key)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?,
            None if s.queue.capabilities().persistent => {
                s.metrics.submission("invalid");
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    "this server stores builds in a database and has no key to seal their \
                     variables (start it with --vars-key-file), so it refuses `vars`, which \
                     are often secrets",
                ));
            }
            None => {}
        }
    }
    let stored = serde_json::to_vec(&spec).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("encoding the submission: {e}"),
        )
    })?;
    let limits = pipeline
        .job(&spec.job)
        .map(|job| in_flight_limits(&pipeline.name, job))
        .unwrap_or_default();
    let new = NewBuild::new(pipeline.name.clone(), spec.job.clone(), stored)
        .with_max_queued(s.config.max_queued)
        .with_limits(limits);
    let build = s.queue.submit(&new).await.map_err(|e| {
        if e.kind() == ErrorKind::Busy {
            s.metrics.submission("busy");
        }
        ApiError::port(e)
    })?;
    s.metrics.submission("accepted");
    s.submitted();
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/builds/{}", build.id)) {
        headers.insert(header::LOCATION, v);
    }
    Ok((StatusCode::CREATED, headers, Json(BuildView::of(&build))))
}

/// What the queue must hold a build of `job` for: its `max_in_flight` among builds of
/// the job (`serial: true` is a `max_in_flight` of 1), and one at a time in each of its
/// `serial_groups`. Keys are scoped by the pipeline's name, the name builds are listed
/// under.
fn in_flight_limits(pipeline: &str, job: &jetbridge_core::plan::Job) -> Vec<InFlightLimit> {
    let mut limits: Vec<InFlightLimit> = job
        .max_in_flight
        .map(|max| InFlightLimit::job(pipeline, &job.name, max))
        .into_iter()
        .collect();
    for group in &job.serial_groups {
        let limit = InFlightLimit::serial_group(pipeline, group);
        // A group named twice is one group.
        if !limits.contains(&limit) {
            limits.push(limit);
        }
    }
    limits
}

/// Filters and cursor of the build list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only builds in these states, comma-separated (`queued,running`).
    state: Option<String>,
    /// Only builds of this pipeline.
    pipeline: Option<String>,
    /// Only builds of this job.
    job: Option<String>,
    /// Only builds older than this id (the `next` of the previous page).
    before: Option<u64>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<usize>,
}

/// List builds, newest first.
#[utoipa::path(
    get, path = "/api/v1/builds", tag = "builds",
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page", body = BuildList),
        (status = 400, description = "A malformed filter", body = ErrorBody),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 503, description = "The queue is unreachable", body = ErrorBody),
    )
)]
async fn list(
    State(s): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<BuildList>> {
    let Query(q) = q?;
    let mut filter = BuildFilter::default();
    if let Some(states) = q.state.as_deref().filter(|s| !s.is_empty()) {
        let mut parsed = Vec::new();
        for name in states.split(',') {
            parsed.push(BuildState::parse(name.trim()).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    format!(
                        "state: no state {name:?} (queued, running, succeeded, failed, errored, aborted)"
                    ),
                )
            })?);
        }
        filter = filter.with_states(parsed);
    }
    if let Some(p) = q.pipeline {
        filter = filter.with_pipeline(p);
    }
    if let Some(j) = q.job {
        filter = filter.with_job(j);
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("limit: {limit} is out of range; give 1 to 500"),
        ));
    }
    filter = filter.with_before(q.before.map(BuildId)).with_limit(limit);
    let page = s.queue.list(&filter).await.map_err(ApiError::port)?;
    Ok(Json(BuildList {
        builds: page.builds.iter().map(BuildView::of).collect(),
        next: page.next.map(|id| id.0),
    }))
}

/// Filters of the pipeline list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PipelinesQuery {
    /// Only pipelines of this team.
    team: Option<String>,
    /// Only pipelines of this name (every instance of it).
    name: Option<String>,
}

/// The pipelines builds' `set_pipeline` steps recorded (at most 1,000), ordered by team,
/// name and instance vars. They are recorded, not triggered.
#[utoipa::path(
    get, path = "/api/v1/pipelines", tag = "pipelines",
    params(PipelinesQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The pipelines", body = PipelineList),
        (status = 400, description = "A malformed filter", body = ErrorBody),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 422, description = "A filter the queue cannot hold", body = ErrorBody),
        (status = 503, description = "The queue is unreachable", body = ErrorBody),
    )
)]
async fn pipelines(
    State(s): State<AppState>,
    q: Result<Query<PipelinesQuery>, QueryRejection>,
) -> ApiResult<Json<PipelineList>> {
    let Query(q) = q?;
    let stored = s
        .queue
        .pipelines(q.team.as_deref(), q.name.as_deref())
        .await
        .map_err(ApiError::port)?;
    let key = s.config.vars_key.as_deref();
    Ok(Json(PipelineList {
        pipelines: stored
            .into_iter()
            .map(|p| PipelineView {
                var_names: crate::pipelines::var_names(&p.pipeline.vars, key),
                instance_vars: serde_json::from_str(&p.pipeline.instance_vars).unwrap_or_default(),
                team: p.pipeline.team,
                name: p.pipeline.name,
                config: p.pipeline.config,
                file: p.pipeline.file,
                version: p.version,
                set_by_build: p.set_by.0,
                created_at_ms: epoch_ms(p.created_at),
                updated_at_ms: epoch_ms(p.updated_at),
            })
            .collect(),
    }))
}

/// One build: status, queue position, steps, artifacts, timings, failure reason.
#[utoipa::path(
    get, path = "/api/v1/builds/{id}", tag = "builds",
    params(("id" = String, Path, description = "The build's number")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The build", body = BuildView),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 404, description = "No such build", body = ErrorBody),
        (status = 503, description = "The queue is unreachable", body = ErrorBody),
    )
)]
async fn get_build(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<BuildView>> {
    let Path(id) = id?;
    let build = s.queue.get(build_id(&id)?).await.map_err(ApiError::port)?;
    Ok(Json(BuildView::of(&build)))
}

/// Where an event stream resumes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Resume after this event id (as the `Last-Event-ID` header does; the header wins).
    after: Option<u64>,
    /// `false`: end the stream after the events stored now (with `end` only if the
    /// build has ended) instead of following the build. Default `true`.
    follow: Option<bool>,
}

/// The build's events as Server-Sent Events: `step-started`, `output`,
/// `step-finished`, `notice`, each with its id; then one `end` with the final build.
#[utoipa::path(
    get, path = "/api/v1/builds/{id}/events", tag = "builds",
    params(
        ("id" = String, Path, description = "The build's number"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"),
        EventsQuery,
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "A malformed cursor", body = ErrorBody),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 404, description = "No such build", body = ErrorBody),
        (status = 503, description = "The queue is unreachable", body = ErrorBody),
    )
)]
async fn events(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let Path(id) = id?;
    let Query(q) = q?;
    let id = build_id(&id)?;
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "Last-Event-ID must be an event id (a number)",
                )
            })?,
        None => q.after.unwrap_or(0),
    };
    let follow = q.follow.unwrap_or(true);
    // Unknown builds are a 404 before the stream starts.
    s.queue.get(id).await.map_err(ApiError::port)?;
    let stream = async_stream::stream! {
        let mut cursor = after;
        const PAGE: usize = 500;
        loop {
            // Every notice of an append from now on wakes this pass's wait.
            let tick = s.events_tick.notified();
            tokio::pin!(tick);
            tick.as_mut().enable();
            // The state first: a build seen ended has all its events written.
            let build = match s.queue.get(id).await {
                Ok(b) => b,
                Err(e) => {
                    yield Ok(Event::default().event("error").data(e.to_string()));
                    break;
                }
            };
            let page = match s.queue.events(id, cursor, PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    yield Ok(Event::default().event("error").data(e.to_string()));
                    break;
                }
            };
            let full = page.len() == PAGE;
            for e in page {
                cursor = e.seq;
                yield Ok(Event::default().id(e.seq.to_string()).event(e.kind).data(e.data));
            }
            if full {
                continue;
            }
            if build.state.is_final() {
                let end = EndEvent { build: BuildView::of(&build) };
                yield Ok(Event::default()
                    .event(kinds::END)
                    .data(serde_json::to_string(&end).unwrap_or_default()));
                break;
            }
            if !follow {
                break;
            }
            // Another replica's appends are seen by polling.
            tokio::select! {
                _ = tick => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Abort a build: a queued one ends `aborted` at once; a running one is aborted and
/// its `on_abort` and `ensure` hooks run.
#[utoipa::path(
    post, path = "/api/v1/builds/{id}/abort", tag = "builds",
    params(("id" = String, Path, description = "The build's number")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Abort requested (or done, for a queued build)", body = BuildView),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 404, description = "No such build", body = ErrorBody),
        (status = 409, description = "The build has ended", body = ErrorBody),
        (status = 503, description = "The queue is unreachable", body = ErrorBody),
    )
)]
async fn abort(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<BuildView>> {
    let Path(id) = id?;
    let id = build_id(&id)?;
    let build = s
        .queue
        .request_abort(id, ABORT_REASON)
        .await
        .map_err(ApiError::port)?;
    // Its holder learns it at its next renewal; if that is this replica, now.
    s.abort_here(id, ABORT_REASON);
    s.events_tick.notify_waiters();
    Ok(Json(BuildView::of(&build)))
}

/// What this server is and how it is set.
#[utoipa::path(
    get, path = "/api/v1/info", tag = "server",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The server", body = InfoView),
        (status = 401, description = "No or wrong token", body = ErrorBody),
    )
)]
async fn info(State(s): State<AppState>) -> Json<InfoView> {
    Json(InfoView {
        version: s.config.version.clone(),
        worker: s.session.worker().to_owned(),
        max_builds: s.config.max_builds as u64,
        max_queued: s.config.max_queued,
        shared_queue: s.queue.capabilities().shared,
        draining: s.is_draining(),
        local_resources: s.config.allow_local_resources,
    })
}

/// This document.
#[utoipa::path(
    get, path = "/api/v1/openapi.json", tag = "server",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The OpenAPI 3 description of this API", body = Object),
        (status = 401, description = "No or wrong token", body = ErrorBody),
    )
)]
async fn openapi_json(
    axum::Extension(doc): axum::Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Json<serde_json::Value> {
    Json(serde_json::to_value(&*doc).unwrap_or_default())
}

/// Alive: the process serves requests.
#[utoipa::path(
    get, path = "/healthz", tag = "server",
    responses((status = 200, description = "Alive", body = Health))
)]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

/// Ready to take builds: the queue, the registry and the backend answer, the worker is
/// registered, and the replica is not draining.
#[utoipa::path(
    get, path = "/readyz", tag = "server",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Draining, or a dependency is unreachable", body = Health),
    )
)]
async fn readyz(State(s): State<AppState>) -> (StatusCode, Json<Health>) {
    let unready = |status: String| (StatusCode::SERVICE_UNAVAILABLE, Json(Health { status }));
    if s.is_draining() {
        return unready("draining".to_owned());
    }
    if let Some(why) = s.session.lost() {
        return unready(format!("worker registration lost: {why}"));
    }
    if let Err(e) = s.queue.depth().await {
        return unready(format!("queue unreachable: {e}"));
    }
    if let Err(e) = s.session.runtime().registry.workers().await {
        return unready(format!("registry unreachable: {e}"));
    }
    if let Err(e) = s
        .session
        .runtime()
        .pods
        .list(&jetbridge_core::names::worker_selector(s.session.worker()))
        .await
    {
        return unready(format!("backend unreachable: {e}"));
    }
    (
        StatusCode::OK,
        Json(Health {
            status: "ok".to_owned(),
        }),
    )
}
