//! A moto of the test's own with IAM enforcement on: principals with policies, roles to
//! assume, and Kinesis, DynamoDB and STS that refuse what a caller's policies do not allow
//! (see `../shared/reference/emulators.md` for what moto checks and what it does not).
//!
//! It listens on 127.0.0.1 only (the operator runs as a process on the host), on a port of
//! its own, so enforcement never reaches the shared servers other tests use.

use std::process::Command;
use std::time::Duration;

use serde::Deserialize;

use crate::TestEnv;
use crate::process::Proc;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// An access key of a moto IAM user.
#[derive(Clone, Debug, Deserialize)]
pub struct Key {
    /// Access key id.
    pub id: String,
    /// Secret access key.
    pub secret: String,
    /// The user's ARN.
    pub arn: String,
}

/// What [`IamMoto::start`] set up.
#[derive(Clone, Debug, Deserialize)]
pub struct Principals {
    /// A user allowed only `sts:AssumeRole` and `sts:TagSession` (the operator).
    pub operator: Key,
    /// A user allowed everything (the test's checks).
    pub admin: Key,
    /// A role the operator user may assume, allowed the Kinesis reads and DynamoDB, not
    /// `kinesis:RegisterStreamConsumer`.
    pub role: String,
    /// A role allowed everything that trusts only the admin user (not the operator).
    pub untrusting: String,
}

/// The moto process with enforcement on, and its principals.
pub struct IamMoto {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its principals.
    pub principals: Principals,
    _proc: Proc,
}

/// Creates the principals and `stream` (argv: url, region, stream), then turns enforcement
/// on; prints the principals as JSON.
const SETUP: &str = r#"
import json, sys, time, urllib.request
import boto3
url, region, stream = sys.argv[1], sys.argv[2], sys.argv[3]
kw = dict(endpoint_url=url, region_name=region, aws_access_key_id="test", aws_secret_access_key="test")
iam = boto3.client("iam", **kw)
def allow(actions):
    return json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]})
def user(name, actions):
    arn = iam.create_user(UserName=name)["User"]["Arn"]
    iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=allow(actions))
    k = iam.create_access_key(UserName=name)["AccessKey"]
    return {"id": k["AccessKeyId"], "secret": k["SecretAccessKey"], "arn": arn}
op = user("operator", ["sts:AssumeRole", "sts:TagSession"])
admin = user("admin", ["*"])
trust = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
    "Principal": {"AWS": op["arn"]}, "Action": ["sts:AssumeRole", "sts:TagSession"]}]})
role = iam.create_role(RoleName="team-a-kinesis", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
iam.put_role_policy(RoleName="team-a-kinesis", PolicyName="p", PolicyDocument=allow([
    "kinesis:ListShards", "kinesis:DescribeStreamSummary", "kinesis:DescribeStream",
    "kinesis:DescribeStreamConsumer", "kinesis:ListStreamConsumers", "dynamodb:*"]))
untrusting = iam.create_role(RoleName="trusts-only-admin", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"AWS": admin["arn"]}, "Action": "sts:AssumeRole"}]}))["Role"]["Arn"]
iam.put_role_policy(RoleName="trusts-only-admin", PolicyName="p", PolicyDocument=allow(["*"]))
kinesis = boto3.client("kinesis", **kw)
kinesis.create_stream(StreamName=stream, ShardCount=1)
for _ in range(100):
    if kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
        break
    time.sleep(0.1)
req = urllib.request.Request(url + "/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"})
urllib.request.urlopen(req).read()
print(json.dumps({"operator": op, "admin": admin, "role": role, "untrusting": untrusting}))
"#;

impl IamMoto {
    /// Starts moto on a free port of 127.0.0.1, creates the principals and `stream`, and
    /// turns IAM enforcement on.
    ///
    /// # Errors
    /// No moto in the environment (run `cargo xtask env up` again), or it failed.
    pub async fn start(env: &TestEnv, stream: &str) -> Result<Self> {
        let program = env
            .moto_server
            .clone()
            .ok_or("env.json names no moto_server: run `cargo xtask env up` again")?;
        let port = crate::free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let logs = crate::env_file()
            .parent()
            .map(|d| d.join("logs"))
            .unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&logs)?;
        let mut cmd = Command::new(program);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let proc = Proc::spawn(cmd, logs.join(format!("moto-iam-{port}.log")))?;
        crate::wait_for(
            "moto (IAM)",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                let addr = addr.clone();
                async move {
                    crate::pipeline::http_get(&addr, "/moto-api/")
                        .await
                        .ok()
                        .filter(|(s, _)| *s == 200)
                }
            },
        )
        .await?;
        let url = format!("http://{addr}");
        let out = Command::new(&env.python)
            .args(["-c", SETUP, &url, &env.region, stream])
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "setting up moto's IAM failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let principals = serde_json::from_slice(&out.stdout)?;
        Ok(Self {
            url,
            principals,
            _proc: proc,
        })
    }

    async fn sdk(&self, env: &TestEnv, key: &Key) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(env.region.clone()))
            .endpoint_url(&self.url)
            .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
                &key.id,
                &key.secret,
                None,
                None,
                "test",
            ))
            .load()
            .await
    }

    /// A Kinesis client signing as `key`.
    pub async fn kinesis(&self, env: &TestEnv, key: &Key) -> aws_sdk_kinesis::Client {
        aws_sdk_kinesis::Client::new(&self.sdk(env, key).await)
    }

    /// A DynamoDB client signing as `key`.
    pub async fn dynamodb(&self, env: &TestEnv, key: &Key) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk(env, key).await)
    }
}
