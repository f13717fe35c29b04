//! Migration helpers: an existing consumer's configuration turned into a `KinesisApplication`
//! manifest. Pure functions: no I/O, no AWS, no Kubernetes.
//!
//! The CLI around them:
//!
//! - `kinesis-worker import kcl-properties FILE`: the `.properties` file of a KCL
//!   MultiLangDaemon app (amazon-kclpy, aws-kcl, …), read by [`kcl_properties()`];
//! - `kinesis-worker import lambda-esm FILE`: the JSON that `aws lambda
//!   get-event-source-mapping` prints for a Kinesis event source mapping, read by
//!   [`lambda_esm()`].
//!
//! Both print the manifest ([`Import::to_yaml`]) on stdout, ready for `kubectl apply -f -`,
//! and the settings that have no equivalent ([`Import::report`]) on stderr. Every key of the
//! input ends up in one of the two, never dropped silently. docs/MIGRATING.md walks through
//! both migrations.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

mod kcl;
mod lambda_esm;

pub use kcl::kcl_properties;
pub use lambda_esm::lambda_esm;

/// The `apiVersion` of a KinesisApplication (group and version of
/// `crds/kinesisapplications.yaml`).
pub const API_VERSION: &str = "kinesis-operator.io/v1alpha1";

/// The `kind` of a KinesisApplication.
pub const KIND: &str = "KinesisApplication";

/// What an import produced: the KinesisApplication manifest ([`Import::to_yaml`] writes it
/// as YAML, ready for `kubectl apply -f -`) and the settings that have no equivalent
/// (reported by [`Import::report`], never silently dropped).
#[derive(Debug, Clone, PartialEq)]
pub struct Import {
    /// The manifest: `apiVersion`, `kind`, `metadata.name` and the `spec` fields the input
    /// set (nothing else).
    pub manifest: Value,
    /// The input settings that are not in the manifest, in the order they were met.
    pub unmapped: Vec<Unmapped>,
}

/// One input setting that is not in the manifest, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmapped {
    /// The key as the input spells it (for nested JSON, a path such as
    /// `DestinationConfig.OnSuccess.Destination`).
    pub key: String,
    /// Its value as given (JSON text for anything but a string).
    pub value: String,
    /// Why it has no equivalent, and what to do instead, if anything.
    pub reason: String,
}

/// An input that cannot be imported. Each message names the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The KCL properties name no stream.
    #[error(
        "neither streamName nor streamArn is set: add `streamName = NAME` (or `streamArn = arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`)"
    )]
    NoStream,
    /// A setting the import needs is missing.
    #[error("{key} is missing: {fix}")]
    Missing {
        /// The setting.
        key: &'static str,
        /// What to add.
        fix: &'static str,
    },
    /// A setting that must be a whole number is not one.
    #[error("{key} = {value:?} is not a whole number: {fix}")]
    NotANumber {
        /// The setting.
        key: String,
        /// What was given.
        value: String,
        /// What to write instead.
        fix: String,
    },
    /// A value the import cannot use (and that would not work where it came from either).
    #[error("{key} = {value:?}: {fix}")]
    BadValue {
        /// The setting.
        key: String,
        /// What was given.
        value: String,
        /// What is wrong and what to write instead.
        fix: String,
    },
    /// The event source mapping is not JSON.
    #[error(
        "the input is not JSON ({0}): give what `aws lambda get-event-source-mapping --uuid UUID --output json` prints"
    )]
    Json(#[from] serde_json::Error),
    /// JSON, but not one event source mapping.
    #[error("the JSON is not one event source mapping: {hint}")]
    NotAMapping {
        /// What the input looks like instead, and what to give.
        hint: &'static str,
    },
    /// The manifest could not be written as YAML.
    #[error("cannot write the manifest as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

impl Import {
    /// The manifest as YAML text, ready for `kubectl apply -f -`.
    ///
    /// # Errors
    /// [`ImportError::Yaml`] if serde_yaml cannot write it (it can write any JSON value).
    pub fn to_yaml(&self) -> Result<String, ImportError> {
        Ok(serde_yaml::to_string(&self.manifest)?)
    }

    /// One line per unmapped setting, `# not imported: KEY = VALUE: REASON`, meant for
    /// stderr (the `#` keeps the lines harmless if they end up in the manifest). Empty when
    /// everything was imported.
    pub fn report(&self) -> String {
        self.unmapped
            .iter()
            .map(|u| {
                format!(
                    "# not imported: {} = {}: {}\n",
                    one_line(&u.key),
                    one_line(&u.value),
                    one_line(&u.reason)
                )
            })
            .collect()
    }
}

/// `text` with its line breaks escaped, so a report entry stays on one line.
fn one_line(text: &str) -> String {
    text.replace('\n', "\\n").replace('\r', "\\r")
}

/// `spec.stream`.
const STREAM: &str = "stream";
/// `spec.consumer`.
const CONSUMER: &str = "consumer";
/// `spec.delivery`.
const DELIVERY: &str = "delivery";
/// `spec.processor`.
const PROCESSOR: &str = "processor";

/// A numeric field of the schema and the range `crds/kinesisapplications.yaml` allows.
#[derive(Clone, Copy, Debug)]
struct Field {
    /// The section of `spec` (`consumer`, `delivery`).
    section: &'static str,
    /// The field's name in it.
    name: &'static str,
    /// The least value allowed.
    min: i64,
    /// The largest value allowed.
    max: i64,
}

/// A manifest being built: the fields set so far (and only those) and what was not imported.
struct Draft {
    /// `metadata.name`.
    name: String,
    /// The top-level fields of `spec` (`applicationName`, `initialPosition`, `template`, …).
    spec: Map<String, Value>,
    /// The sections of `spec` (`stream`, `consumer`, `delivery`, `processor`) by name.
    sections: BTreeMap<&'static str, Map<String, Value>>,
    /// The settings reported instead of imported.
    unmapped: Vec<Unmapped>,
}

impl Draft {
    /// An empty manifest named `name`.
    fn new(name: String) -> Self {
        Self {
            name,
            spec: Map::new(),
            sections: BTreeMap::new(),
            unmapped: Vec::new(),
        }
    }

    /// Sets the top-level `spec.FIELD`.
    fn top(&mut self, field: &str, value: impl Into<Value>) {
        self.spec.insert(field.to_owned(), value.into());
    }

    /// Sets `spec.SECTION.FIELD`.
    fn set(&mut self, section: &'static str, field: &str, value: impl Into<Value>) {
        self.sections
            .entry(section)
            .or_default()
            .insert(field.to_owned(), value.into());
    }

    /// Reports `key = value` as not imported, for `reason`.
    fn skip(&mut self, key: &str, value: &str, reason: impl Into<String>) {
        self.unmapped.push(Unmapped {
            key: key.to_owned(),
            value: value.to_owned(),
            reason: reason.into(),
        });
    }

    /// Sets `field` to `n` when the schema allows it; otherwise reports `key`, naming the
    /// range (an out-of-range value would make the whole manifest invalid).
    fn number(&mut self, key: &str, n: i64, field: Field) {
        if (field.min..=field.max).contains(&n) {
            self.set(field.section, field.name, n);
        } else {
            self.skip(
                key,
                &n.to_string(),
                format!(
                    "spec.{}.{} takes {} to {}: set a value in that range by hand, or leave the default",
                    field.section, field.name, field.min, field.max
                ),
            );
        }
    }

    /// Sets the pod template: one container, `app`, running `image`.
    fn app_container(&mut self, image: &str) {
        self.top(
            "template",
            json!({"spec": {"containers": [{"name": "app", "image": image}]}}),
        );
    }

    /// The finished import: the sections that have fields go into `spec`.
    fn finish(self) -> Import {
        let mut spec = self.spec;
        for (section, fields) in self.sections {
            if !fields.is_empty() {
                spec.insert(section.to_owned(), Value::Object(fields));
            }
        }
        Import {
            manifest: json!({
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": {"name": self.name},
                "spec": spec,
            }),
            unmapped: self.unmapped,
        }
    }
}

/// A DNS-1123 label made from `raw` (an application or function name), for
/// `metadata.name`: lowercase, every other character than `a-z0-9` turned into `-`, at most
/// 63 characters, no `-` at either end; `fallback` when nothing is left.
fn dns_name(raw: &str, fallback: &str) -> String {
    let mapped: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    // Every character is ASCII now, so any byte index is a character boundary.
    let trimmed = mapped.trim_matches('-');
    let short = trimmed.get(..63).unwrap_or(trimmed).trim_end_matches('-');
    if short.is_empty() {
        fallback.to_owned()
    } else {
        short.to_owned()
    }
}

/// A Kinesis stream ARN, or the ARN of a stream's enhanced fan-out consumer, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KinesisArn {
    /// The stream's ARN (for a consumer ARN, the part before `/consumer/`).
    stream_arn: String,
    /// The region in the ARN.
    region: String,
    /// The stream's name.
    stream: String,
    /// For a consumer ARN, the consumer's name.
    consumer: Option<String>,
}

/// `arn` taken apart if it is what `spec.stream.arn` accepts
/// (`arn:aws…:kinesis:REGION:ACCOUNT:stream/NAME`) or the ARN of a consumer of such a stream
/// (`…:stream/NAME/consumer/CONSUMER:CREATED`).
fn kinesis_arn(arn: &str) -> Option<KinesisArn> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = parts[..] else {
        return None;
    };
    let valid = prefix == "arn"
        && partition.starts_with("aws")
        && partition
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'-')
        && service == "kinesis"
        && !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit());
    if !valid {
        return None;
    }
    let path = resource.strip_prefix("stream/")?;
    let (stream, consumer) = match path.split_once("/consumer/") {
        Some((stream, consumer)) => {
            let name = consumer.split_once(':').map_or(consumer, |(name, _)| name);
            if name.is_empty() {
                return None;
            }
            (stream, Some(name.to_owned()))
        }
        None => (path, None),
    };
    if !is_stream_name(stream) {
        return None;
    }
    Some(KinesisArn {
        stream_arn: format!("arn:{partition}:kinesis:{region}:{account}:stream/{stream}"),
        region: region.to_owned(),
        stream: stream.to_owned(),
        consumer,
    })
}

/// A name `spec.stream.name` accepts: 1 to 128 of `a-zA-Z0-9_.-`.
fn is_stream_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A name `spec.applicationName` accepts (DynamoDB's rule for table names): 3 to 255 of
/// `a-zA-Z0-9_.-`.
fn is_application_name(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A region `spec.stream.region` accepts (`^[a-z]{2}(-[a-z]+)+-\d$`, e.g. `us-east-1`).
fn is_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    let Some((last, rest)) = parts.split_last() else {
        return false;
    };
    let Some((first, middle)) = rest.split_first() else {
        return false;
    };
    first.len() == 2
        && is_lowercase_word(first)
        && !middle.is_empty()
        && middle.iter().all(|word| is_lowercase_word(word))
        && last.len() == 1
        && last.bytes().all(|b| b.is_ascii_digit())
}

/// One or more of `a-z`.
fn is_lowercase_word(word: &str) -> bool {
    !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase())
}

/// `spec.initialPosition` for a KCL or Lambda starting position (KCL reads it in any case).
fn initial_position(key: &str, given: &str) -> Result<&'static str, ImportError> {
    match given.to_ascii_uppercase().as_str() {
        "TRIM_HORIZON" => Ok("TRIM_HORIZON"),
        "LATEST" => Ok("LATEST"),
        "AT_TIMESTAMP" => Ok("AT_TIMESTAMP"),
        _ => Err(ImportError::BadValue {
            key: key.to_owned(),
            value: given.to_owned(),
            fix: "write TRIM_HORIZON, LATEST or AT_TIMESTAMP".to_owned(),
        }),
    }
}

/// `epoch_ms` (milliseconds since 1970) as RFC 3339 in UTC, e.g. `2021-11-11T05:39:02Z`
/// (`.mmm` when there are milliseconds); `None` before 1970 or after year 9999.
fn rfc3339_utc(epoch_ms: i64) -> Option<String> {
    if epoch_ms < 0 {
        return None;
    }
    let (secs, ms) = (epoch_ms / 1000, epoch_ms % 1000);
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    if year > 9999 {
        return None;
    }
    let (hour, minute, second) = (of_day / 3600, of_day % 3600 / 60, of_day % 60);
    let fraction = if ms == 0 {
        String::new()
    } else {
        format!(".{ms:03}")
    };
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z"
    ))
}

/// The proleptic Gregorian date `days` (≥ 0) days after 1970-01-01: Howard Hinnant's
/// `civil_from_days`, in plain integer arithmetic.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn dns_names_are_dns_1123_labels() {
        for (raw, name) in [
            ("PythonKCLSample", "pythonkclsample"),
            ("My_App.v2", "my-app-v2"),
            ("--orders--", "orders"),
            ("", "fallback"),
            ("日本", "fallback"),
        ] {
            assert_eq!(dns_name(raw, "fallback"), name, "{raw}");
        }
        assert_eq!(dns_name(&"a".repeat(100), "x"), "a".repeat(63));
        // Cut at 63 characters, then no '-' left at the end.
        let cut = format!("{}_b", "a".repeat(62));
        assert_eq!(dns_name(&cut, "x"), "a".repeat(62));
    }

    #[test]
    fn epoch_milliseconds_become_rfc3339_in_utc() {
        for (ms, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (1_636_609_142_000, "2021-11-11T05:39:02Z"),
            (951_782_400_000, "2000-02-29T00:00:00Z"),
            (1_704_067_200_500, "2024-01-01T00:00:00.500Z"),
            (253_402_300_799_000, "9999-12-31T23:59:59Z"),
        ] {
            assert_eq!(rfc3339_utc(ms).as_deref(), Some(text), "{ms}");
        }
        assert_eq!(rfc3339_utc(-1), None);
        assert_eq!(rfc3339_utc(253_402_300_800_000), None);
    }

    #[test]
    fn stream_and_consumer_arns_are_taken_apart() {
        let stream = kinesis_arn("arn:aws:kinesis:eu-west-1:123456789012:stream/orders");
        assert_eq!(
            stream,
            Some(KinesisArn {
                stream_arn: "arn:aws:kinesis:eu-west-1:123456789012:stream/orders".into(),
                region: "eu-west-1".into(),
                stream: "orders".into(),
                consumer: None,
            })
        );
        let consumer = kinesis_arn(
            "arn:aws-cn:kinesis:cn-north-1:123456789012:stream/clicks/consumer/lambda:1700000000",
        );
        assert_eq!(
            consumer.as_ref().map(|a| a.stream_arn.as_str()),
            Some("arn:aws-cn:kinesis:cn-north-1:123456789012:stream/clicks")
        );
        assert_eq!(consumer.and_then(|a| a.consumer).as_deref(), Some("lambda"));
        for bad in [
            "arn:aws:sqs:us-east-1:123456789012:queue",
            "arn:aws:kinesis:us-east-1:1234:stream/short-account",
            "arn:aws:kinesis:us-east-1:123456789012:deliverystream/x",
            "arn:aws:kinesis:us-east-1:123456789012:stream/",
            "arn:aws:kinesis:us-east-1:123456789012:stream/a/consumer/",
            "arn:aws:kinesis:us-east-1:123456789012:stream/bad name",
            "orders",
        ] {
            assert_eq!(kinesis_arn(bad), None, "{bad}");
        }
    }

    #[test]
    fn regions_follow_the_schema() {
        for good in ["us-east-1", "us-gov-west-1", "eu-central-2", "cn-north-1"] {
            assert!(is_region(good), "{good}");
        }
        for bad in [
            "local",
            "us-east",
            "us-east-1a",
            "US-EAST-1",
            "use-east-1",
            "",
        ] {
            assert!(!is_region(bad), "{bad}");
        }
    }

    #[test]
    fn starting_positions_are_read_in_any_case() -> TestResult {
        assert_eq!(initial_position("k", "trim_horizon")?, "TRIM_HORIZON");
        assert_eq!(initial_position("k", "LATEST")?, "LATEST");
        let err = initial_position("initialPositionInStream", "OLDEST")
            .err()
            .ok_or("OLDEST was accepted")?;
        let message = err.to_string();
        assert!(
            message.contains("initialPositionInStream") && message.contains("TRIM_HORIZON"),
            "{message}"
        );
        Ok(())
    }

    #[test]
    fn the_yaml_reads_back_as_the_same_manifest() -> TestResult {
        let imports = [
            kcl_properties(
                "applicationName = Orders\nstreamName = orders\nexecutableName = app.py\nmaxRecords = 500\nworkerId = w1\n",
            )?,
            lambda_esm(
                r#"{"EventSourceArn": "arn:aws:kinesis:us-east-1:123456789012:stream/orders",
                    "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:orders",
                    "StartingPosition": "AT_TIMESTAMP", "StartingPositionTimestamp": 1704067200.0,
                    "BatchSize": 100, "BisectBatchOnFunctionError": true,
                    "FilterCriteria": {"Filters": [{"Pattern": "{\"data\": {\"type\": [\"order\"]}}"}]}}"#,
            )?,
        ];
        for import in imports {
            let yaml = import.to_yaml()?;
            let back: Value = serde_yaml::from_str(&yaml)?;
            assert_eq!(back, import.manifest, "{yaml}");
        }
        Ok(())
    }

    #[test]
    fn the_report_has_one_comment_line_per_unmapped_setting() -> TestResult {
        let import = kcl_properties(
            "applicationName = Orders\nstreamName = orders\nexecutableName = app.py\nworkerId = w1\nmetricsLevel = NONE\n",
        )?;
        let report = import.report();
        assert_eq!(report.lines().count(), import.unmapped.len());
        assert!(
            report.lines().all(|l| l.starts_with("# not imported: ")),
            "{report}"
        );
        assert!(
            report.contains("# not imported: workerId = w1: workers are pods"),
            "{report}"
        );
        // A value with a line break still makes one line.
        let multi = Import {
            manifest: Value::Null,
            unmapped: vec![Unmapped {
                key: "k".into(),
                value: "a\nb".into(),
                reason: "r".into(),
            }],
        };
        assert_eq!(multi.report(), "# not imported: k = a\\nb: r\n");
        Ok(())
    }
}
