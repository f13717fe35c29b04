//! `crds/kinesisapplications.yaml` is generated from the Rust types: this fails when the
//! checked-in file is stale.

#[test]
fn the_checked_in_crd_matches_the_types() -> Result<(), Box<dyn std::error::Error>> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/kinesisapplications.yaml");
    let checked_in =
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let generated = kinesis_operator::crd_yaml()?;
    assert!(
        checked_in == generated,
        "{} is stale: run `cargo run -p kinesis-operator --bin crdgen > crds/kinesisapplications.yaml`",
        path.display()
    );
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/kinesis-operator/files/kinesisapplications.yaml");
    let in_chart =
        std::fs::read_to_string(&chart).map_err(|e| format!("{}: {e}", chart.display()))?;
    assert!(
        in_chart == generated,
        "{} is stale: run `cargo run -p kinesis-operator --bin crdgen > {}`",
        chart.display(),
        chart.display()
    );
    Ok(())
}

#[test]
fn the_example_manifests_parse_and_are_valid() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/pageview-counter/deploy/kinesisapplication.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let app: kinesis_operator::crd::KinesisApplication = serde_yaml::from_str(&text)?;
    assert_eq!(kinesis_operator::validate::validate(&app), vec![]);
    Ok(())
}
