//! KPL aggregated records: delivered as their sub-records, within the worker's memory.

use kinesis_operator_tests::pipeline::{Pipeline, until_received};

use super::Result;

#[tokio::test]
async fn kpl_aggregated_records_arrive_as_their_sub_records() -> Result<()> {
    use kinesis_worker::records::aggregation::aggregate;
    let p = Pipeline::new(1).await?;
    let app = p.app("a", &[]).await?;
    let _w = p.worker("w", &app.address, &[])?;
    let kinesis = p.env.kinesis().await;
    let mut expected = Vec::new();
    for batch in 0..3 {
        let subs: Vec<(String, Option<String>, Vec<u8>)> = (0..5)
            .map(|i| {
                (
                    format!("user-{i}"),
                    (i == 2).then(|| "12345".to_string()),
                    format!("agg-{batch}-{i}").into_bytes(),
                )
            })
            .collect();
        let blob = aggregate(&subs);
        let seq = p.put(&kinesis, "aggregate", &blob).await?;
        for (i, s) in subs.iter().enumerate() {
            expected.push((
                seq.clone(),
                i as u64,
                s.0.clone(),
                String::from_utf8_lossy(&s.2).to_string(),
            ));
        }
    }
    // A plain record after them passes through unchanged.
    let plain = p.put(&kinesis, "plain", b"not aggregated").await?;
    let got = until_received(&[app.out.as_path()], 16).await?;
    let agg: Vec<(String, u64, String, String)> = got
        .iter()
        .filter(|r| r.agg)
        .map(|r| (r.seq.clone(), r.sub, r.key.clone(), r.data.clone()))
        .collect();
    assert_eq!(
        agg, expected,
        "sub-records in order with their sub-sequence numbers"
    );
    let ehk: Vec<&str> = got
        .iter()
        .filter(|r| r.agg && r.sub == 2)
        .map(|r| r.ehk.as_str())
        .collect();
    assert_eq!(
        ehk,
        vec!["12345"; 3],
        "explicit hash keys travel with the sub-records"
    );
    let last = got.last().ok_or("no records")?;
    assert_eq!(
        (last.seq.as_str(), last.agg, last.data.as_str()),
        (plain.as_str(), false, "not aggregated")
    );
    p.cleanup().await
}

/// Attack 7 of issue 27: one 1 MB KPL aggregate of ~170,000 empty records (6 bytes each on
/// the wire) decodes to tens of MB while it carries almost no data bytes. The worker delivers
/// every sub-record in order and its peak memory stays far below the default limit (128 MiB).
#[tokio::test]
async fn a_kpl_aggregate_of_170000_empty_records_is_delivered_within_the_workers_memory()
-> Result<()> {
    use kinesis_worker::records::aggregation::aggregate;
    const SUBS: usize = 170_000;
    let p = Pipeline::new(1).await?;
    let app = p.app("a", &[]).await?;
    let w = p.worker("w", &app.address, &[])?;
    let kinesis = p.env.kinesis().await;
    let subs: Vec<(String, Option<String>, Vec<u8>)> = (0..SUBS)
        .map(|_| ("k".to_string(), None, Vec::new()))
        .collect();
    let blob = aggregate(&subs);
    assert!(blob.len() <= 1024 * 1024, "{} bytes", blob.len());
    let idle = w.proc.peak_rss_mib()?;
    let seq = p.put(&kinesis, "k", &blob).await?;
    let got = until_received(&[app.out.as_path()], SUBS).await?;
    let peak = w.proc.peak_rss_mib()?;
    eprintln!("worker peak RSS {idle:.1} MiB idle → {peak:.1} MiB after {SUBS} empty sub-records");
    assert_eq!(got.len(), SUBS);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, r)| r.agg && r.seq == seq && r.sub == i as u64),
        "every sub-record once, in order"
    );
    assert!(
        peak < 100.0,
        "the worker's peak memory reached {peak:.1} MiB for one 1 MB record"
    );
    drop(w);
    p.cleanup().await
}
