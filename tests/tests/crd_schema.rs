//! The generated CRD on the real (1.20) API server: it is accepted and established, a valid
//! KinesisApplication is stored, and what the schema can check (enums, ranges, patterns,
//! required fields) is rejected by the API server with the field named. Cross-field rules
//! are the operator's (`operator/src/validate.rs`).

use std::time::Duration;

use kinesis_operator::crd::KinesisApplication;
use kinesis_operator_tests::cluster::{delete_namespace, install_crd, namespace};
use kinesis_operator_tests::fleet::POLL;
use kinesis_operator_tests::{TestEnv, wait_for};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

fn resource(name: &str, spec: Value) -> Value {
    let mut base = json!({
        "stream": {"name": "Pageviews", "region": "us-east-1"},
        "template": {"spec": {"containers": [{"name": "app", "image": "pageview-counter:dev"}]}}
    });
    if let (Some(b), Some(p)) = (base.as_object_mut(), spec.as_object()) {
        for (k, v) in p {
            if v.is_null() {
                b.remove(k);
            } else {
                b.insert(k.clone(), v.clone());
            }
        }
    }
    json!({
        "apiVersion": "kinesis-operator.io/v1alpha1",
        "kind": "KinesisApplication",
        "metadata": {"name": name},
        "spec": base
    })
}

#[tokio::test]
async fn the_crd_is_established_and_its_schema_rejects_bad_fields() -> Result<()> {
    let env = TestEnv::require();
    let client = env.kube().await?;
    install_crd(&client).await?;
    let ns = namespace(&client, "crd").await?;
    let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::discovery::ApiResource::erase::<KinesisApplication>(&()),
    );

    // A valid resource is stored, with the defaults filled in when read back.
    let ok: kube::api::DynamicObject = serde_json::from_value(resource("counter", json!({})))?;
    raw.create(&PostParams::default(), &ok).await?;
    let stored = apps.get("counter").await?;
    assert_eq!(stored.spec.scaling.shards_per_worker, 1);

    let bad: Vec<(Value, &str)> = vec![
        (
            json!({"initialPosition": "SOMETIME"}),
            "spec.initialPosition",
        ),
        (
            json!({"scaling": {"shardsPerWorker": 0}}),
            "spec.scaling.shardsPerWorker",
        ),
        (
            json!({"stream": {"arn": "arn:aws:s3:::bucket"}}),
            "spec.stream.arn",
        ),
        (json!({"template": null}), "spec.template"),
        (json!({"stream": null}), "spec.stream"),
        (
            json!({"consumer": {"maxRecords": 20000}}),
            "spec.consumer.maxRecords",
        ),
        (json!({"processor": {"port": 70000}}), "spec.processor.port"),
        (json!({"consumer": {"mode": "Push"}}), "spec.consumer.mode"),
        (json!({"applicationName": "a b"}), "spec.applicationName"),
        (
            json!({"leaseTable": {"deletionPolicy": "Sometimes"}}),
            "spec.leaseTable.deletionPolicy",
        ),
    ];
    for (i, (spec, field)) in bad.into_iter().enumerate() {
        let obj: kube::api::DynamicObject =
            serde_json::from_value(resource(&format!("bad-{i}"), spec.clone()))?;
        match raw.create(&PostParams::default(), &obj).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{spec}: {e:?}");
                assert!(
                    e.message.contains(field),
                    "{spec}: the message names {field}: {}",
                    e.message
                );
            }
            other => return Err(format!("{spec} was not rejected: {other:?}").into()),
        }
    }
    delete_namespace(&client, &ns).await?;
    Ok(())
}

/// The README's install command for the CRD: `kubectl apply --server-side`. (A client-side
/// `kubectl apply` cannot work: the CRD is larger than the 256 KiB annotation it would
/// write.) `--force-conflicts` because the tests' own field manager owns it here.
#[tokio::test]
async fn the_readme_s_crd_install_command_works() -> Result<()> {
    let env = TestEnv::require();
    let file =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/kinesisapplications.yaml");
    let size = std::fs::metadata(&file)?.len();
    assert!(
        size > 256 * 1024,
        "{size} bytes: the reason for --server-side"
    );
    let kubectl = |args: &[&str]| kinesis_operator_tests::cluster::kubectl(&env, args);
    let file = file.to_string_lossy();
    kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &file])?;
    kubectl(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout",
        "60s",
        "crd/kinesisapplications.kinesis-operator.io",
    ])?;
    // Established is not yet in discovery and the published schema (both filled in after):
    // explain is asked until it shows the description, the last answer kept for the failure.
    let last = std::sync::Mutex::new(String::new());
    let keep = |text: String| {
        if let Ok(mut l) = last.lock() {
            *l = text;
        }
    };
    wait_for(
        "kubectl explain shows the resource's description",
        Duration::from_secs(60),
        POLL,
        || async {
            match kubectl(&["explain", "kinesisapplication"]) {
                Ok(text) if text.contains("A Kinesis consumer application") => Some(()),
                Ok(text) => {
                    keep(text);
                    None
                }
                Err(e) => {
                    keep(e.to_string());
                    None
                }
            }
        },
    )
    .await
    .map_err(|e| {
        format!(
            "{e}; the last answer: {}",
            last.lock().map(|l| l.clone()).unwrap_or_default()
        )
    })?;
    Ok(())
}
