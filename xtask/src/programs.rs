//! The project's programs: cargo run from the workspace root, the programs built and imported
//! as images into the node (`cargo xtask images`). Used by `test` and `demo` alike.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::env;
use crate::images::{Image, NONROOT, build_and_import};
use crate::paths::Paths;
use crate::sh::{run, step};

/// The project's programs and the image each is packed into.
pub const PROGRAMS: &[(&str, &str)] = &[
    ("kinesis-worker", "localhost/kinesis-worker:dev"),
    ("kinesis-operator", "localhost/kinesis-operator:dev"),
    ("pageview-counter", "localhost/pageview-counter:dev"),
];

/// The images only tests use (not the demo's): the consumers' app image (Python and Node).
pub fn test_images(paths: &Paths) -> Result<()> {
    let socket = env::containerd_socket(paths)?;
    crate::consumers_image::build(paths, &socket)
}

/// Where the worker's image carries the static kinesis-bridge (the operator's
/// `deployment::protocol::BRIDGE_IN_IMAGE`).
const BRIDGE_IN_IMAGE: &str = "/kinesis-bridge";

/// The target the static bridge is built for.
const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds `kinesis-bridge` as one static executable (glibc linked in: `crt-static`), so it
/// runs in any Linux app image, whatever its C library. Its own target folder, so the
/// flags never invalidate the workspace's build. Returns its path.
pub fn static_bridge(release: bool) -> Result<PathBuf> {
    step("building kinesis-bridge as a static executable");
    let dir = target_dir().join("static");
    let mut build = cargo();
    build
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &dir)
        .args([
            "build",
            "-p",
            "kinesis-bridge",
            "--bin",
            "kinesis-bridge",
            "--target",
            STATIC_TARGET,
        ]);
    if release {
        build.arg("--release");
    }
    run(&mut build)?;
    Ok(dir
        .join(STATIC_TARGET)
        .join(if release { "release" } else { "debug" })
        .join("kinesis-bridge"))
}

/// Debian's CA bundle (package ca-certificates), copied into every program image.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The target folder cargo builds into (`CARGO_TARGET_DIR`, relative to the workspace root
/// as cargo takes it when run from there, or `target`).
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| root.join(d))
        .unwrap_or_else(|| root.join("target"))
}

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    let xtask = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().map(PathBuf::from).unwrap_or(xtask)
}

/// `cargo` (the one running xtask), in the workspace root.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    // `cargo xtask` runs us with cargo's per-package variables (CARGO_PKG_*, …); passed on,
    // they change what build scripts see and make cargo rebuild when the tests call it
    // without them (tests/src/process.rs strips them the same way).
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR" {
            c.env_remove(&*k);
        }
    }
    c
}

/// Builds the programs (`--release`, or the dev profile the tests build anyway) and imports
/// one image per program into the node.
pub fn images(paths: &Paths, release: bool) -> Result<()> {
    let socket = env::containerd_socket(paths)?;
    step(format!(
        "building the programs ({})",
        if release { "release" } else { "dev profile" }
    ));
    let mut build = cargo();
    build.args(["build", "--workspace", "--bins"]);
    if release {
        build.arg("--release");
    }
    run(&mut build)?;
    let target = target_dir().join(if release { "release" } else { "debug" });
    let work = paths.cache.join("image-build");
    std::fs::create_dir_all(&work)?;
    let bridge = static_bridge(release)?;
    let bridge_stripped = work.join("kinesis-bridge.stripped");
    run(Command::new("strip")
        .arg("-o")
        .arg(&bridge_stripped)
        .arg(&bridge))
    .context("stripping kinesis-bridge")?;
    for (program, reference) in PROGRAMS {
        let stripped = work.join(format!("{program}.stripped"));
        run(Command::new("strip")
            .arg("-o")
            .arg(&stripped)
            .arg(target.join(program)))
        .with_context(|| format!("stripping {program}"))?;
        let mut files = vec![
            (stripped.clone(), format!("/usr/local/bin/{program}")),
            // The trust store for TLS to AWS (the SDK loads the platform's roots).
            (PathBuf::from(CA_BUNDLE), CA_BUNDLE.to_string()),
        ];
        if *program == "kinesis-worker" {
            // The operator's init container copies it into kcl-multilang app containers.
            files.push((bridge_stripped.clone(), BRIDGE_IN_IMAGE.to_string()));
        }
        build_and_import(
            &Image {
                reference,
                files,
                entrypoint: &format!("/usr/local/bin/{program}"),
                user: NONROOT,
                with_libraries: true,
            },
            &work.join(program),
            &socket,
        )?;
        std::fs::remove_file(&stripped)?;
    }
    std::fs::remove_file(&bridge_stripped)?;
    Ok(())
}
