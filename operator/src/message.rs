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
    let one_line = head.split_whitespace().collect::<Vec<_>>().join(" ");
    let trimmed = one_line.trim_end_matches([' ', '(', ':', ',']);
    cut(trimmed, DETAIL_LIMIT)
}

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
    fn plain_messages_pass_unchanged() {
        let t = "stream `s` not found in us-east-1: create it, or fix spec.stream.name";
        assert_eq!(excerpt(t), t);
        assert_eq!(bounded(t), t);
    }
}
