//! Record filters (Lambda's `FilterCriteria` for Kinesis): records that match none of the
//! configured patterns are not sent to the app but count as processed, so an app that needs
//! 1 % of a stream does not pay for 100 %.
//!
//! A pattern is a JSON object in EventBridge's pattern language, over the fields Lambda
//! exposes for a Kinesis record: `partitionKey`, `sequenceNumber`, `explicitHashKey` and
//! `data` (the record's data parsed as JSON; a `data` pattern never matches a record whose
//! data is not JSON, except a leaf list such as `"data": [{"prefix": "x"}]`, which matches
//! the data as text). Keys in a pattern must all match (AND); the values listed for a key are
//! alternatives (OR); a record passes when any of the patterns matches.
//!
//! Leaf matchers: literal strings, numbers, `true`, `false` and `null`; `{"prefix": s}`,
//! `{"suffix": s}`, `{"equals-ignore-case": s}`, `{"anything-but": v | [v…] | {"prefix": s}}`,
//! `{"numeric": [op, n, (op, n)]}` with `=`, `<`, `<=`, `>`, `>=`, and `{"exists": bool}`.
//! An event value that is an array matches when any of its elements does.
//!
//! Hand-written (about 300 lines, pure, no I/O); the operators are the ones Lambda documents
//! for event source mappings. We looked at `quamina` (0.7, the Rust port of Tim Bray's
//! matcher of the same pattern language) and kept ours, for three reasons: quamina matches
//! an event's JSON bytes, so every record would first be copied into a synthetic document
//! (`{"partitionKey": …, "data": …}`) where ours reads the record's fields and parses only
//! `data`; Lambda's Kinesis rules are not quamina's (a leaf list on `data` matches non-JSON
//! data as text; an unknown top-level field is refused, since it would silently filter out
//! everything; Lambda's count and size limits); and it is a young one-maintainer port (0.x,
//! with a yanked release), where a divergence would drop a tenant's records silently.
//!
//! # Errors
//! [`Filters::parse`] refuses, naming the pattern and the key: a pattern that is not a JSON
//! object, an unknown top-level field (a typo would silently filter out everything), an empty
//! list, an unknown operator, an operator with an argument of the wrong type, more than
//! [`MAX_FILTERS`] patterns, or a pattern longer than [`MAX_PATTERN_BYTES`].

use serde_json::Value;

/// What a pattern reads of a record: the fields Lambda exposes for a Kinesis record.
pub trait FilterRecord {
    /// The partition key.
    fn partition_key(&self) -> &str;
    /// The sequence number.
    fn sequence_number(&self) -> &str;
    /// The explicit hash key, if the producer set one.
    fn explicit_hash_key(&self) -> Option<&str>;
    /// The payload.
    fn data(&self) -> &[u8];
}

/// Most patterns (Lambda allows 5 by default, 10 on request).
pub const MAX_FILTERS: usize = 10;

/// Longest pattern, in bytes of JSON (Lambda's limit).
pub const MAX_PATTERN_BYTES: usize = 4096;

/// The record fields a pattern may name.
const FIELDS: [&str; 4] = ["partitionKey", "sequenceNumber", "explicitHashKey", "data"];

/// A pattern that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("filter {index}: {message}")]
pub struct FilterError {
    /// Which pattern (1-based, as the user counts them).
    pub index: usize,
    /// What is wrong and where.
    pub message: String,
}

/// A comparison of `numeric`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

/// One alternative of a leaf list.
#[derive(Debug, Clone, PartialEq)]
enum Matcher {
    /// A literal string, number, bool or null.
    Equals(Value),
    Prefix(String),
    Suffix(String),
    EqualsIgnoreCase(String),
    AnythingBut(Vec<Value>),
    AnythingButPrefix(String),
    Numeric(Vec<(Cmp, f64)>),
    Exists(bool),
}

/// A pattern node: an object of named sub-patterns, or a list of alternatives.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Object(Vec<(String, Node)>),
    Leaf(Vec<Matcher>),
}

/// The configured patterns; empty: every record passes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    patterns: Vec<Node>,
    /// Some pattern looks into the data (which is then parsed once per record).
    reads_data: bool,
}

fn scalar(v: &Value) -> bool {
    !(v.is_array() || v.is_object())
}

fn parse_matcher(path: &str, v: &Value) -> Result<Matcher, String> {
    if scalar(v) {
        return Ok(Matcher::Equals(v.clone()));
    }
    let Some(obj) = v.as_object() else {
        return Err(format!(
            "`{path}`: a list holds values or operator objects, not lists"
        ));
    };
    let mut it = obj.iter();
    let (Some((op, arg)), None) = (it.next(), it.next()) else {
        return Err(format!(
            "`{path}`: an operator object has exactly one key, e.g. {{\"prefix\": \"a\"}}"
        ));
    };
    let string = |what: &str| {
        arg.as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("`{path}`: `{what}` needs a string"))
    };
    match op.as_str() {
        "prefix" => Ok(Matcher::Prefix(string("prefix")?)),
        "suffix" => Ok(Matcher::Suffix(string("suffix")?)),
        "equals-ignore-case" => Ok(Matcher::EqualsIgnoreCase(string("equals-ignore-case")?)),
        "exists" => arg
            .as_bool()
            .map(Matcher::Exists)
            .ok_or_else(|| format!("`{path}`: `exists` needs true or false")),
        "anything-but" => match arg {
            Value::Array(items) if !items.is_empty() && items.iter().all(scalar) => {
                Ok(Matcher::AnythingBut(items.clone()))
            }
            Value::Object(o) if o.len() == 1 => match o.get("prefix").and_then(Value::as_str) {
                Some(p) => Ok(Matcher::AnythingButPrefix(p.to_string())),
                None => Err(format!(
                    "`{path}`: `anything-but` takes a value, a list of values or {{\"prefix\": \"…\"}}"
                )),
            },
            v if scalar(v) => Ok(Matcher::AnythingBut(vec![v.clone()])),
            _ => Err(format!(
                "`{path}`: `anything-but` takes a value, a list of values or {{\"prefix\": \"…\"}}"
            )),
        },
        "numeric" => {
            let bad = || {
                format!(
                    "`{path}`: `numeric` takes one or two comparisons, e.g. [\">\", 0, \"<=\", 5]"
                )
            };
            let items = arg.as_array().ok_or_else(bad)?;
            if items.is_empty() || items.len() > 4 || items.len() % 2 != 0 {
                return Err(bad());
            }
            let mut cmps = Vec::new();
            for pair in items.chunks(2) {
                let cmp = match pair[0].as_str() {
                    Some("=") => Cmp::Eq,
                    Some("<") => Cmp::Lt,
                    Some("<=") => Cmp::Le,
                    Some(">") => Cmp::Gt,
                    Some(">=") => Cmp::Ge,
                    _ => return Err(bad()),
                };
                let n = pair[1].as_f64().ok_or_else(bad)?;
                cmps.push((cmp, n));
            }
            Ok(Matcher::Numeric(cmps))
        }
        other => Err(format!(
            "`{path}`: unknown operator `{other}` (prefix, suffix, equals-ignore-case, anything-but, numeric, exists)"
        )),
    }
}

fn parse_node(path: &str, v: &Value) -> Result<Node, String> {
    match v {
        Value::Object(o) => {
            let mut children = Vec::with_capacity(o.len());
            for (k, child) in o {
                children.push((k.clone(), parse_node(&format!("{path}.{k}"), child)?));
            }
            Ok(Node::Object(children))
        }
        Value::Array(items) => {
            if items.is_empty() {
                return Err(format!(
                    "`{path}`: an empty list matches nothing; list at least one value"
                ));
            }
            items
                .iter()
                .map(|i| parse_matcher(path, i))
                .collect::<Result<Vec<_>, _>>()
                .map(Node::Leaf)
        }
        _ => Err(format!(
            "`{path}`: values are matched by a list, e.g. [\"click\"], or a nested object"
        )),
    }
}

impl Filters {
    /// Parses patterns (each a JSON object, as text).
    ///
    /// # Errors
    /// See the module's `# Errors`.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, FilterError> {
        if patterns.len() > MAX_FILTERS {
            return Err(FilterError {
                index: MAX_FILTERS + 1,
                message: format!("at most {MAX_FILTERS} filters"),
            });
        }
        let mut out = Self::default();
        for (i, text) in patterns.iter().enumerate() {
            let err = |message: String| FilterError {
                index: i + 1,
                message,
            };
            let text = text.as_ref();
            if text.len() > MAX_PATTERN_BYTES {
                return Err(err(format!(
                    "{} bytes; a pattern has at most {MAX_PATTERN_BYTES}",
                    text.len()
                )));
            }
            let v: Value =
                serde_json::from_str(text).map_err(|e| err(format!("not JSON ({e}): {text}")))?;
            let Some(obj) = v.as_object() else {
                return Err(err(format!(
                    "a pattern is a JSON object such as {{\"data\": {{\"type\": [\"click\"]}}}}, not {text}"
                )));
            };
            if obj.is_empty() {
                return Err(err(
                    "an empty pattern matches every record; remove the filter instead".into(),
                ));
            }
            for k in obj.keys() {
                if !FIELDS.contains(&k.as_str()) {
                    return Err(err(format!(
                        "unknown field `{k}`; a pattern matches {}",
                        FIELDS.join(", ")
                    )));
                }
            }
            out.reads_data |= obj.contains_key("data");
            out.patterns.push(parse_node("", &v).map_err(err)?);
        }
        Ok(out)
    }

    /// No patterns: every record passes.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Does the record match any pattern (or are there none)?
    pub fn matches(&self, r: &impl FilterRecord) -> bool {
        if self.patterns.is_empty() {
            return true;
        }
        let data = if self.reads_data {
            Data::of(r.data())
        } else {
            Data::Absent
        };
        self.patterns.iter().any(|p| {
            let Node::Object(fields) = p else {
                return false;
            };
            fields.iter().all(|(k, node)| match k.as_str() {
                "partitionKey" => {
                    node_matches(node, Some(&Value::String(r.partition_key().to_string())))
                }
                "sequenceNumber" => {
                    node_matches(node, Some(&Value::String(r.sequence_number().to_string())))
                }
                "explicitHashKey" => node_matches(
                    node,
                    r.explicit_hash_key()
                        .map(|k| Value::String(k.to_string()))
                        .as_ref(),
                ),
                "data" => match (&data, node) {
                    (Data::Json(v), _) => node_matches(node, Some(v)),
                    (Data::Text(s), Node::Leaf(_)) => {
                        node_matches(node, Some(&Value::String(s.clone())))
                    }
                    // Not JSON: an object pattern cannot look into it.
                    _ => false,
                },
                _ => false,
            })
        })
    }
}

/// A record's data as a pattern sees it.
enum Data {
    Json(Value),
    Text(String),
    Absent,
}

impl Data {
    fn of(bytes: &[u8]) -> Self {
        if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
            return Self::Json(v);
        }
        match std::str::from_utf8(bytes) {
            Ok(s) => Self::Text(s.to_string()),
            Err(_) => Self::Absent,
        }
    }
}

fn node_matches(node: &Node, v: Option<&Value>) -> bool {
    match node {
        Node::Object(fields) => {
            let obj = v.and_then(Value::as_object);
            fields
                .iter()
                .all(|(k, child)| node_matches(child, obj.and_then(|o| o.get(k))))
        }
        Node::Leaf(matchers) => match v {
            None => matchers.contains(&Matcher::Exists(false)),
            Some(Value::Array(items)) => matchers.iter().any(|m| {
                if let Matcher::Exists(e) = m {
                    return *e;
                }
                items.iter().any(|i| leaf_matches(m, i))
            }),
            Some(v) => matchers.iter().any(|m| leaf_matches(m, v)),
        },
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn leaf_matches(m: &Matcher, v: &Value) -> bool {
    match m {
        Matcher::Equals(want) => same(want, v),
        Matcher::Prefix(p) => v.as_str().is_some_and(|s| s.starts_with(p.as_str())),
        Matcher::Suffix(p) => v.as_str().is_some_and(|s| s.ends_with(p.as_str())),
        Matcher::EqualsIgnoreCase(p) => v
            .as_str()
            .is_some_and(|s| s.to_lowercase() == p.to_lowercase()),
        Matcher::AnythingBut(list) => scalar(v) && !list.iter().any(|x| same(x, v)),
        Matcher::AnythingButPrefix(p) => v.as_str().is_some_and(|s| !s.starts_with(p.as_str())),
        Matcher::Numeric(cmps) => v.as_f64().is_some_and(|x| {
            cmps.iter().all(|(c, n)| match c {
                Cmp::Eq => x == *n,
                Cmp::Lt => x < *n,
                Cmp::Le => x <= *n,
                Cmp::Gt => x > *n,
                Cmp::Ge => x >= *n,
            })
        }),
        Matcher::Exists(e) => *e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rec {
        data: Vec<u8>,
        partition_key: String,
        explicit_hash_key: Option<String>,
        sequence_number: String,
    }

    impl FilterRecord for Rec {
        fn partition_key(&self) -> &str {
            &self.partition_key
        }
        fn sequence_number(&self) -> &str {
            &self.sequence_number
        }
        fn explicit_hash_key(&self) -> Option<&str> {
            self.explicit_hash_key.as_deref()
        }
        fn data(&self) -> &[u8] {
            &self.data
        }
    }

    fn rec(key: &str, data: &str) -> Rec {
        Rec {
            data: data.as_bytes().to_vec(),
            partition_key: key.into(),
            explicit_hash_key: None,
            sequence_number: "49590338271490256608559692538361571095921575989136588898".into(),
        }
    }

    fn f(patterns: &[&str]) -> Filters {
        match Filters::parse(patterns) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn no_filters_pass_everything() {
        assert!(f(&[]).matches(&rec("k", "not json")));
        assert!(f(&[]).is_empty());
    }

    #[test]
    fn data_fields_and_partition_keys() {
        let click = f(&[r#"{"data": {"type": ["click"]}}"#]);
        assert!(click.matches(&rec("k", r#"{"type": "click", "n": 1}"#)));
        assert!(!click.matches(&rec("k", r#"{"type": "view"}"#)));
        assert!(!click.matches(&rec("k", r#"{"other": "click"}"#)));
        assert!(!click.matches(&rec("k", "type=click")), "not JSON");
        assert!(!click.matches(&rec("k", r#"{"type": ["view", "x"]}"#)));
        assert!(click.matches(&rec("k", r#"{"type": ["view", "click"]}"#)));

        let both = f(&[
            r#"{"partitionKey": [{"prefix": "user-"}], "data": {"n": [{"numeric": [">", 1, "<=", 5]}]}}"#,
        ]);
        assert!(both.matches(&rec("user-7", r#"{"n": 5}"#)));
        assert!(!both.matches(&rec("user-7", r#"{"n": 1}"#)));
        assert!(!both.matches(&rec("admin", r#"{"n": 3}"#)));
        assert!(
            !both.matches(&rec("user-7", r#"{"n": "3"}"#)),
            "a string is not a number"
        );

        // Patterns are alternatives.
        let either = f(&[
            r#"{"partitionKey": ["a"]}"#,
            r#"{"data": {"level": ["ERROR"]}}"#,
        ]);
        assert!(either.matches(&rec("a", "text")));
        assert!(either.matches(&rec("b", r#"{"level": "ERROR"}"#)));
        assert!(!either.matches(&rec("b", r#"{"level": "INFO"}"#)));
    }

    #[test]
    fn every_operator() {
        let cases: &[(&str, &str, bool)] = &[
            (
                r#"{"data": {"s": [{"suffix": ".png"}]}}"#,
                r#"{"s": "a.png"}"#,
                true,
            ),
            (
                r#"{"data": {"s": [{"suffix": ".png"}]}}"#,
                r#"{"s": "a.jpg"}"#,
                false,
            ),
            (
                r#"{"data": {"s": [{"equals-ignore-case": "ok"}]}}"#,
                r#"{"s": "OK"}"#,
                true,
            ),
            (
                r#"{"data": {"s": [{"anything-but": "a"}]}}"#,
                r#"{"s": "b"}"#,
                true,
            ),
            (
                r#"{"data": {"s": [{"anything-but": ["a", "b"]}]}}"#,
                r#"{"s": "b"}"#,
                false,
            ),
            (
                r#"{"data": {"s": [{"anything-but": ["a"]}]}}"#,
                r#"{}"#,
                false,
            ),
            (
                r#"{"data": {"s": [{"anything-but": {"prefix": "us-"}}]}}"#,
                r#"{"s": "eu-1"}"#,
                true,
            ),
            (
                r#"{"data": {"s": [{"anything-but": {"prefix": "us-"}}]}}"#,
                r#"{"s": "us-1"}"#,
                false,
            ),
            (
                r#"{"data": {"s": [{"exists": true}]}}"#,
                r#"{"s": null}"#,
                true,
            ),
            (r#"{"data": {"s": [{"exists": true}]}}"#, r#"{}"#, false),
            (r#"{"data": {"s": [{"exists": false}]}}"#, r#"{}"#, true),
            (
                r#"{"data": {"s": [{"exists": false}]}}"#,
                r#"{"s": 1}"#,
                false,
            ),
            (r#"{"data": {"s": [null]}}"#, r#"{"s": null}"#, true),
            (r#"{"data": {"s": [true]}}"#, r#"{"s": false}"#, false),
            (r#"{"data": {"n": [3]}}"#, r#"{"n": 3.0}"#, true),
            (
                r#"{"data": {"n": [{"numeric": ["=", 3]}]}}"#,
                r#"{"n": 3}"#,
                true,
            ),
            (
                r#"{"data": {"n": [{"numeric": ["<", 0]}]}}"#,
                r#"{"n": 0}"#,
                false,
            ),
            (
                r#"{"data": {"a": {"b": ["x"]}}}"#,
                r#"{"a": {"b": "x"}}"#,
                true,
            ),
            (r#"{"data": {"a": {"b": ["x"]}}}"#, r#"{"a": "x"}"#, false),
            // A leaf list on data matches non-JSON data as text.
            (r#"{"data": [{"prefix": "key-1:"}]}"#, "key-1:42", true),
            (r#"{"data": [{"prefix": "key-1:"}]}"#, "key-2:42", false),
            (r#"{"data": ["abc"]}"#, r#""abc""#, true),
        ];
        for (pattern, data, want) in cases {
            assert_eq!(
                f(&[pattern]).matches(&rec("k", data)),
                *want,
                "{pattern} on {data}"
            );
        }
    }

    #[test]
    fn bad_patterns_are_refused_naming_what_and_where() {
        let cases: &[(&str, &str)] = &[
            ("not json", "not JSON"),
            ("[1]", "a pattern is a JSON object"),
            ("{}", "empty pattern"),
            (r#"{"Data": {"a": ["x"]}}"#, "unknown field `Data`"),
            (r#"{"data": {"a": []}}"#, "`.data.a`: an empty list"),
            (
                r#"{"data": {"a": "x"}}"#,
                "`.data.a`: values are matched by a list",
            ),
            (
                r#"{"data": {"a": [{"prefx": "x"}]}}"#,
                "unknown operator `prefx`",
            ),
            (
                r#"{"data": {"a": [{"prefix": 1}]}}"#,
                "`prefix` needs a string",
            ),
            (
                r#"{"data": {"a": [{"numeric": [">"]}]}}"#,
                "`numeric` takes",
            ),
            (
                r#"{"data": {"a": [{"numeric": ["~", 1]}]}}"#,
                "`numeric` takes",
            ),
            (r#"{"data": {"a": [{"exists": "yes"}]}}"#, "`exists` needs"),
            (
                r#"{"data": {"a": [{"prefix": "x", "suffix": "y"}]}}"#,
                "exactly one key",
            ),
            (r#"{"data": {"a": [[1]]}}"#, "not lists"),
        ];
        for (pattern, says) in cases {
            match Filters::parse(&["{\"partitionKey\": [\"ok\"]}", pattern]) {
                Ok(_) => panic!("accepted {pattern}"),
                Err(e) => {
                    assert_eq!(e.index, 2, "{e}");
                    assert!(e.to_string().contains(says), "{pattern}: {e}");
                }
            }
        }
        let long = format!(
            r#"{{"data": {{"a": ["{}"]}}}}"#,
            "x".repeat(MAX_PATTERN_BYTES)
        );
        assert!(Filters::parse(&[long]).is_err());
        let many = vec![r#"{"partitionKey": ["a"]}"#; MAX_FILTERS + 1];
        assert!(Filters::parse(&many).is_err());
    }

    #[test]
    fn arbitrary_data_never_panics() {
        let filters = f(&[
            r#"{"data": {"a": {"b": [{"numeric": [">", 0]}]}}}"#,
            r#"{"data": [{"prefix": "x"}]}"#,
        ]);
        for data in [
            &b"\xff\xfe"[..],
            b"",
            b"[",
            b"{\"a\":",
            b"null",
            b"[1,2]",
            b"{\"a\":[]}",
        ] {
            let r = Rec {
                data: data.to_vec(),
                ..rec("k", "")
            };
            let _ = filters.matches(&r);
        }
    }
}
