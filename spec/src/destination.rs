//! The on-failure destination's ARN (as Lambda's `DestinationConfig`): an SQS queue or a
//! Kinesis stream. The operator refuses a bad one in the spec; the worker sends to it.

/// A destination ARN that is not an SQS queue or Kinesis stream ARN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "on-failure destination `{arn}`: {why}; give an SQS queue ARN (arn:aws:sqs:REGION:ACCOUNT:NAME) or a Kinesis stream ARN (arn:aws:kinesis:REGION:ACCOUNT:stream/NAME)"
)]
pub struct BadArn {
    /// What was given.
    pub arn: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// A parsed destination ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An SQS queue.
    Sqs {
        /// Its region.
        region: String,
        /// The account that owns it.
        account: String,
        /// The queue's name.
        name: String,
    },
    /// A Kinesis stream.
    Kinesis {
        /// Its region.
        region: String,
        /// The stream's name.
        name: String,
    },
}

impl Target {
    /// Parses `arn`.
    ///
    /// # Errors
    /// [`BadArn`] for anything but an SQS queue or Kinesis stream ARN.
    pub fn parse(arn: &str) -> Result<Self, BadArn> {
        let bad = |why| BadArn {
            arn: arn.to_string(),
            why,
        };
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let [prefix, _partition, service, region, account, resource] = parts[..] else {
            return Err(bad("not an ARN (six `:`-separated parts)"));
        };
        if prefix != "arn" {
            return Err(bad("not an ARN (it must start with `arn:`)"));
        }
        if region.is_empty() || account.is_empty() {
            return Err(bad("the region and the account must be given"));
        }
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.len() <= 128
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        match service {
            "sqs" if name_ok(resource) => Ok(Self::Sqs {
                region: region.to_string(),
                account: account.to_string(),
                name: resource.to_string(),
            }),
            "sqs" => Err(bad(
                "the queue name is empty or has characters SQS does not allow",
            )),
            "kinesis" => match resource.strip_prefix("stream/") {
                Some(name) if name_ok(name) => Ok(Self::Kinesis {
                    region: region.to_string(),
                    name: name.to_string(),
                }),
                _ => Err(bad("a Kinesis destination must be `stream/NAME`")),
            },
            _ => Err(bad("only SQS queues and Kinesis streams are destinations")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_are_parsed_and_bad_ones_name_the_fix() {
        assert_eq!(
            Target::parse("arn:aws:sqs:eu-west-1:123456789012:dlq").ok(),
            Some(Target::Sqs {
                region: "eu-west-1".into(),
                account: "123456789012".into(),
                name: "dlq".into()
            })
        );
        assert_eq!(
            Target::parse("arn:aws:kinesis:us-east-1:1:stream/failed").ok(),
            Some(Target::Kinesis {
                region: "us-east-1".into(),
                name: "failed".into()
            })
        );
        for bad in [
            "",
            "dlq",
            "https://sqs.us-east-1.amazonaws.com/1/dlq",
            "arn:aws:s3:::bucket",
            "arn:aws:sqs:us-east-1:1:",
            "arn:aws:sqs:us-east-1:1:a/b",
            "arn:aws:kinesis:us-east-1:1:failed",
            "arn:aws:sqs::1:dlq",
        ] {
            let e = Target::parse(bad).err().map(|e| e.to_string());
            assert!(
                e.as_deref()
                    .is_some_and(|e| e.contains("arn:aws:sqs:REGION")),
                "{bad}: {e:?}"
            );
        }
    }
}
