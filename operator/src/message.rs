//! What a condition or an Event repeats of an AWS error (pure): a bounded excerpt, never a
//! Rust `Debug` dump of the SDK's internals or a raw HTTP answer. The SDK's error text
//! (`DisplayErrorContext`) ends with the error's `Debug` form — headers, bodies, internal
//! types, kilobytes of it, and whatever text the endpoint answered. Conditions are read by
//! every user of the namespace and stored in etcd on every status write.

/// Characters of an error's text a message keeps at most.
pub const DETAIL_LIMIT: usize = 200;
/// Characters of a whole condition or Event message at most.
pub const MESSAGE_LIMIT: usize = 512;

/// The readable head of an SDK error's text: cut before the first `Debug` dump (`(Name(`,
/// `(Name {`, ` { `), on one line, whitespace collapsed, at most [`DETAIL_LIMIT`] characters
/// (`…` marks a cut).
pub fn excerpt(detail: &str) -> String {
    let head = &detail[..debug_dump_start(detail).unwrap_or(detail.len())];
    let one_line = head
        .split_whitespace()
        .map(redact_arn)
        .collect::<Vec<_>>()
        .join(" ");
    let trimmed = one_line.trim_end_matches([' ', '(', ':', ',']);
    cut(trimmed, DETAIL_LIMIT)
}

/// What failed of AWS call `op`, as a message may repeat it: the AWS error code and the HTTP
/// status with a bounded excerpt of AWS's message; an answer without a readable error (an
/// endpoint answering 403 in another format) by its status alone; a failure before any answer
/// (timeout, connection) by the head of its text.
pub fn aws_error<E>(
    op: &str,
    e: &aws_sdk_kinesis::error::SdkError<E, aws_sdk_kinesis::config::http::HttpResponse>,
) -> String
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = match e {
        aws_sdk_kinesis::error::SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    };
    let message = match e {
        aws_sdk_kinesis::error::SdkError::ServiceError(s) => s.err().message(),
        _ => None,
    };
    described(
        op,
        code,
        status,
        message,
        &aws_sdk_kinesis::error::DisplayErrorContext(e).to_string(),
    )
}

/// [`aws_error`]'s sentence from the parts of an error (pure).
pub fn described(
    op: &str,
    code: Option<&str>,
    status: Option<u16>,
    message: Option<&str>,
    text: &str,
) -> String {
    let said = message.map(excerpt).filter(|m| !m.is_empty());
    match (code, status) {
        (Some(code), Some(status)) => match said {
            Some(m) => format!("{op} failed: {code} (HTTP {status}): {m}"),
            None => format!("{op} failed: {code} (HTTP {status})"),
        },
        (Some(code), None) => format!("{op} failed: {code}"),
        (None, Some(403)) => format!("{op} failed: access denied (HTTP 403)"),
        (None, Some(status)) if status >= 300 => {
            format!("{op} failed: HTTP {status} with no readable error")
        }
        _ if is_credentials_failure(text) => format!("{op} failed: {NO_CREDENTIALS}"),
        _ => format!("{op} failed: {}", excerpt(text)),
    }
}

/// A word that is (or holds) an ARN — `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION` in
/// AWS's "User: … is not authorized" — becomes `<arn>`: a message never names the identity
/// the operator called as, its account, or another tenant's resource.
fn redact_arn(word: &str) -> &str {
    if word.contains("arn:aws") {
        "<arn>"
    } else {
        word
    }
}

/// Whether `text` (an SDK error's) says credentials could not be had: for an assumed role,
/// AssumeRole failed (the role's trust policy, or the operator's sts:AssumeRole/TagSession).
pub fn is_credentials_failure(text: &str) -> bool {
    text.contains("failed to load credentials")
        || text.contains("loading credentials")
        || text.contains("CredentialsNotLoaded")
        || text.contains("ProviderError")
}

/// The sentence to repeat of an error's text: for a credentials failure what to fix (the
/// text itself says only "an error occurred while loading credentials"), else its
/// [`excerpt`].
pub fn readable(detail: &str) -> String {
    if is_credentials_failure(detail) {
        NO_CREDENTIALS.to_string()
    } else {
        excerpt(detail)
    }
}

const NO_CREDENTIALS: &str = "no credentials (AssumeRole failed: the role must trust the operator, which needs sts:AssumeRole and sts:TagSession on it)";

/// `message` bounded to [`MESSAGE_LIMIT`] characters, on one line.
pub fn bounded(message: &str) -> String {
    cut(
        &message.split_whitespace().collect::<Vec<_>>().join(" "),
        MESSAGE_LIMIT,
    )
}

fn cut(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_string();
    }
    let mut out: String = text.chars().take(limit - 1).collect();
    out.push('…');
    out
}

/// Where the first `Debug` dump starts: a `(` followed by a capitalised name and then `(` or
/// ` {`, or a ` { ` anywhere, or a line break.
fn debug_dump_start(text: &str) -> Option<usize> {
    let mut first = text.find('\n');
    if let Some(i) = text.find(" { ") {
        first = Some(first.map_or(i, |f| f.min(i)));
    }
    for (i, _) in text.match_indices('(') {
        let rest = &text[i + 1..];
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let name = &rest[..name_len];
        let after = &rest[name_len..];
        if name.starts_with(|c: char| c.is_ascii_uppercase())
            && (after.starts_with('(') || after.starts_with(" {") || after.starts_with('{'))
        {
            first = Some(first.map_or(i, |f| f.min(i)));
            break;
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_keeps_its_sentence_and_drops_the_dump() {
        let t = "request has timed out: operation timeout (all attempts including retries) occurred after 25s (TimeoutError(TimeoutError { source: MaybeTimeoutError { kind: Operation, duration: 25s } }))";
        assert_eq!(
            excerpt(t),
            "request has timed out: operation timeout (all attempts including retries) occurred after 25s"
        );
    }

    #[test]
    fn a_service_error_keeps_its_code_and_message() {
        let t = "service error: unhandled error (ResourceNotFoundException): Stream s under account 000000000000 not found. (ResourceNotFoundException(ResourceNotFoundException { message: Some(\"Stream s\"), meta: ErrorMetadata { code: Some(\"ResourceNotFoundException\"), extras: Some({\"aws_request_id\": \"x\"}) } }))";
        assert_eq!(
            excerpt(t),
            "service error: unhandled error (ResourceNotFoundException): Stream s under account 000000000000 not found."
        );
    }

    #[test]
    fn an_endpoints_own_text_is_cut_to_a_bounded_line() {
        let body = format!(
            "unhandled error: <html>\n<body>{}</body></html>",
            "x".repeat(5_000)
        );
        let e = excerpt(&body);
        assert_eq!(e, "unhandled error: <html>");
        let long = format!("error: {}", "word ".repeat(2_000));
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), DETAIL_LIMIT);
        assert!(e.ends_with('…'), "{e}");
        let m = bounded(&format!("lease table `t`: {}\n{}", "a".repeat(1_000), "b"));
        assert_eq!(m.chars().count(), MESSAGE_LIMIT);
        assert!(!m.contains('\n'));
    }

    #[test]
    fn an_aws_error_reads_as_its_code_status_and_message_never_its_body() {
        assert_eq!(
            described(
                "RegisterStreamConsumer",
                Some("AccessDeniedException"),
                Some(400),
                Some("User x is not authorized"),
                "ignored"
            ),
            "RegisterStreamConsumer failed: AccessDeniedException (HTTP 400): User x is not authorized"
        );
        // An answer in another format (moto's XML 403, a tenant's web page): its status only.
        let body = "response error: invalid input: malformed JSON error body: <ErrorResponse><Message>secret</Message>";
        let d = described("RegisterStreamConsumer", None, Some(403), None, body);
        assert_eq!(d, "RegisterStreamConsumer failed: access denied (HTTP 403)");
        let d = described("Scan", None, Some(502), None, body);
        assert_eq!(d, "Scan failed: HTTP 502 with no readable error");
        // No answer at all: the head of the text.
        let d = described(
            "Scan",
            None,
            None,
            None,
            "dispatch failure: io error (ConnectorError { x })",
        );
        assert_eq!(d, "Scan failed: dispatch failure: io error");
    }

    #[test]
    fn no_message_names_an_identity_or_an_account() {
        let aws = "User: arn:aws:sts::123456789012:assumed-role/kinesis-operator/i-0abc is not authorized to perform: kinesis:RegisterStreamConsumer on resource: arn:aws:kinesis:eu-west-1:123456789012:stream/orders";
        let d = described(
            "RegisterStreamConsumer",
            Some("AccessDeniedException"),
            Some(400),
            Some(aws),
            "",
        );
        assert_eq!(
            d,
            "RegisterStreamConsumer failed: AccessDeniedException (HTTP 400): User: <arn> is not authorized to perform: kinesis:RegisterStreamConsumer on resource: <arn>"
        );
        assert!(!excerpt(aws).contains("123456789012"));
        let creds = "dispatch failure: other: failed to load credentials (AssumeRole AccessDenied)";
        let d = described("ListShards", None, None, None, creds);
        assert!(d.contains("AssumeRole failed"), "{d}");
    }

    #[test]
    fn plain_messages_pass_unchanged() {
        let t = "stream `s` not found in us-east-1: create it, or fix spec.stream.name";
        assert_eq!(excerpt(t), t);
        assert_eq!(bounded(t), t);
    }
}
