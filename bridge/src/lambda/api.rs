//! The Lambda Runtime API (2018-06-01) over HTTP/1: what a runtime interface client (AWS's
//! base images, `awslambdaric`, a custom runtime) talks to at `AWS_LAMBDA_RUNTIME_API`.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::event;
use super::queue::{Completion, Dispatcher, Reply};

/// Lambda's limit on a synchronous response (and so on every body the runtime posts).
pub(crate) const MAX_BODY: usize = 6 * 1024 * 1024;

const REQUEST_ID: &str = "lambda-runtime-aws-request-id";
const DEADLINE: &str = "lambda-runtime-deadline-ms";
const FUNCTION_ARN: &str = "lambda-runtime-invoked-function-arn";
const TRACE_ID: &str = "lambda-runtime-trace-id";
const ERROR_TYPE: &str = "lambda-runtime-function-error-type";

/// What the handlers share.
pub(crate) struct Api {
    pub(crate) dispatcher: Arc<Dispatcher>,
    /// `Lambda-Runtime-Invoked-Function-Arn` of every invocation.
    pub(crate) function_arn: HeaderValue,
}

/// The Runtime API's routes; any other path answers 404.
pub(crate) fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

/// `{"errorMessage": …, "errorType": …}` with `status`.
fn error_response(status: StatusCode, error_type: &str, message: &str) -> Response {
    let body = serde_json::json!({ "errorMessage": message, "errorType": error_type });
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

/// 202 `{"status":"OK"}`.
fn accepted() -> Response {
    (
        StatusCode::ACCEPTED,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        r#"{"status":"OK"}"#,
    )
        .into_response()
}

/// `GET /2018-06-01/runtime/invocation/next`: the long poll.
async fn next(State(api): State<Arc<Api>>) -> Response {
    let Some(invocation) = api.dispatcher.next().await else {
        // Lambda's "container error: the runtime should exit".
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Runtime.ShuttingDown",
            "the kinesis-worker is shutting down: there will be no more invocations",
        );
    };
    tracing::debug!(id = %invocation.id, bytes = invocation.body.len(), "invocation taken by the runtime");
    let mut headers = HeaderMap::with_capacity(5);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        HeaderName::from_static(DEADLINE),
        HeaderValue::from(invocation.deadline_ms),
    );
    headers.insert(
        HeaderName::from_static(FUNCTION_ARN),
        api.function_arn.clone(),
    );
    // Both are ASCII we generated: always valid header values.
    for (name, value) in [
        (REQUEST_ID, &invocation.id),
        (TRACE_ID, &invocation.trace_id),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    (StatusCode::OK, headers, Body::from(invocation.body)).into_response()
}

/// 400: no invocation `id` waits for an answer.
fn invalid_request_id(id: &str) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        &format!(
            "invocation {id} is not waiting for an answer: unknown, already answered, or past its deadline"
        ),
    )
}

/// Answers invocation `id` with `reply`: 202, or 400 when it is not in flight.
fn finish(api: &Api, id: &str, reply: Reply) -> Response {
    match api.dispatcher.complete(id, reply) {
        Completion::Delivered => accepted(),
        Completion::Late => {
            tracing::warn!(
                request = id,
                "an answer came after its invocation was given up on (deadline, lease lost or hand-over): dropped; the records are delivered again"
            );
            accepted()
        }
        Completion::Unknown => invalid_request_id(id),
    }
}

/// `POST /2018-06-01/runtime/invocation/{id}/response`: the handler's return value.
async fn response(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match body {
        Ok(body) => finish(&api, &id, Reply::Response(body)),
        Err(rejection) => {
            // As in Lambda, a response that cannot be taken fails the invocation.
            let status = rejection.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!(
                    "Function.ResponseSizeTooLarge: the response is larger than Lambda's limit of {MAX_BODY} bytes"
                )
            } else {
                format!("Runtime.InvalidResponse: the response could not be read: {rejection}")
            };
            match api.dispatcher.complete(&id, Reply::Error(message.clone())) {
                Completion::Unknown => invalid_request_id(&id),
                Completion::Delivered | Completion::Late => {
                    error_response(status, "InvalidResponse", &message)
                }
            }
        }
    }
}

/// The `Lambda-Runtime-Function-Error-Type` header.
fn error_type(headers: &HeaderMap) -> Option<&str> {
    headers.get(ERROR_TYPE).and_then(|v| v.to_str().ok())
}

/// `POST /2018-06-01/runtime/invocation/{id}/error`: the handler raised.
async fn error(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let message = event::error_message(&body.unwrap_or_default(), error_type(&headers));
    tracing::debug!(%id, error = %message, "the handler failed");
    finish(&api, &id, Reply::Error(message))
}

/// `POST /2018-06-01/runtime/init/error`: the function could not start.
async fn init_error(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let message = event::error_message(&body.unwrap_or_default(), error_type(&headers));
    tracing::error!(error = %message, "the Lambda function failed to initialize (POST /2018-06-01/runtime/init/error)");
    api.dispatcher.set_init_error(message);
    accepted()
}

/// Any other path.
async fn not_found(uri: Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!(
            "{} is not a path of the Lambda Runtime API (2018-06-01)",
            uri.path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    // Send + Sync: a request runs in a spawned task too.
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type TestResult = Result<(), Error>;

    const SOON: std::time::Duration = std::time::Duration::from_secs(5);

    /// A status, the lowercased head and the body of one HTTP/1.1 exchange.
    struct Answer {
        status: u16,
        head: String,
        body: String,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .map(str::trim)
            })
        }
    }

    async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<Answer, Error> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nLambda-Runtime-Function-Error-Type: Unhandled\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        tokio::time::timeout(SOON, stream.read_to_end(&mut raw)).await??;
        let text = String::from_utf8(raw)?;
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no end of headers")?;
        let status: u16 = head.split(' ').nth(1).ok_or("no status")?.parse()?;
        Ok(Answer {
            status,
            head: head.to_ascii_lowercase(),
            body: body.to_string(),
        })
    }

    #[tokio::test]
    async fn the_runtime_api_over_http() -> TestResult {
        let dispatcher = Arc::new(Dispatcher::new());
        let api = Arc::new(Api {
            dispatcher: dispatcher.clone(),
            function_arn: HeaderValue::from_static(
                "arn:aws:lambda:us-east-1:123456789012:function:consumer",
            ),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = {
            let d = dispatcher.clone();
            tokio::spawn(async move {
                axum::serve(listener, router(api))
                    .with_graceful_shutdown(async move { d.closed().await })
                    .await
            })
        };

        let timeout = std::time::Duration::from_secs(60);
        let invoker = {
            let d = dispatcher.clone();
            tokio::spawn(async move { d.invoke(br#"{"Records":[]}"#.to_vec(), timeout).await })
        };
        let next = http(addr, "GET", "/2018-06-01/runtime/invocation/next", "").await?;
        assert_eq!(next.status, 200);
        assert_eq!(next.body, r#"{"Records":[]}"#);
        assert_eq!(next.header("content-type"), Some("application/json"));
        let deadline: i64 = next
            .header("lambda-runtime-deadline-ms")
            .ok_or("no deadline")?
            .parse()?;
        let left = deadline - super::super::now_ms();
        assert!((50_000..=60_000).contains(&left), "{left}");
        assert_eq!(
            next.header("lambda-runtime-invoked-function-arn"),
            Some("arn:aws:lambda:us-east-1:123456789012:function:consumer")
        );
        assert!(
            next.header("lambda-runtime-trace-id")
                .is_some_and(|t| t.starts_with("root=1-"))
        );
        let id = next
            .header("lambda-runtime-aws-request-id")
            .ok_or("no request id")?
            .to_string();
        assert_eq!(id.len(), 36);

        let answered = http(
            addr,
            "POST",
            &format!("/2018-06-01/runtime/invocation/{id}/response"),
            r#"{"batchItemFailures":[]}"#,
        )
        .await?;
        assert_eq!(
            (answered.status, answered.body.as_str()),
            (202, r#"{"status":"OK"}"#)
        );
        match tokio::time::timeout(SOON, invoker).await?? {
            Ok(Reply::Response(body)) => assert_eq!(&body[..], br#"{"batchItemFailures":[]}"#),
            other => return Err(format!("unexpected {other:?}").into()),
        }

        // Answered already: 400 InvalidRequestID, for a response and for an error.
        for kind in ["response", "error"] {
            let again = http(
                addr,
                "POST",
                &format!("/2018-06-01/runtime/invocation/{id}/{kind}"),
                "{}",
            )
            .await?;
            assert_eq!(again.status, 400);
            let body: serde_json::Value = serde_json::from_str(&again.body)?;
            assert_eq!(body["errorType"], "InvalidRequestID");
        }

        // A handler that raises.
        let invoker = {
            let d = dispatcher.clone();
            tokio::spawn(async move { d.invoke(b"{}".to_vec(), timeout).await })
        };
        let next = http(addr, "GET", "/2018-06-01/runtime/invocation/next", "").await?;
        let id = next
            .header("lambda-runtime-aws-request-id")
            .ok_or("no request id")?
            .to_string();
        let failed = http(
            addr,
            "POST",
            &format!("/2018-06-01/runtime/invocation/{id}/error"),
            r#"{"errorMessage":"bad record","errorType":"ValueError","stackTrace":[]}"#,
        )
        .await?;
        assert_eq!(failed.status, 202);
        match tokio::time::timeout(SOON, invoker).await?? {
            Ok(Reply::Error(message)) => assert_eq!(message, "ValueError: bad record"),
            other => return Err(format!("unexpected {other:?}").into()),
        }

        let init = http(
            addr,
            "POST",
            "/2018-06-01/runtime/init/error",
            r#"{"errorMessage":"No module named 'app'","errorType":"Runtime.ImportModuleError"}"#,
        )
        .await?;
        assert_eq!(init.status, 202);
        assert_eq!(
            dispatcher.init_error().as_deref(),
            Some("Runtime.ImportModuleError: No module named 'app'")
        );

        let missing = http(addr, "GET", "/2018-06-01/runtime/invocation", "").await?;
        assert_eq!(missing.status, 404);

        // Shutting down answers a waiting long poll, then the server stops.
        let waiting = tokio::spawn(http(addr, "GET", "/2018-06-01/runtime/invocation/next", ""));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        dispatcher.close();
        let last = tokio::time::timeout(SOON, waiting).await???;
        assert_eq!(last.status, 500);
        tokio::time::timeout(SOON, server).await???;
        Ok(())
    }
}
