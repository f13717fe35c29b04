//! Compiles the checked-in .proto with protox (pure Rust: no protoc on the build machine).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let file = root.join("kinesis_operator/processor/v1/processor.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let descriptors = protox::compile([&file], [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Record data as `bytes::Bytes`: a retried batch is cloned without copying the data.
        .bytes(".kinesis_operator.processor.v1.Record.data")
        .compile_fds(descriptors)?;
    Ok(())
}
