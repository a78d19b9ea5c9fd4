//! XML API errors: a status and an `<Error>` document with a `Code`.

use crate::util::xml_escape;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An error answer of the XML API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GcsError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub details: Option<String>,
    /// `Content-Range: bytes */SIZE` for 416.
    pub content_range: Option<String>,
}

/// The XML content type of every XML answer.
pub(crate) const XML: &str = "application/xml; charset=UTF-8";

impl GcsError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        GcsError {
            status,
            code,
            message: message.into(),
            details: None,
            content_range: None,
        }
    }

    pub fn with_details(mut self, d: impl Into<String>) -> Self {
        self.details = Some(d.into());
        self
    }

    pub fn no_such_bucket() -> Self {
        Self::new(404, "NoSuchBucket", "The specified bucket does not exist.")
    }

    pub fn no_such_key(bucket: &str, name: &str) -> Self {
        Self::new(404, "NoSuchKey", "The specified key does not exist.")
            .with_details(format!("No such object: {bucket}/{name}"))
    }

    pub fn no_such_upload() -> Self {
        Self::new(404, "NoSuchUpload", "The requested upload was not found.")
    }

    pub fn precondition() -> Self {
        Self::new(
            412,
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold.",
        )
    }

    pub fn not_modified() -> Self {
        Self::new(304, "NotModified", "")
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidArgument", message)
    }

    pub fn malformed_xml() -> Self {
        Self::new(
            400,
            "MalformedXML",
            "The XML you provided was not well-formed or did not validate against our published schema.",
        )
    }

    pub fn not_implemented(what: &str) -> Self {
        Self::new(
            501,
            "NotImplemented",
            "A header or query you provided requested a function that is not implemented.",
        )
        .with_details(format!("{what} is not simulated"))
    }

    /// The error a fault injects for `status`: the code Cloud Storage uses for it.
    pub fn injected(status: u16) -> Self {
        let (code, message) = match status {
            400 => ("InvalidArgument", "Invalid argument."),
            401 => ("AuthenticationRequired", "Authentication required."),
            403 => ("AccessDenied", "Access denied."),
            404 => ("NoSuchKey", "The specified key does not exist."),
            408 => ("RequestTimeout", "The request timed out."),
            409 => ("Conflict", "A conflicting operation is in progress."),
            412 => (
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold.",
            ),
            429 => ("SlowDown", "Please reduce your request rate."),
            500 => (
                "InternalError",
                "We encountered an internal error. Please try again.",
            ),
            502 => ("BadGateway", "Bad gateway."),
            503 => (
                "ServiceUnavailable",
                "Service unavailable. Please try again.",
            ),
            504 => ("GatewayTimeout", "Gateway timeout."),
            _ => ("InjectedFault", "Injected fault."),
        };
        Self::new(status, code, message).with_details(format!("injected fault: {status}"))
    }

    /// The `<Error>` document.
    pub fn body(&self) -> String {
        let details = self
            .details
            .as_deref()
            .map(|d| format!("<Details>{}</Details>", xml_escape(d)))
            .unwrap_or_default();
        format!(
            "<?xml version='1.0' encoding='UTF-8'?><Error><Code>{}</Code><Message>{}</Message>{details}</Error>",
            self.code,
            xml_escape(&self.message)
        )
    }
}

impl IntoResponse for GcsError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // 304 carries no body.
        let body = if status == StatusCode::NOT_MODIFIED {
            Body::empty()
        } else {
            Body::from(self.body())
        };
        let mut r = Response::new(body);
        *r.status_mut() = status;
        if status != StatusCode::NOT_MODIFIED {
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(XML));
        }
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=0"),
        );
        if let Some(cr) = self
            .content_range
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            r.headers_mut().insert(header::CONTENT_RANGE, cr);
        }
        r
    }
}
