//! The HTTP side: fault injection, path-style routing, and one handler per
//! operation of the XML API.

use crate::RequestRecord;
use crate::error::{GcsError, XML};
use crate::state::{Shared, lock};
use crate::store::{Object, Preconditions, Resume, WriteMeta, valid_bucket_name};
use crate::util::{
    RangeAnswer, http_date, parse_http_date, percent_decode, resolve_range, unix_secs,
};
use crate::xml::{self, ListEcho};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use jetbridge_sim_http::{FaultReply, RequestLine};
use std::sync::Arc;

type Sh = State<Arc<Shared>>;

/// Build the router: every path goes to one dispatcher, behind the fault layer.
pub(crate) fn router(sh: Arc<Shared>) -> Router {
    Router::new()
        .fallback(handle)
        .layer(middleware::from_fn_with_state(sh.clone(), faults))
        .with_state(sh)
}

/// Records every request and applies injected faults.
async fn faults(State(sh): Sh, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let decoded_path = percent_decode(&path, false).unwrap_or_else(|| path.clone());
    let decoded_query = percent_decode(&query, true).unwrap_or_else(|| query.clone());
    let object = match parse_target(&path) {
        Ok(Target::Object(_, o)) => Some(o),
        _ => None,
    };
    let line = RequestLine {
        method: &method,
        path: &path,
        decoded_path: Some(&decoded_path),
        query: &query,
        decoded_query: Some(&decoded_query),
    };
    let record = RequestRecord {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        object,
    };
    let action = sh.controls.on_request(&line, record);
    tracing::debug!(%method, %path, %query, fault = ?action, "request");
    jetbridge_sim_http::apply(action, req, next, |reply| match reply {
        FaultReply::Status(code) => GcsError::injected(code).into_response(),
        FaultReply::CannotDrop => {
            GcsError::new(500, "InternalError", "the connection cannot be dropped").into_response()
        }
    })
    .await
}

/// What a path names.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// `/`
    Service,
    /// `/{bucket}` (or `/{bucket}/`)
    Bucket(String),
    /// `/{bucket}/{object}`, both percent-decoded.
    Object(String, String),
}

fn bad_uri() -> GcsError {
    GcsError::invalid_argument("Invalid URI: a percent escape is malformed or not UTF-8.")
}

/// Split a raw request path into bucket and object, decoding `%XX` in each. The
/// object is everything after the bucket's slash, slashes included.
fn parse_target(raw: &str) -> Result<Target, GcsError> {
    let p = raw.strip_prefix('/').unwrap_or(raw);
    if p.is_empty() {
        return Ok(Target::Service);
    }
    let (b, o) = p.split_once('/').unwrap_or((p, ""));
    let bucket = percent_decode(b, false).ok_or_else(bad_uri)?;
    if o.is_empty() {
        return Ok(Target::Bucket(bucket));
    }
    let name = percent_decode(o, false).ok_or_else(bad_uri)?;
    Ok(Target::Object(bucket, name))
}

/// A parsed query string (`+` is a space, as in forms).
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: Option<&str>) -> Result<Query, GcsError> {
        let mut v = Vec::new();
        for kv in raw.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, val) = kv.split_once('=').unwrap_or((kv, ""));
            v.push((
                percent_decode(k, true).ok_or_else(bad_uri)?,
                percent_decode(val, true).ok_or_else(bad_uri)?,
            ));
        }
        Ok(Query(v))
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
    fn has(&self, k: &str) -> bool {
        self.0.iter().any(|(key, _)| key == k)
    }
}

/// Sub-resources of the XML API this simulator does not implement.
const UNSIMULATED: &[&str] = &[
    "acl",
    "billing",
    "cors",
    "encryptionConfig",
    "lifecycle",
    "location",
    "logging",
    "storageClass",
    "tagging",
    "versioning",
    "versions",
    "websiteConfig",
    "retention",
    "legalHold",
    "restore",
];

fn unsimulated(q: &Query) -> Result<(), GcsError> {
    match UNSIMULATED.iter().find(|s| q.has(s)) {
        Some(s) => Err(GcsError::not_implemented(&format!(
            "the {s:?} sub-resource"
        ))),
        None => Ok(()),
    }
}

async fn handle(State(sh): Sh, req: Request) -> Response {
    match dispatch(&sh, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(sh: &Arc<Shared>, req: Request) -> Result<Response, GcsError> {
    let target = parse_target(req.uri().path())?;
    let q = Query::parse(req.uri().query())?;
    let method = req.method().clone();
    let (parts, body) = req.into_parts();
    let h = &parts.headers;
    match target {
        Target::Service => match method {
            Method::GET | Method::HEAD => Ok(list_buckets(sh)),
            _ => Err(method_not_allowed()),
        },
        Target::Bucket(b) => {
            unsimulated(&q)?;
            match method {
                Method::PUT => create_bucket(sh, &b),
                Method::HEAD => {
                    lock(&sh.store).bucket(&b)?;
                    Ok(empty(StatusCode::OK))
                }
                Method::GET => list_objects(sh, &b, &q),
                Method::DELETE => {
                    lock(&sh.store).delete_bucket(&b)?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                Method::POST => Err(GcsError::not_implemented("POST object (HTML form upload)")),
                _ => Err(method_not_allowed()),
            }
        }
        Target::Object(b, o) => {
            unsimulated(&q)?;
            match method {
                Method::GET | Method::HEAD => {
                    if q.has("uploadId") {
                        return Err(GcsError::not_implemented("listing the parts of an upload"));
                    }
                    get_object(sh, &b, &o, &q, h, method == Method::HEAD)
                }
                Method::PUT => {
                    need_length(h)?;
                    if let Some(id) = q.get("uploadId") {
                        let data = read_body(body).await?;
                        put_part(sh, &b, &o, id, &q, data)
                    } else if let Some(src) = header_str(h, "x-goog-copy-source")? {
                        copy_object(sh, &b, &o, src, h)
                    } else {
                        let data = read_body(body).await?;
                        put_object(sh, &b, &o, h, data)
                    }
                }
                Method::POST => {
                    need_length(h)?;
                    if q.has("uploads") {
                        initiate(sh, &b, &o, h)
                    } else if let Some(id) = q.get("uploadId") {
                        let data = read_body(body).await?;
                        complete(sh, &b, &o, id, &data)
                    } else {
                        Err(GcsError::invalid_argument(
                            "POST on an object needs ?uploads or ?uploadId.",
                        ))
                    }
                }
                Method::DELETE => {
                    if let Some(id) = q.get("uploadId") {
                        lock(&sh.store).abort(&b, &o, id)?;
                    } else {
                        let generation = q_u64(&q, "generation")?;
                        let pre = preconditions(h)?;
                        lock(&sh.store).delete(&b, &o, generation, &pre)?;
                    }
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => Err(method_not_allowed()),
            }
        }
    }
}

fn method_not_allowed() -> GcsError {
    GcsError::new(
        405,
        "MethodNotAllowed",
        "The specified method is not allowed against this resource.",
    )
}

fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

fn xml_response(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(XML));
    r
}

/// PUT and POST need a length (or a chunked body), as Cloud Storage requires.
fn need_length(h: &HeaderMap) -> Result<(), GcsError> {
    let chunked = h
        .get(header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if h.contains_key(header::CONTENT_LENGTH) || chunked {
        Ok(())
    } else {
        Err(GcsError::new(
            411,
            "MissingContentLength",
            "You must provide the Content-Length HTTP header.",
        ))
    }
}

async fn read_body(body: Body) -> Result<Bytes, GcsError> {
    axum::body::to_bytes(body, usize::MAX).await.map_err(|e| {
        GcsError::new(
            400,
            "IncompleteBody",
            "You did not provide the number of bytes specified by the Content-Length HTTP header.",
        )
        .with_details(e.to_string())
    })
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, GcsError> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| GcsError::invalid_argument(format!("Invalid value of header {name}."))),
    }
}

fn header_u64(h: &HeaderMap, name: &str) -> Result<Option<u64>, GcsError> {
    header_str(h, name)?
        .map(|v| {
            v.trim().parse().map_err(|_| {
                GcsError::invalid_argument(format!("Invalid argument for {name}: {v:?}."))
            })
        })
        .transpose()
}

fn q_u64(q: &Query, name: &str) -> Result<Option<u64>, GcsError> {
    q.get(name)
        .map(|v| {
            v.parse().map_err(|_| {
                GcsError::invalid_argument(format!("Invalid argument for {name}: {v:?}."))
            })
        })
        .transpose()
}

/// The `x-goog-if-*` preconditions of a request (with a header prefix, for the
/// copy source's `x-goog-copy-source-if-*`).
fn preconditions_with(h: &HeaderMap, prefix: &str) -> Result<Preconditions, GcsError> {
    Ok(Preconditions {
        generation_match: header_u64(h, &format!("{prefix}generation-match"))?,
        generation_not_match: header_u64(h, &format!("{prefix}generation-not-match"))?,
        metageneration_match: header_u64(h, &format!("{prefix}metageneration-match"))?,
        metageneration_not_match: header_u64(h, &format!("{prefix}metageneration-not-match"))?,
    })
}

fn preconditions(h: &HeaderMap) -> Result<Preconditions, GcsError> {
    preconditions_with(h, "x-goog-if-")
}

/// The metadata headers of a write.
fn write_meta(h: &HeaderMap) -> Result<WriteMeta, GcsError> {
    let get = |n: &str| header_str(h, n).map(|v| v.map(str::to_owned));
    let mut custom = Vec::new();
    for (k, v) in h {
        if let Some(suffix) = k.as_str().strip_prefix("x-goog-meta-") {
            let v = v
                .to_str()
                .map_err(|_| GcsError::invalid_argument(format!("Invalid value of header {k}.")))?;
            custom.push((suffix.to_owned(), v.to_owned()));
        }
    }
    Ok(WriteMeta {
        content_type: get("content-type")?,
        cache_control: get("cache-control")?,
        content_disposition: get("content-disposition")?,
        content_encoding: get("content-encoding")?,
        content_language: get("content-language")?,
        storage_class: get("x-goog-storage-class")?,
        custom,
    })
}

fn set(r: &mut Response, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::from_str(value)) {
        r.headers_mut().append(n, v);
    }
}

/// The headers that describe a stored object after a write.
fn write_headers(r: &mut Response, o: &Object) {
    set(r, "etag", &o.etag);
    set(r, "x-goog-generation", &o.generation.to_string());
    set(r, "x-goog-metageneration", &o.metageneration.to_string());
    for hash in o.hashes() {
        set(r, "x-goog-hash", &hash);
    }
    set(r, "x-goog-stored-content-length", &o.data.len().to_string());
    set(
        r,
        "x-goog-stored-content-encoding",
        o.meta.content_encoding.as_deref().unwrap_or("identity"),
    );
}

/// The headers of a GET or HEAD of an object.
fn read_headers(r: &mut Response, o: &Object) {
    write_headers(r, o);
    set(r, "content-type", o.content_type());
    set(r, "last-modified", &http_date(o.updated));
    set(r, "accept-ranges", "bytes");
    set(
        r,
        "x-goog-storage-class",
        o.meta.storage_class.as_deref().unwrap_or("STANDARD"),
    );
    set(
        r,
        "cache-control",
        o.meta
            .cache_control
            .as_deref()
            .unwrap_or("private, max-age=0"),
    );
    for (name, v) in [
        ("content-disposition", &o.meta.content_disposition),
        ("content-encoding", &o.meta.content_encoding),
        ("content-language", &o.meta.content_language),
    ] {
        if let Some(v) = v {
            set(r, name, v);
        }
    }
    for (k, v) in &o.meta.custom {
        set(r, &format!("x-goog-meta-{k}"), v);
    }
}

fn list_buckets(sh: &Shared) -> Response {
    let buckets: Vec<_> = lock(&sh.store)
        .buckets
        .iter()
        .map(|(n, b)| (n.clone(), b.created.unwrap_or(std::time::UNIX_EPOCH)))
        .collect();
    xml_response(StatusCode::OK, xml::buckets_result(&buckets))
}

fn create_bucket(sh: &Shared, b: &str) -> Result<Response, GcsError> {
    if !valid_bucket_name(b) {
        return Err(GcsError::new(
            400,
            "InvalidBucketName",
            "The specified bucket is not valid.",
        ));
    }
    if !lock(&sh.store).create_bucket(b) {
        return Err(GcsError::new(
            409,
            "BucketAlreadyOwnedByYou",
            "Your previous request to create the named bucket succeeded and you already own it.",
        ));
    }
    Ok(empty(StatusCode::OK))
}

fn list_objects(sh: &Shared, b: &str, q: &Query) -> Result<Response, GcsError> {
    let v2 = match q.get("list-type") {
        None => false,
        Some("2") => true,
        Some(v) => {
            return Err(GcsError::invalid_argument(format!(
                "Invalid list-type {v:?}."
            )));
        }
    };
    let url_encoded = match q.get("encoding-type") {
        None => false,
        Some("url") => true,
        Some(v) => {
            return Err(GcsError::invalid_argument(format!(
                "Invalid encoding-type {v:?}."
            )));
        }
    };
    let cap = sh.config.max_keys.max(1);
    let max_keys = match q.get("max-keys") {
        None => cap,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| GcsError::invalid_argument(format!("Invalid max-keys {v:?}.")))?
            .min(cap),
    };
    let prefix = q.get("prefix").unwrap_or("");
    let delimiter = q.get("delimiter").filter(|d| !d.is_empty());
    let mut after = Vec::new();
    let token = if v2 {
        q.get("continuation-token")
    } else {
        None
    };
    if let Some(t) = token {
        after.push(
            Resume::from_token(t)
                .ok_or_else(|| GcsError::invalid_argument("Invalid continuation token."))?,
        );
    }
    let start_after = if v2 { q.get("start-after") } else { None };
    if let Some(s) = start_after {
        after.push(Resume::AfterObject(s.to_owned()));
    }
    let marker = if v2 { None } else { q.get("marker") };
    if let Some(m) = marker {
        after.push(Resume::AfterObject(m.to_owned()));
        // A marker that is a rolled-up prefix (a previous page's NextMarker) skips
        // everything under it.
        if delimiter.is_some_and(|d| m.ends_with(d)) {
            after.push(Resume::AfterPrefix(m.to_owned()));
        }
    }
    let store = lock(&sh.store);
    let bucket = store.bucket(b)?;
    let page = crate::store::list_page(
        bucket.objects.keys(),
        &crate::store::ListQuery {
            prefix,
            delimiter,
            after,
            max: max_keys,
        },
    );
    let echo = ListEcho {
        bucket: b,
        v2,
        prefix,
        delimiter,
        max_keys,
        url_encoded,
        continuation_token: token,
        start_after,
        marker,
    };
    let body = xml::list_result(&echo, &page, &bucket.objects);
    Ok(xml_response(StatusCode::OK, body))
}

/// `If-Match`, `If-None-Match`, `If-Modified-Since`, `If-Unmodified-Since` on a
/// read, as HTTP orders them.
fn http_conditionals(h: &HeaderMap, o: &Object) -> Result<(), GcsError> {
    let matches = |list: &str| {
        list.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == o.etag)
    };
    let modified = unix_secs(o.updated);
    if let Some(v) = header_str(h, "if-match")? {
        if !matches(v) {
            return Err(GcsError::precondition());
        }
    } else if let Some(since) = header_str(h, "if-unmodified-since")?.and_then(parse_http_date)
        && modified > since
    {
        return Err(GcsError::precondition());
    }
    if let Some(v) = header_str(h, "if-none-match")? {
        if matches(v) {
            return Err(GcsError::not_modified());
        }
    } else if let Some(since) = header_str(h, "if-modified-since")?.and_then(parse_http_date)
        && modified <= since
    {
        return Err(GcsError::not_modified());
    }
    Ok(())
}

fn get_object(
    sh: &Shared,
    b: &str,
    name: &str,
    q: &Query,
    h: &HeaderMap,
    head: bool,
) -> Result<Response, GcsError> {
    let generation = q_u64(q, "generation")?;
    let pre = preconditions(h)?;
    let o = lock(&sh.store)
        .object(b, name)?
        .cloned()
        .ok_or_else(|| GcsError::no_such_key(b, name))?;
    // Only the live generation is kept (no versioning).
    if generation.is_some_and(|g| g != o.generation) {
        return Err(GcsError::no_such_key(b, name));
    }
    pre.check(Some(&o), true)?;
    http_conditionals(h, &o)?;
    let size = o.data.len() as u64;
    let range = match (head, header_str(h, "range")?) {
        (false, Some(r)) => resolve_range(r, size),
        _ => RangeAnswer::Whole,
    };
    let (status, data) = match range {
        RangeAnswer::Whole => (StatusCode::OK, o.data.clone()),
        RangeAnswer::Part(s, e) => (
            StatusCode::PARTIAL_CONTENT,
            o.data.slice(s as usize..e as usize),
        ),
        RangeAnswer::Unsatisfiable => {
            let mut e = GcsError::new(
                416,
                "InvalidRange",
                "The requested range cannot be satisfied.",
            )
            .with_details(header_str(h, "range")?.unwrap_or("").to_owned());
            e.content_range = Some(format!("bytes */{size}"));
            return Err(e);
        }
    };
    let len = data.len();
    let mut r = Response::new(if head {
        Body::empty()
    } else {
        Body::from(data)
    });
    *r.status_mut() = status;
    read_headers(&mut r, &o);
    if let RangeAnswer::Part(s, e) = range {
        set(
            &mut r,
            "content-range",
            &format!("bytes {s}-{}/{size}", e - 1),
        );
    }
    set(&mut r, "content-length", &len.to_string());
    Ok(r)
}

fn put_object(
    sh: &Shared,
    b: &str,
    name: &str,
    h: &HeaderMap,
    data: Bytes,
) -> Result<Response, GcsError> {
    let meta = write_meta(h)?;
    let pre = preconditions(h)?;
    let o = lock(&sh.store).put(b, name, data, meta, &pre)?;
    let mut r = empty(StatusCode::OK);
    write_headers(&mut r, &o);
    Ok(r)
}

fn copy_object(
    sh: &Shared,
    b: &str,
    name: &str,
    src: &str,
    h: &HeaderMap,
) -> Result<Response, GcsError> {
    let src = src.strip_prefix('/').unwrap_or(src);
    let (sb, so) = src
        .split_once('/')
        .ok_or_else(|| GcsError::invalid_argument("Invalid x-goog-copy-source: no object."))?;
    let sb = percent_decode(sb, false).ok_or_else(bad_uri)?;
    let so = percent_decode(so, false).ok_or_else(bad_uri)?;
    if so.is_empty() {
        return Err(GcsError::invalid_argument(
            "Invalid x-goog-copy-source: no object.",
        ));
    }
    let meta = match header_str(h, "x-goog-metadata-directive")? {
        None | Some("COPY") => None,
        Some("REPLACE") => Some(write_meta(h)?),
        Some(v) => {
            return Err(GcsError::invalid_argument(format!(
                "Invalid x-goog-metadata-directive {v:?}."
            )));
        }
    };
    let src_pre = preconditions_with(h, "x-goog-copy-source-if-")?;
    let pre = preconditions(h)?;
    let o = lock(&sh.store).copy(&sb, &so, &src_pre, b, name, meta, &pre)?;
    let mut r = xml_response(StatusCode::OK, xml::copy_result(&o));
    write_headers(&mut r, &o);
    Ok(r)
}

fn initiate(sh: &Shared, b: &str, name: &str, h: &HeaderMap) -> Result<Response, GcsError> {
    let meta = write_meta(h)?;
    let id = lock(&sh.store).initiate(b, name, meta)?;
    Ok(xml_response(
        StatusCode::OK,
        xml::initiate_result(b, name, &id),
    ))
}

fn put_part(
    sh: &Shared,
    b: &str,
    name: &str,
    id: &str,
    q: &Query,
    data: Bytes,
) -> Result<Response, GcsError> {
    let number = match q.get("partNumber").map(str::parse::<u32>) {
        Some(Ok(n)) if (1..=10_000).contains(&n) => n,
        _ => {
            return Err(GcsError::invalid_argument(
                "Part number must be an integer between 1 and 10000, inclusive.",
            ));
        }
    };
    let etag = lock(&sh.store).put_part(b, name, id, number, data)?;
    let mut r = empty(StatusCode::OK);
    set(&mut r, "etag", &etag);
    Ok(r)
}

fn complete(sh: &Shared, b: &str, name: &str, id: &str, body: &[u8]) -> Result<Response, GcsError> {
    let listed = xml::parse_complete(body);
    let o = {
        let mut store = lock(&sh.store);
        // An unknown upload is NoSuchUpload even with a bad document.
        store.upload_exists(b, name, id)?;
        store.complete(b, name, id, &listed?, sh.config.min_part_size)?
    };
    let location = format!(
        "http://127.0.0.1:{}/{}/{}",
        sh.port,
        crate::util::percent_encode(b),
        crate::util::percent_encode(name)
    );
    let mut r = xml_response(
        StatusCode::OK,
        xml::complete_result(&location, b, name, &o.etag),
    );
    write_headers(&mut r, &o);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(parse_target("/").unwrap(), Target::Service);
        assert_eq!(parse_target("/b").unwrap(), Target::Bucket("b".into()));
        assert_eq!(parse_target("/b/").unwrap(), Target::Bucket("b".into()));
        assert_eq!(
            parse_target("/jetbridge%2Dtest/a%2Fb%20c/d+e").unwrap(),
            Target::Object("jetbridge-test".into(), "a/b c/d+e".into())
        );
        assert_eq!(
            parse_target("/b/a//b/").unwrap(),
            Target::Object("b".into(), "a//b/".into())
        );
        assert_eq!(parse_target("/b/%zz").unwrap_err().status, 400);
    }

    #[test]
    fn queries() {
        let q = Query::parse(Some("list-type=2&prefix=a+b%2F&uploads&x=%26")).unwrap();
        assert_eq!(q.get("list-type"), Some("2"));
        assert_eq!(q.get("prefix"), Some("a b/"));
        assert!(q.has("uploads"));
        assert_eq!(q.get("uploads"), Some(""));
        assert_eq!(q.get("x"), Some("&"));
        assert!(Query::parse(Some("a=%G0")).is_err());
    }
}
