//! DynamoDB smoke test: the conditional writes leases are built on, against the local
//! DynamoDB server with `aws-sdk-dynamodb`.

use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus,
};
use kinesis_operator_tests::{TestEnv, unique_name, wait_for};

#[tokio::test]
async fn conditional_writes_fail_when_the_condition_does_not_hold()
-> Result<(), Box<dyn std::error::Error>> {
    let env = TestEnv::require();
    let ddb = env.dynamodb().await;
    let table = unique_name("smoke");
    ddb.create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("leaseKey")
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("leaseKey")
                .key_type(KeyType::Hash)
                .build()?,
        )
        .send()
        .await?;
    wait_for(
        "table ACTIVE",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let out = ddb.describe_table().table_name(&table).send().await.ok()?;
            (out.table()?.table_status() == Some(&TableStatus::Active)).then_some(())
        },
    )
    .await?;

    let key = AttributeValue::S("shardId-000000000000".into());
    let create = || {
        ddb.put_item()
            .table_name(&table)
            .item("leaseKey", key.clone())
            .item("leaseCounter", AttributeValue::N("1".into()))
            .condition_expression("attribute_not_exists(leaseKey)")
    };
    create().send().await?;
    let again = create().send().await;
    let err = again.err().ok_or("a second create must fail")?;
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_conditional_check_failed_exception()),
        "expected ConditionalCheckFailed, got {err:?}"
    );

    let bump = |expected: &str, new: &str| {
        ddb.update_item()
            .table_name(&table)
            .key("leaseKey", key.clone())
            .update_expression("SET leaseCounter = :new")
            .condition_expression("leaseCounter = :expected")
            .expression_attribute_values(":expected", AttributeValue::N(expected.into()))
            .expression_attribute_values(":new", AttributeValue::N(new.into()))
    };
    bump("1", "2").send().await?;
    let stale = bump("1", "2").send().await;
    let err = stale
        .err()
        .ok_or("a write with a stale counter must fail")?;
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_conditional_check_failed_exception()),
        "expected ConditionalCheckFailed, got {err:?}"
    );

    let item = ddb
        .get_item()
        .table_name(&table)
        .key("leaseKey", key.clone())
        .consistent_read(true)
        .send()
        .await?;
    let counter = item
        .item()
        .and_then(|i| i.get("leaseCounter"))
        .and_then(|v| v.as_n().ok());
    assert_eq!(
        counter.map(String::as_str),
        Some("2"),
        "only the write with the right counter landed"
    );
    ddb.delete_table().table_name(&table).send().await?;
    Ok(())
}
