//! Prints the `KinesisApplication` CRD as YAML: `cargo run -p kinesis-operator --bin crdgen >
//! crds/kinesisapplications.yaml` (a test fails when the checked-in file is stale).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    print!("{}", kinesis_operator::crd_yaml()?);
    Ok(())
}
