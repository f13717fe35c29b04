//! The AWS calls behind [`crate::ownership`]: reading and writing the claim item, a table's
//! tags, and the fan-out consumer the operator registers. Thin: every decision is in
//! `ownership`.
//!
//! Cost: a reconcile reads the claim item once (GetItem, eventually consistent: 0.5 read
//! units) and writes it only when it is missing; the consumer is described once per
//! reconcile in fan-out mode.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};

use crate::ownership::{CLAIM_KEY, Claim, Owner, attr as claim_attr, claim_item, parse_claim};

/// The outcome of claiming a lease table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This object holds the claim.
    Ours(Claim),
    /// Another object holds it.
    Theirs(Claim),
}

fn key() -> HashMap<String, AttributeValue> {
    HashMap::from([("leaseKey".to_string(), AttributeValue::S(CLAIM_KEY.into()))])
}

/// Reads the claim item of `table` (strongly consistent when `consistent`).
///
/// # Errors
/// DynamoDB's error, as text.
pub async fn read_claim(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    consistent: bool,
) -> Result<Option<Claim>, String> {
    let out = dynamodb
        .get_item()
        .table_name(table)
        .set_key(Some(key()))
        .consistent_read(consistent)
        .send()
        .await
        .map_err(|e| crate::message::aws_error(&format!("GetItem {CLAIM_KEY}"), &e))?;
    Ok(out.item.as_ref().and_then(parse_claim))
}

/// Claims `table` for `owner` unless another object holds it: one conditional write, so of
/// two objects racing for one table exactly one wins.
///
/// # Errors
/// DynamoDB's error, as text.
pub async fn claim(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    owner: &Owner,
) -> Result<ClaimOutcome, String> {
    if let Some(c) = read_claim(dynamodb, table, false).await? {
        if c.owner.uid == owner.uid {
            return Ok(ClaimOutcome::Ours(c));
        }
        // An eventually consistent read may be stale: confirm before refusing.
        match read_claim(dynamodb, table, true).await? {
            Some(c) if c.owner.uid == owner.uid => return Ok(ClaimOutcome::Ours(c)),
            Some(c) => return Ok(ClaimOutcome::Theirs(c)),
            None => {}
        }
    }
    let res = dynamodb
        .put_item()
        .table_name(table)
        .set_item(Some(claim_item(owner)))
        .condition_expression("attribute_not_exists(leaseKey) OR #uid = :uid")
        .expression_attribute_names("#uid", claim_attr::UID)
        .expression_attribute_values(":uid", AttributeValue::S(owner.uid.clone()))
        .send()
        .await;
    match res {
        Ok(_) => Ok(ClaimOutcome::Ours(Claim {
            owner: owner.clone(),
            consumer: None,
        })),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
        {
            match read_claim(dynamodb, table, true).await? {
                Some(c) if c.owner.uid != owner.uid => Ok(ClaimOutcome::Theirs(c)),
                Some(c) => Ok(ClaimOutcome::Ours(c)),
                None => Err(format!(
                    "item `{CLAIM_KEY}` in `{table}` exists but names no owner: delete that item by hand if no other application uses the table"
                )),
            }
        }
        Err(e) => Err(crate::message::aws_error(
            &format!("PutItem {CLAIM_KEY}"),
            &e,
        )),
    }
}

/// Records in `owner`'s claim that the operator registers fan-out consumer `name` for it.
///
/// # Errors
/// DynamoDB's error (also when the claim is no longer `owner`'s), as text.
pub async fn record_consumer(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    owner: &Owner,
    name: &str,
) -> Result<(), String> {
    dynamodb
        .update_item()
        .table_name(table)
        .set_key(Some(key()))
        .update_expression("SET #c = :c")
        .condition_expression("#uid = :uid")
        .expression_attribute_names("#c", claim_attr::CONSUMER)
        .expression_attribute_names("#uid", claim_attr::UID)
        .expression_attribute_values(":c", AttributeValue::S(name.into()))
        .expression_attribute_values(":uid", AttributeValue::S(owner.uid.clone()))
        .return_values(ReturnValue::None)
        .send()
        .await
        .map_err(|e| crate::message::aws_error(&format!("UpdateItem {CLAIM_KEY}"), &e))?;
    Ok(())
}

/// Removes `owner`'s claim (the table is kept): a new object may adopt the table. Does
/// nothing if another object holds it.
///
/// # Errors
/// DynamoDB's error, as text.
pub async fn release(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    owner: &Owner,
) -> Result<(), String> {
    let res = dynamodb
        .delete_item()
        .table_name(table)
        .set_key(Some(key()))
        .condition_expression("#uid = :uid")
        .expression_attribute_names("#uid", claim_attr::UID)
        .expression_attribute_values(":uid", AttributeValue::S(owner.uid.clone()))
        .send()
        .await;
    match res {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error().is_some_and(|s| {
                s.is_conditional_check_failed_exception() || s.is_resource_not_found_exception()
            }) =>
        {
            Ok(())
        }
        Err(e) => Err(crate::message::aws_error(
            &format!("DeleteItem {CLAIM_KEY}"),
            &e,
        )),
    }
}

/// What cleanup needs to know of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// Its tags.
    pub tags: HashMap<String, String>,
    /// It has a lease table's key (hash key `leaseKey`, a string), so it can hold a claim.
    pub lease_table: bool,
}

/// The tags and key of `table`; `None` if it does not exist.
///
/// # Errors
/// DynamoDB's error, as text.
pub async fn table_info(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<Option<TableInfo>, String> {
    let described = match dynamodb.describe_table().table_name(table).send().await {
        Ok(d) => d,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(crate::message::aws_error("DescribeTable", &e)),
    };
    let Some(description) = described.table() else {
        return Err(format!("DescribeTable `{table}` gave no table"));
    };
    let keys = description.key_schema();
    let lease_table = keys.len() == 1 && keys[0].attribute_name() == "leaseKey";
    let Some(arn) = description.table_arn() else {
        return Err(format!("DescribeTable `{table}` gave no TableArn"));
    };
    let mut tags = HashMap::new();
    let mut next: Option<String> = None;
    loop {
        let out = dynamodb
            .list_tags_of_resource()
            .resource_arn(arn)
            .set_next_token(next.take())
            .send()
            .await
            .map_err(|e| crate::message::aws_error("ListTagsOfResource", &e))?;
        for t in out.tags() {
            tags.insert(t.key().to_string(), t.value().to_string());
        }
        match out.next_token {
            Some(t) if !t.is_empty() => next = Some(t),
            _ => break,
        }
    }
    Ok(Some(TableInfo { tags, lease_table }))
}

/// The fan-out consumer in use for an application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// Its ARN (passed to the workers).
    pub arn: String,
    /// This call registered it (the operator records that in the status, which tenants
    /// cannot write, and deregisters only what the status records). An existing consumer is
    /// not proven the operator's, whatever the claim item says: the tenant's worker role can
    /// write the claim item.
    pub registered_by_operator: bool,
}

/// Finds fan-out consumer `name` of `stream_arn`, or registers it (tagged for `owner`,
/// recorded in the claim first so a crash in between leaks nothing unowned).
///
/// # Errors
/// Kinesis' or DynamoDB's error, as text.
pub async fn ensure_consumer(
    kinesis: &aws_sdk_kinesis::Client,
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    claim: &Claim,
    stream_arn: &str,
    name: &str,
) -> Result<Consumer, String> {
    let ours = claim.consumer.as_deref() == Some(name);
    match describe_consumer(kinesis, stream_arn, name).await? {
        Some(arn) => {
            return Ok(Consumer {
                arn,
                registered_by_operator: false,
            });
        }
        None if !ours => record_consumer(dynamodb, table, &claim.owner, name).await?,
        None => {}
    }
    let tags: HashMap<String, String> = crate::ownership::resource_tags(&claim.owner)
        .into_iter()
        .collect();
    let res = kinesis
        .register_stream_consumer()
        .stream_arn(stream_arn)
        .consumer_name(name)
        .set_tags(Some(tags))
        .send()
        .await;
    match res {
        Ok(out) => Ok(Consumer {
            arn: out
                .consumer
                .map(|c| c.consumer_arn)
                .ok_or("RegisterStreamConsumer answered no consumer")?,
            registered_by_operator: true,
        }),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) =>
        {
            // Our own registration, retried by the SDK after its answer was lost (it was
            // not there when described just before, under a name only this object's claim
            // uses).
            let arn = describe_consumer(kinesis, stream_arn, name)
                .await?
                .ok_or_else(|| format!("consumer `{name}` is in use but cannot be described"))?;
            Ok(Consumer {
                arn,
                registered_by_operator: true,
            })
        }
        Err(e) => Err(crate::message::aws_error(
            &format!("RegisterStreamConsumer `{name}`"),
            &e,
        )),
    }
}

async fn describe_consumer(
    kinesis: &aws_sdk_kinesis::Client,
    stream_arn: &str,
    name: &str,
) -> Result<Option<String>, String> {
    match kinesis
        .describe_stream_consumer()
        .stream_arn(stream_arn)
        .consumer_name(name)
        .send()
        .await
    {
        Ok(out) => Ok(out.consumer_description.map(|c| c.consumer_arn)),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(e) => Err(crate::message::aws_error(
            &format!("DescribeStreamConsumer `{name}`"),
            &e,
        )),
    }
}

/// Deregisters the fan-out consumer `arn` (one registration: a consumer made again under
/// the same name has another ARN). Returns whether it still existed.
///
/// # Errors
/// Kinesis' error, as text.
pub async fn deregister_consumer_arn(
    kinesis: &aws_sdk_kinesis::Client,
    arn: &str,
) -> Result<bool, String> {
    match kinesis
        .deregister_stream_consumer()
        .consumer_arn(arn)
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(false)
        }
        Err(e) => Err(crate::message::aws_error(
            &format!("DeregisterStreamConsumer `{arn}`"),
            &e,
        )),
    }
}

/// The ARN of stream `name`; `None` if the stream does not exist (any more).
///
/// # Errors
/// Kinesis' error, as text.
pub async fn stream_arn(
    kinesis: &aws_sdk_kinesis::Client,
    name: &str,
) -> Result<Option<String>, String> {
    match kinesis
        .describe_stream_summary()
        .stream_name(name)
        .send()
        .await
    {
        Ok(out) => out
            .stream_description_summary
            .map(|s| Some(s.stream_arn))
            .ok_or_else(|| format!("DescribeStreamSummary `{name}` gave no description")),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(e) => Err(crate::message::aws_error(
            &format!("DescribeStreamSummary `{name}`"),
            &e,
        )),
    }
}
