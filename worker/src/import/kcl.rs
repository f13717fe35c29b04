//! A KCL MultiLangDaemon `.properties` file (amazon-kclpy, aws-kcl, …) as a
//! KinesisApplication that runs the same executable, one child per shard, on the same lease
//! table.

use super::{
    CONSUMER, Draft, Field, Import, ImportError, PROCESSOR, STREAM, dns_name, initial_position,
    is_application_name, is_region, kinesis_arn, rfc3339_utc,
};

/// The image put in the template: the properties name none.
const IMAGE: &str = "REPLACE-WITH-YOUR-APP-IMAGE";

/// KCL's start time: whole seconds since 1970 (KCL multiplies it by 1000).
const EXTENDED: &str = "initialPositionInStreamExtended";

/// The keys the mapping functions below handle (import or report) themselves; every other
/// key is reported with [`reason`].
const MAPPED: [&str; 14] = [
    "applicationName",
    "tableName",
    "streamName",
    "streamArn",
    "regionName",
    "kinesisEndpoint",
    "dynamoDBEndpoint",
    "initialPositionInStream",
    EXTENDED,
    "executableName",
    "failoverTimeMillis",
    "maxRecords",
    "idleTimeBetweenReadsInMillis",
    "retrievalMode",
];

/// The numeric settings with a field of their own, and its range.
const NUMBERS: [(&str, Field); 3] = [
    (
        "failoverTimeMillis",
        Field {
            section: CONSUMER,
            name: "failoverTimeMs",
            min: 1_000,
            max: 600_000,
        },
    ),
    (
        "maxRecords",
        Field {
            section: CONSUMER,
            name: "maxRecords",
            min: 1,
            max: 10_000,
        },
    ),
    (
        "idleTimeBetweenReadsInMillis",
        Field {
            section: CONSUMER,
            name: "idleTimeBetweenReadsMs",
            min: 0,
            max: 60_000,
        },
    ),
];

/// The polling settings: with `retrievalMode = DEFAULT`, KCL polls when one is set and uses
/// enhanced fan-out otherwise.
const POLLING_KEYS: [&str; 4] = [
    "maxRecords",
    "idleTimeBetweenReadsInMillis",
    "retryGetRecordsInSeconds",
    "maxGetRecordsThreadPool",
];

/// Imports a KCL MultiLangDaemon `.properties` file: `streamName`/`streamArn`,
/// `applicationName` (kept exactly: it is the lease table, so the KCL app's checkpoints are
/// adopted; `tableName`, when set, names the table instead), `regionName`, the endpoints,
/// `initialPositionInStream` (and `initialPositionInStreamExtended`, epoch seconds),
/// `executableName` (the command kinesis-bridge runs once per shard), `failoverTimeMillis`,
/// `maxRecords`, `idleTimeBetweenReadsInMillis` and `retrievalMode`. Every other key is
/// reported in [`Import::unmapped`].
///
/// # Errors
/// No stream, no `applicationName` or `executableName`, a number that is not one, or a
/// value KCL itself would refuse ([`ImportError`] names the key and the fix).
pub fn kcl_properties(text: &str) -> Result<Import, ImportError> {
    let (props, earlier) = last_values(parse_properties(text));
    let app = get(&props, "applicationName").ok_or(ImportError::Missing {
        key: "applicationName",
        fix: "add `applicationName = NAME`, the name the KCL app runs under (its lease table)",
    })?;
    let mut draft = Draft::new(dns_name(app, "kcl-app"));
    for (key, value) in &earlier {
        draft.skip(
            key,
            value,
            "set again later in the file; the last value counts, as in KCL",
        );
    }
    for (key, _) in props.iter().filter(|(_, value)| value.is_empty()) {
        draft.skip(key, "", "empty: the default applies");
    }
    application(&props, &mut draft, app)?;
    stream(&props, &mut draft)?;
    position(&props, &mut draft)?;
    processor(&props, &mut draft)?;
    consumer(&props, &mut draft)?;
    for (key, value) in &props {
        if !value.is_empty() && !MAPPED.contains(&key.as_str()) {
            draft.skip(key, value, reason(key));
        }
    }
    Ok(draft.finish())
}

/// The value of `key`, unless absent or empty.
fn get<'a>(props: &'a [(String, String)], key: &str) -> Option<&'a str> {
    props
        .iter()
        .find(|(k, v)| k == key && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

/// `spec.applicationName`: the lease table, kept exactly so the checkpoints are adopted.
fn application(
    props: &[(String, String)],
    draft: &mut Draft,
    app: &str,
) -> Result<(), ImportError> {
    let table = get(props, "tableName");
    let (key, lease_table) = table.map_or(("applicationName", app), |t| ("tableName", t));
    if !is_application_name(lease_table) {
        return Err(ImportError::BadValue {
            key: key.to_owned(),
            value: lease_table.to_owned(),
            fix: "a lease table's name has 3 to 255 of a-z A-Z 0-9 _ . - (DynamoDB's rule, so KCL cannot have used this one): check the file".to_owned(),
        });
    }
    draft.top("applicationName", lease_table);
    if let Some(table) = table
        && table != app
    {
        draft.skip(
            "applicationName",
            app,
            format!("tableName ({table}) names the lease table, so spec.applicationName is {table} (its checkpoints); applicationName only gives metadata.name"),
        );
    }
    Ok(())
}

/// `spec.stream`: the ARN (KCL prefers it too) or the name, the region and the endpoints.
fn stream(props: &[(String, String)], draft: &mut Draft) -> Result<(), ImportError> {
    let name = get(props, "streamName");
    let region = get(props, "regionName");
    if let Some(arn) = get(props, "streamArn") {
        let parsed = kinesis_arn(arn)
            .filter(|a| a.consumer.is_none())
            .ok_or_else(|| ImportError::BadValue {
                key: "streamArn".to_owned(),
                value: arn.to_owned(),
                fix: "give a stream ARN, arn:aws:kinesis:REGION:ACCOUNT:stream/NAME".to_owned(),
            })?;
        draft.set(STREAM, "arn", arn);
        if let Some(name) = name
            && name != parsed.stream
        {
            draft.skip(
                "streamName",
                name,
                format!(
                    "streamArn takes precedence, as in KCL; it names stream {}",
                    parsed.stream
                ),
            );
        }
        if let Some(region) = region {
            if region == parsed.region {
                draft.set(STREAM, "region", region);
            } else {
                draft.skip(
                    "regionName",
                    region,
                    format!(
                        "the stream ARN's region ({}) is used: spec.stream.region must agree with the ARN",
                        parsed.region
                    ),
                );
            }
        }
    } else if let Some(name) = name {
        draft.set(STREAM, "name", name);
        if let Some(region) = region {
            if is_region(region) {
                draft.set(STREAM, "region", region);
            } else {
                draft.skip(
                    "regionName",
                    region,
                    "not an AWS region name such as us-east-1: set spec.stream.region by hand",
                );
            }
        }
    } else {
        return Err(ImportError::NoStream);
    }
    for (key, field) in [
        ("kinesisEndpoint", "endpoint"),
        ("dynamoDBEndpoint", "dynamoDbEndpoint"),
    ] {
        let Some(url) = get(props, key) else { continue };
        if url.starts_with("http://") || url.starts_with("https://") {
            draft.set(STREAM, field, url);
        } else {
            draft.skip(
                key,
                url,
                format!("not a URL: spec.stream.{field} takes http://HOST:PORT or https://HOST; set it by hand"),
            );
        }
    }
    Ok(())
}

/// `spec.initialPosition` and, for a start time, `spec.initialTimestamp`.
fn position(props: &[(String, String)], draft: &mut Draft) -> Result<(), ImportError> {
    let given = get(props, "initialPositionInStream");
    let plain = given
        .map(|v| initial_position("initialPositionInStream", v))
        .transpose()?;
    let extended = get(props, EXTENDED);
    let at = extended.and_then(epoch_seconds);
    if let Some(value) = extended
        && at.is_none()
    {
        draft.skip(
            EXTENDED,
            value,
            "not a start time as KCL reads it (whole seconds since 1970): set spec.initialPosition AT_TIMESTAMP and spec.initialTimestamp (RFC 3339) by hand",
        );
    }
    match (plain, at) {
        (_, Some(timestamp)) => {
            draft.top("initialPosition", "AT_TIMESTAMP");
            draft.top("initialTimestamp", timestamp);
            if let (Some(position), Some(given)) = (plain, given)
                && position != "AT_TIMESTAMP"
            {
                draft.skip(
                    "initialPositionInStream",
                    given,
                    format!("{EXTENDED} (a start time) takes its place: AT_TIMESTAMP"),
                );
            }
        }
        (Some("AT_TIMESTAMP"), None) => {
            return Err(ImportError::BadValue {
                key: "initialPositionInStream".to_owned(),
                value: "AT_TIMESTAMP".to_owned(),
                fix: format!(
                    "AT_TIMESTAMP needs a start time: add `{EXTENDED} = SECONDS_SINCE_1970`"
                ),
            });
        }
        (Some(position), None) => draft.top("initialPosition", position),
        (None, None) => {}
    }
    Ok(())
}

/// KCL's start time (whole seconds since 1970) as RFC 3339 in UTC.
fn epoch_seconds(value: &str) -> Option<String> {
    value
        .parse::<i64>()
        .ok()?
        .checked_mul(1000)
        .and_then(rfc3339_utc)
}

/// `spec.processor` (`kcl-multilang` and the command) and a template whose image is to be
/// replaced.
fn processor(props: &[(String, String)], draft: &mut Draft) -> Result<(), ImportError> {
    let executable = get(props, "executableName").ok_or(ImportError::Missing {
        key: "executableName",
        fix: "the MultiLangDaemon runs it for each shard; add e.g. `executableName = python3 app.py`",
    })?;
    let command = command(executable);
    let shown = command.join(" ");
    draft.set(PROCESSOR, "protocol", "kcl-multilang");
    draft.set(PROCESSOR, "command", command);
    draft.app_container(IMAGE);
    draft.skip(
        "image",
        IMAGE,
        format!("the properties name no image: replace it in spec.template with an image that holds the interpreter and the app; kinesis-bridge runs `{shown}` there (in the image's working directory), once per shard"),
    );
    Ok(())
}

/// The command for `executableName`: its words; a lone script gets its interpreter
/// (`python3` for `.py`, `node` for `.js`).
fn command(executable: &str) -> Vec<String> {
    let words: Vec<&str> = executable.split_whitespace().collect();
    match words[..] {
        [script] if script.ends_with(".py") => vec!["python3".to_owned(), script.to_owned()],
        [script] if script.ends_with(".js") => vec!["node".to_owned(), script.to_owned()],
        _ => words.iter().map(|w| (*w).to_owned()).collect(),
    }
}

/// `spec.consumer`: failover time, records per call, idle time and the read mode.
fn consumer(props: &[(String, String)], draft: &mut Draft) -> Result<(), ImportError> {
    for (key, field) in NUMBERS {
        let Some(value) = get(props, key) else {
            continue;
        };
        let n = value.parse::<i64>().map_err(|_| ImportError::NotANumber {
            key: key.to_owned(),
            value: value.to_owned(),
            fix: format!(
                "write digits only (spec.{}.{} takes {} to {})",
                field.section, field.name, field.min, field.max
            ),
        })?;
        draft.number(key, n, field);
    }
    if let Some(mode) = get(props, "retrievalMode") {
        let fan_out = match mode.to_ascii_uppercase().as_str() {
            "FANOUT" => true,
            "POLLING" => false,
            // KCL's DEFAULT: polling if any polling setting is there, enhanced fan-out if not.
            "DEFAULT" => !POLLING_KEYS.iter().any(|k| get(props, k).is_some()),
            _ => {
                return Err(ImportError::BadValue {
                    key: "retrievalMode".to_owned(),
                    value: mode.to_owned(),
                    fix: "write FANOUT, POLLING or DEFAULT".to_owned(),
                });
            }
        };
        let mode = if fan_out { "EnhancedFanOut" } else { "Polling" };
        draft.set(CONSUMER, "mode", mode);
    }
    Ok(())
}

/// Why `key` (not one of [`MAPPED`]) is not imported.
fn reason(key: &str) -> &'static str {
    const CREDENTIALS: &str = "credentials come from the pod's identity (spec.aws.roleArn / IRSA)";
    const BALANCING: &str = "the operator balances leases itself: ceil(shards / spec.scaling.shardsPerWorker) workers, leases moved by graceful hand-over";
    const METRICS: &str = "no CloudWatch metrics: the worker serves Prometheus metrics on :8080/metrics (docs/OPERATIONS.md)";
    const FAN_OUT: &str = "the operator registers its own consumer, named spec.applicationName (or uses one of that name that exists), when spec.consumer.mode is EnhancedFanOut";
    const KCL3: &str = "a KCL 3.x lease-assignment setting: the operator balances leases itself and uses no CoordinatorState or WorkerMetricStats table";
    const INTERNAL: &str = "KCL-internal tuning with no equivalent";
    let lower = key.to_ascii_lowercase();
    if lower.starts_with("awscredentialsprovider") {
        return CREDENTIALS;
    }
    if key.starts_with("fanoutConfig.") {
        return FAN_OUT;
    }
    if key.starts_with("coordinatorState") || key.starts_with("workerMetrics") {
        return KCL3;
    }
    match key {
        "processingLanguage" => "only added to KCL's user agent; nothing to set",
        "workerId" => "workers are pods; their ids are pod names",
        "maxLeasesForWorker" | "maxLeasesToStealAtOneTime" => BALANCING,
        "consumerName" | "consumerArn" => FAN_OUT,
        "timeoutInSeconds" => {
            "a hung child is killed after KCL_TIMEOUT_SECONDS (an environment variable of the app container, default 240) and fails only its own shard's call, which is retried (spec.consumer.maxAttempts); the MultiLangDaemon stopped the whole JVM"
        }
        "shutdownGraceMillis" => {
            "a stopping pod drains: each child gets shutdownRequested and may checkpoint; the pod's grace period is 30 s + the failover time"
        }
        "shardSyncIntervalMillis" => {
            "the workers list the shards every 30 s and the operator follows resharding itself"
        }
        "cleanupLeasesUponShardCompletion" => {
            "finished parent leases are always deleted once every child started"
        }
        "taskBackoffTimeMillis" => {
            "failed calls back off from 100 ms doubling to 10 s; not configurable"
        }
        "parentShardPollIntervalMillis" => {
            "a child shard starts once every parent's lease is finished; not configurable"
        }
        "callProcessRecordsEvenForEmptyRecordList" => {
            "the child never gets an empty processRecords (KCL's default, false); not configurable"
        }
        "validateSequenceNumberBeforeCheckpointing" => {
            "the worker refuses a checkpoint beyond the records it delivered, without a call to Kinesis; always on"
        }
        "metricsLevel"
        | "metricsBufferTimeMillis"
        | "metricsMaxQueueSize"
        | "metricsEnabledDimensions"
        | "cloudWatchRegionName" => METRICS,
        "dynamoDBRegionName" => {
            "the lease table is reached in spec.stream.region (or at spec.stream.dynamoDbEndpoint)"
        }
        "initialLeaseTableReadCapacity" | "initialLeaseTableWriteCapacity" => {
            "the operator creates a missing lease table on demand (pay per request); an adopted table keeps its capacity"
        }
        "maxActiveThreads" | "maxGetRecordsThreadPool" => {
            "one child process per shard, each shard read on its own; no thread pool"
        }
        "maxLeaseRenewalThreads" => {
            "one heartbeat item per worker keeps all its leases; no renewal threads"
        }
        "gracefulLeaseHandoffTimeoutMillis" | "isGracefulLeaseHandoffEnabled" => {
            "hand-overs are always graceful: the child gets shutdownRequested and may checkpoint first"
        }
        "clientVersionConfig"
        | "leaseAssignmentIntervalMillis"
        | "inMemoryWorkerMetricsCaptureFrequencyMillis"
        | "noOfPersistedMetricsPerWorkerMetrics"
        | "disableWorkerMetrics"
        | "maxThroughputPerHostKBps"
        | "dampeningPercentage"
        | "reBalanceThresholdPercentage"
        | "allowThroughputOvershoot"
        | "varianceBalancingFrequency"
        | "staleWorkerMetricsEntryCleanupDuration" => KCL3,
        "ignoreUnexpectedChildShards"
        | "listShardsBackoffTimeInMillis"
        | "maxListShardsRetryAttempts"
        | "shardPrioritization"
        | "skipShardSyncAtWorkerInitializationIfLeasesExist"
        | "schedulerInitializationBackoffTimeMillis"
        | "logWarningForTaskAfterMillis"
        | "retryGetRecordsInSeconds" => INTERNAL,
        _ => {
            "not a setting kinesis-operator knows (KCL ignores unknown keys too): check its spelling"
        }
    }
}

/// Keys and values, in file order.
type Entries = Vec<(String, String)>;

/// The entries of a Java `.properties` file in file order: `key = value`, `key: value` or
/// `key value`; `#` and `!` comment lines; a line ending in an odd number of backslashes
/// continues on the next (whose leading blanks are dropped); `\t`, `\n`, `\uXXXX` and `\x`
/// escapes. Values are trimmed. A key set twice appears twice (see [`last_values`]).
fn parse_properties(text: &str) -> Entries {
    let mut entries = Vec::new();
    let mut logical = String::new();
    let mut continued = false;
    for raw in text.lines() {
        let line = raw.trim_start_matches([' ', '\t', '\u{c}']);
        if !continued && (line.is_empty() || line.starts_with('#') || line.starts_with('!')) {
            continue;
        }
        let backslashes = line.bytes().rev().take_while(|b| *b == b'\\').count();
        if backslashes % 2 == 1 {
            logical.push_str(line.get(..line.len() - 1).unwrap_or_default());
            continued = true;
            continue;
        }
        logical.push_str(line);
        continued = false;
        entries.push(entry(&logical));
        logical.clear();
    }
    if continued {
        entries.push(entry(&logical));
    }
    entries
}

/// One logical line split into its key and value, escapes resolved.
fn entry(line: &str) -> (String, String) {
    let chars: Vec<char> = line.chars().collect();
    let blank = |c: char| c == ' ' || c == '\t' || c == '\u{c}';
    let mut i = 0;
    let mut key = String::new();
    while let Some(&c) = chars.get(i) {
        if c == '\\' {
            i = unescape(&chars, i + 1, &mut key);
        } else if c == '=' || c == ':' || blank(c) {
            break;
        } else {
            key.push(c);
            i += 1;
        }
    }
    while chars.get(i).is_some_and(|&c| blank(c)) {
        i += 1;
    }
    if chars.get(i).is_some_and(|&c| c == '=' || c == ':') {
        i += 1;
    }
    let mut value = String::new();
    while let Some(&c) = chars.get(i) {
        if c == '\\' {
            i = unescape(&chars, i + 1, &mut value);
        } else {
            value.push(c);
            i += 1;
        }
    }
    (key, value.trim().to_owned())
}

/// Resolves the escape whose character (after the backslash) is at `i`, appends it to
/// `out` and returns the index after it.
fn unescape(chars: &[char], i: usize, out: &mut String) -> usize {
    let Some(&c) = chars.get(i) else { return i };
    let simple = match c {
        't' => '\t',
        'n' => '\n',
        'r' => '\r',
        'f' => '\u{c}',
        'u' => {
            let hex: String = chars.iter().skip(i + 1).take(4).collect();
            let code = if hex.len() == 4 && hex.chars().all(|h| h.is_ascii_hexdigit()) {
                u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32)
            } else {
                None
            };
            if let Some(decoded) = code {
                out.push(decoded);
                return i + 5;
            }
            'u'
        }
        other => other,
    };
    out.push(simple);
    i + 1
}

/// The entries with each key once, at its last value (as Java's `Properties` keeps it), in
/// the order of first appearance; and the values that a later line replaced.
fn last_values(entries: Entries) -> (Entries, Entries) {
    let mut kept: Entries = Vec::new();
    let mut replaced = Vec::new();
    for (key, value) in entries {
        if let Some(slot) = kept.iter_mut().find(|(k, _)| *k == key) {
            let old = std::mem::replace(&mut slot.1, value);
            replaced.push((key, old));
        } else {
            kept.push((key, value));
        }
    }
    (kept, replaced)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::{Value, json};

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// amazon-kclpy's samples/sample.properties, as an app runs it, with a few more settings.
    const SAMPLE: &str = r"# The script that abides by the multi-language protocol. This script will
# be executed by the MultiLangDaemon, which will communicate with this script
# over STDIN and STDOUT according to the multi-language protocol.
executableName = sample_kclpy_app.py

# The name of an Amazon Kinesis stream to process.
streamName = kclpysample

# Used by the KCL as the name of this application. Will be used as the name
# of an Amazon DynamoDB table which will store the lease and checkpoint
# information for workers with this application name
applicationName = PythonKCLSample

# Users can change the credentials provider the KCL will use to retrieve credentials.
AwsCredentialsProvider = DefaultCredentialsProvider

# Appended to the user agent of the KCL.
processingLanguage = python/3.8

# Valid options at TRIM_HORIZON or LATEST.
initialPositionInStream = TRIM_HORIZON
#initialPositionInStreamExtended = 1636609142

# The KCL defaults to us-east-1
regionName = us-east-1

failoverTimeMillis = 10000
maxRecords = 5000
workerId = kcl-host-1
shardSyncIntervalMillis = 60000
callProcessRecordsEvenForEmptyRecordList = false
metricsLevel = NONE
timeoutInSeconds = 300
maxLeasesForWorker = 8
ordersTeamSetting = blue
";

    fn at<'a>(import: &'a Import, pointer: &str) -> Option<&'a Value> {
        import.manifest.pointer(pointer)
    }

    fn reason_of<'a>(import: &'a Import, key: &str) -> Option<&'a str> {
        import
            .unmapped
            .iter()
            .find(|u| u.key == key)
            .map(|u| u.reason.as_str())
    }

    #[test]
    fn the_kclpy_sample_maps_field_by_field() -> TestResult {
        let import = kcl_properties(SAMPLE)?;
        assert_eq!(
            at(&import, "/apiVersion"),
            Some(&json!("kinesis-operator.io/v1alpha1"))
        );
        assert_eq!(at(&import, "/kind"), Some(&json!("KinesisApplication")));
        assert_eq!(
            at(&import, "/metadata/name"),
            Some(&json!("pythonkclsample"))
        );
        // The lease table, kept exactly: the KCL app's checkpoints are adopted.
        assert_eq!(
            at(&import, "/spec/applicationName"),
            Some(&json!("PythonKCLSample"))
        );
        assert_eq!(
            at(&import, "/spec/stream"),
            Some(&json!({"name": "kclpysample", "region": "us-east-1"}))
        );
        assert_eq!(
            at(&import, "/spec/initialPosition"),
            Some(&json!("TRIM_HORIZON"))
        );
        assert_eq!(at(&import, "/spec/initialTimestamp"), None);
        assert_eq!(
            at(&import, "/spec/processor"),
            Some(
                &json!({"protocol": "kcl-multilang", "command": ["python3", "sample_kclpy_app.py"]})
            )
        );
        assert_eq!(
            at(&import, "/spec/template/spec/containers"),
            Some(&json!([{"name": "app", "image": "REPLACE-WITH-YOUR-APP-IMAGE"}]))
        );
        // No retrievalMode: the mode is left to the schema's default.
        assert_eq!(
            at(&import, "/spec/consumer"),
            Some(&json!({"failoverTimeMs": 10000, "maxRecords": 5000}))
        );
        assert_eq!(at(&import, "/spec/delivery"), None);
        Ok(())
    }

    #[test]
    fn no_key_of_the_sample_is_lost() -> TestResult {
        let import = kcl_properties(SAMPLE)?;
        let input: BTreeSet<String> = parse_properties(SAMPLE)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let mapped: BTreeSet<String> = [
            "executableName",
            "streamName",
            "applicationName",
            "initialPositionInStream",
            "regionName",
            "failoverTimeMillis",
            "maxRecords",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let unmapped: BTreeSet<String> = import.unmapped.iter().map(|u| u.key.clone()).collect();
        // Every key not in the manifest is reported, and nothing else but the image to set.
        let mut expected: BTreeSet<String> = input.difference(&mapped).cloned().collect();
        expected.insert("image".into());
        assert_eq!(unmapped, expected);
        assert_eq!(
            import.unmapped.len(),
            expected.len(),
            "a key reported twice"
        );
        let covered: BTreeSet<String> = mapped
            .union(&unmapped)
            .filter(|k| *k != "image")
            .cloned()
            .collect();
        assert_eq!(input, covered);
        for (key, words) in [
            ("AwsCredentialsProvider", "spec.aws.roleArn"),
            ("processingLanguage", "user agent"),
            ("workerId", "pod names"),
            ("maxLeasesForWorker", "balances leases itself"),
            ("timeoutInSeconds", "only its own shard"),
            ("ordersTeamSetting", "not a setting"),
            ("image", "python3 sample_kclpy_app.py"),
        ] {
            let reason = reason_of(&import, key).ok_or(key)?;
            assert!(reason.contains(words), "{key}: {reason}");
        }
        assert!(
            import.unmapped.iter().all(|u| !u.reason.is_empty()
                && parse_properties(SAMPLE)
                    .iter()
                    .all(|(k, v)| k != &u.key || v == &u.value)),
            "every reported value is the file's"
        );
        Ok(())
    }

    #[test]
    fn an_arn_a_table_a_start_time_and_fan_out() -> TestResult {
        let import = kcl_properties(
            "executableName = node consumer.js --verbose
streamArn = arn:aws:kinesis:eu-west-1:123456789012:stream/orders
streamName = orders-old
regionName = us-east-1
applicationName = orders-consumer
tableName = OrdersLeases
initialPositionInStream = LATEST
initialPositionInStreamExtended = 1636609142
retrievalMode = fanout
kinesisEndpoint = https://kinesis.eu-west-1.amazonaws.com
dynamoDBEndpoint = dynamodb.local:8000
failoverTimeMillis = 500
",
        )?;
        assert_eq!(
            at(&import, "/spec/stream"),
            Some(&json!({
                "arn": "arn:aws:kinesis:eu-west-1:123456789012:stream/orders",
                "endpoint": "https://kinesis.eu-west-1.amazonaws.com",
            }))
        );
        assert_eq!(
            at(&import, "/spec/applicationName"),
            Some(&json!("OrdersLeases"))
        );
        assert_eq!(
            at(&import, "/metadata/name"),
            Some(&json!("orders-consumer"))
        );
        assert_eq!(
            at(&import, "/spec/initialPosition"),
            Some(&json!("AT_TIMESTAMP"))
        );
        assert_eq!(
            at(&import, "/spec/initialTimestamp"),
            Some(&json!("2021-11-11T05:39:02Z"))
        );
        assert_eq!(
            at(&import, "/spec/consumer"),
            Some(&json!({"mode": "EnhancedFanOut"}))
        );
        assert_eq!(
            at(&import, "/spec/processor/command"),
            Some(&json!(["node", "consumer.js", "--verbose"]))
        );
        let keys: BTreeSet<&str> = import.unmapped.iter().map(|u| u.key.as_str()).collect();
        assert_eq!(
            keys,
            BTreeSet::from([
                "streamName",
                "regionName",
                "applicationName",
                "initialPositionInStream",
                "dynamoDBEndpoint",
                "failoverTimeMillis",
                "image",
            ])
        );
        let range = reason_of(&import, "failoverTimeMillis").ok_or("failoverTimeMillis")?;
        assert!(range.contains("1000 to 600000"), "{range}");
        let region = reason_of(&import, "regionName").ok_or("regionName")?;
        assert!(region.contains("eu-west-1"), "{region}");
        Ok(())
    }

    #[test]
    fn a_start_time_kcl_cannot_read_is_reported() -> TestResult {
        let import = kcl_properties(
            "applicationName = app-1\nstreamName = s\nexecutableName = run\ninitialPositionInStream = LATEST\ninitialPositionInStreamExtended = 2021-11-11\n",
        )?;
        assert_eq!(at(&import, "/spec/initialPosition"), Some(&json!("LATEST")));
        assert_eq!(at(&import, "/spec/initialTimestamp"), None);
        let reason = reason_of(&import, EXTENDED).ok_or(EXTENDED)?;
        assert!(reason.contains("seconds since 1970"), "{reason}");
        Ok(())
    }

    #[test]
    fn retrieval_mode_default_follows_kcl() -> TestResult {
        let base = "applicationName = app-1\nstreamName = s\nexecutableName = run\nretrievalMode = DEFAULT\n";
        let fan_out = kcl_properties(base)?;
        assert_eq!(
            at(&fan_out, "/spec/consumer/mode"),
            Some(&json!("EnhancedFanOut"))
        );
        let polling = kcl_properties(&format!("{base}maxRecords = 100\n"))?;
        assert_eq!(at(&polling, "/spec/consumer/mode"), Some(&json!("Polling")));
        Ok(())
    }

    #[test]
    fn commands_get_their_interpreter() {
        assert_eq!(command("app.py"), ["python3", "app.py"]);
        assert_eq!(command("app.js"), ["node", "app.js"]);
        assert_eq!(command("./run.sh"), ["./run.sh"]);
        assert_eq!(
            command("  python  app.py --flag "),
            ["python", "app.py", "--flag"]
        );
    }

    fn error_of(text: &str) -> Result<ImportError, String> {
        kcl_properties(text)
            .err()
            .ok_or_else(|| format!("imported: {text}"))
    }

    #[test]
    fn a_missing_stream_is_an_error_naming_both_keys() -> TestResult {
        let err = error_of("applicationName = app-1\nexecutableName = app.py\nstreamName =\n")?;
        assert!(matches!(err, ImportError::NoStream), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("streamName") && message.contains("streamArn"),
            "{message}"
        );
        Ok(())
    }

    #[test]
    fn a_missing_application_name_is_an_error() -> TestResult {
        let err = error_of("streamName = s\nexecutableName = app.py\n")?;
        assert!(
            matches!(
                err,
                ImportError::Missing {
                    key: "applicationName",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("applicationName is missing"));
        Ok(())
    }

    #[test]
    fn a_word_for_a_number_is_an_error_naming_the_key() -> TestResult {
        let err = error_of(
            "applicationName = app-1\nstreamName = s\nexecutableName = app.py\nfailoverTimeMillis = ten seconds\n",
        )?;
        let message = err.to_string();
        assert!(
            matches!(&err, ImportError::NotANumber { key, .. } if key == "failoverTimeMillis"),
            "{err:?}"
        );
        assert!(
            message.contains("failoverTimeMillis") && message.contains("ten seconds"),
            "{message}"
        );
        Ok(())
    }

    #[test]
    fn values_kcl_would_refuse_are_errors() -> TestResult {
        let base = "streamName = s\nexecutableName = app.py\n";
        for (extra, key) in [
            ("applicationName = ab\n", "applicationName"),
            (
                "applicationName = app-1\nretrievalMode = SOMETIMES\n",
                "retrievalMode",
            ),
            (
                "applicationName = app-1\ninitialPositionInStream = AT_TIMESTAMP\n",
                "initialPositionInStream",
            ),
            (
                "applicationName = app-1\ninitialPositionInStream = OLDEST\n",
                "initialPositionInStream",
            ),
            (
                "applicationName = app-1\nstreamArn = arn:aws:sqs:us-east-1:123456789012:q\n",
                "streamArn",
            ),
        ] {
            let err = error_of(&format!("{base}{extra}"))?;
            assert!(
                matches!(&err, ImportError::BadValue { key: k, .. } if k == key),
                "{extra}: {err:?}"
            );
        }
        let err = error_of("applicationName = app-1\nstreamName = s\n")?;
        assert!(
            matches!(
                err,
                ImportError::Missing {
                    key: "executableName",
                    ..
                }
            ),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn properties_syntax() {
        let text = "# a comment \\
z = after a comment ending in a backslash
! another comment
   
a = 1
b:2
c 3
d=
e = first \\
    second \\
  third
f = back\\\\slash
h\\ key = v
u = \\u0041\\u00e9
url = http://x:1/a=b
  indented   =   spaced out   
crlf = yes\r
last = continued \\";
        let entries = parse_properties(text);
        let expected: Vec<(String, String)> = [
            ("z", "after a comment ending in a backslash"),
            ("a", "1"),
            ("b", "2"),
            ("c", "3"),
            ("d", ""),
            ("e", "first second third"),
            ("f", "back\\slash"),
            ("h key", "v"),
            ("u", "Aé"),
            ("url", "http://x:1/a=b"),
            ("indented", "spaced out"),
            ("crlf", "yes"),
            ("last", "continued"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(entries, expected);
    }

    #[test]
    fn a_key_set_twice_keeps_its_last_value_and_reports_the_first() -> TestResult {
        let import = kcl_properties(
            "applicationName = app-1\nstreamName = first\nexecutableName = app.py\nstreamName = second\nworkerId =\n",
        )?;
        assert_eq!(at(&import, "/spec/stream/name"), Some(&json!("second")));
        let first = import
            .unmapped
            .iter()
            .find(|u| u.key == "streamName")
            .ok_or("streamName")?;
        assert_eq!(first.value, "first");
        let empty = reason_of(&import, "workerId").ok_or("workerId")?;
        assert!(empty.contains("empty"), "{empty}");
        Ok(())
    }
}
