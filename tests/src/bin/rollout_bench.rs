//! A rolling restart of a worker fleet on the local cluster (issue 30, item 5): how long it
//! takes at a given `spec.scaling.maxSurgePercent`, and whether every hand-over was graceful.
//!
//! The pageview-counter application on a stream of `--shards` shards with `--workers` pods
//! (`shardsPerWorker` = shards / workers); pageviews are put all through the rollout; after
//! it, the counts table must hold exactly what was put (a record lost counts short, a record
//! delivered twice counts over: the counter adds what each call delivers). Printed: the
//! rollout's time from the template change until every pod is of the new template and ready
//! (and no old pod is left), and the counts.
//!
//! Run: `cargo xtask env up && cargo xtask images && cargo run -p kinesis-operator-tests --bin
//! rollout_bench -- --workers 12 --shards 24 --surge 25` (and `--surge 1`: one pod at a time).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kinesis_operator_tests::cluster::{
    add_counts, application, delete_all, delete_namespace, produce, until_counts,
};
use kinesis_operator_tests::fixtures::{OperatorTest, until_replicas};
use kinesis_operator_tests::{unique_name, wait_for};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

struct Opts {
    workers: i32,
    shards: i32,
    surge: i32,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        workers: 12,
        shards: 24,
        surge: 25,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let v = pair.get(1).ok_or(format!("{} needs a value", pair[0]))?;
        match pair[0].as_str() {
            "--workers" => o.workers = v.parse()?,
            "--shards" => o.shards = v.parse()?,
            "--surge" => o.surge = v.parse()?,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    if o.shards % o.workers != 0 {
        return Err("--shards must be a multiple of --workers".into());
    }
    Ok(o)
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = opts()?;
    let t = OperatorTest::with_stream("rollout", "rollout", o.shards, 30).await?;
    let table = unique_name("counts");
    let mut app = application("counter", &t.env, &t.stream, &table)?;
    app.spec.scaling.shards_per_worker = o.shards / o.workers;
    app.spec.scaling.max_surge_percent = Some(o.surge);
    t.apps.create(&PostParams::default(), &app).await?;
    let started = Instant::now();
    until_replicas(&t.deployments, "counter", o.workers, true)
        .await
        .map_err(|e| format!("{e}\n{}", t.op.log_tail()))?;
    println!(
        "{} workers ready on {} shards in {:.0} s",
        o.workers,
        o.shards,
        started.elapsed().as_secs_f64()
    );
    let mut expected = BTreeMap::new();
    add_counts(&mut expected, produce(&t.env, &t.stream, 400)?);
    until_counts(&t.env, &table, &expected, &t.op.log_tail()).await?;

    // Pageviews all through the rollout.
    let done = Arc::new(AtomicBool::new(false));
    let producer = {
        let (env, stream, done) = (t.env.clone(), t.stream.clone(), done.clone());
        tokio::task::spawn_blocking(move || -> Result<BTreeMap<String, u64>, String> {
            let mut put = BTreeMap::new();
            while !done.load(Ordering::SeqCst) {
                add_counts(
                    &mut put,
                    produce(&env, &stream, 80).map_err(|e| e.to_string())?,
                );
                std::thread::sleep(Duration::from_millis(500));
            }
            Ok(put)
        })
    };
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        "kinesis-operator.io/restarted": unique_name("at")}}}}});
    let generation = t
        .deployments
        .get("counter")
        .await?
        .metadata
        .generation
        .unwrap_or(0);
    let rolled = Instant::now();
    t.apps
        .patch("counter", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(t.client.clone(), &t.ns);
    let most_pods = AtomicUsize::new(0);
    wait_for(
        "the rollout",
        Duration::from_secs(1800),
        Duration::from_millis(500),
        || async {
            let d = t.deployments.get_opt("counter").await.ok()??;
            let n = pods.list(&ListParams::default()).await.ok()?.items.len();
            most_pods.fetch_max(n, Ordering::SeqCst);
            let s = d.status?;
            let done = d.metadata.generation > Some(generation)
                && s.observed_generation >= d.metadata.generation
                && s.updated_replicas == Some(o.workers)
                && s.ready_replicas == Some(o.workers)
                && s.replicas == Some(o.workers);
            done.then_some(())
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", t.op.log_tail()))?;
    let took = rolled.elapsed().as_secs_f64();
    let most_pods = most_pods.load(Ordering::SeqCst);
    done.store(true, Ordering::SeqCst);
    add_counts(&mut expected, producer.await??);
    let put: u64 = expected.values().sum();
    println!(
        "rollout of {} pods at maxSurgePercent {}: {took:.0} s ({:.1} s a pod), at most {most_pods} pods at once",
        o.workers,
        o.surge,
        took / f64::from(o.workers)
    );
    until_counts(&t.env, &table, &expected, &t.op.log_tail()).await?;
    println!("{put} pageviews put, counted exactly: 0 lost, 0 delivered twice");
    delete_all(&t.apps).await?;
    delete_namespace(&t.client, &t.ns).await?;
    t.env.remove(Some(&t.stream), &[&table]).await;
    Ok(())
}
