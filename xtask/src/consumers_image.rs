//! `localhost/consumers:dev`: the app image of the kcl-multilang and lambda cluster tests. It
//! holds a CPython (this machine's: the binary, libpython and the standard library, without
//! its tests and GUI parts) and this machine's Node.js, and the consumers' libraries as users
//! install them from their registries (amazon_kclpy's package and awslambdaric with its
//! dependencies from PyPI, aws-kcl's `node_modules` from npm), plus their unchanged programs
//! in `/app`: amazon-kclpy's own `sample_kclpy_app.py`, the aws-kcl consumer written the way
//! its upstream sample is (`tests/kcl/sample_kcl_app.js`), and the test's Lambda handler
//! (`tests/lambda/kinesis_handler.py`). It has no kinesis-bridge: the operator puts that in,
//! as it does for any user's image.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::images::{Image, NONROOT, build_and_import, libraries};
use crate::paths::Paths;
use crate::programs::workspace_root;

/// The image's reference on the node.
pub const REFERENCE: &str = "localhost/consumers:dev";

/// Parts of the standard library a consumer never imports (and its bytecode caches).
const SKIPPED: &[&str] = &[
    "test",
    "tests",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "site-packages",
    "__pycache__",
    "config-3.11-x86_64-linux-gnu",
];

/// What the consumers need from the PyPI packages in the examples' virtualenv.
const SITE_PACKAGES: &[&str] = &[
    "awslambdaric",
    "runtime_client.cpython-311-x86_64-linux-gnu.so",
    "simplejson",
    "snapshot_restore_py.py",
];

/// Every file under `dir` (following no symlinked directory), skipping [`SKIPPED`] names.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if SKIPPED.iter().any(|s| name == *s) || name.to_string_lossy().starts_with("jars") {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            files_under(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// `src` (a file or a folder) copied to `dest` in the image.
fn add(files: &mut Vec<(PathBuf, String)>, src: &Path, dest: &str) -> Result<()> {
    if src.is_dir() {
        let mut found = Vec::new();
        files_under(src, &mut found)?;
        for f in found {
            let rel = f.strip_prefix(src)?.to_string_lossy().into_owned();
            files.push((f, format!("{dest}/{rel}")));
        }
    } else {
        files.push((src.to_path_buf(), dest.to_string()));
    }
    Ok(())
}

/// `program` in a folder of `PATH`.
fn on_path(program: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("`{program}` is not on PATH (Node.js runs the aws-kcl consumer; npm installed aws-kcl)"))
}

/// Builds the image and imports it into the node's containerd at `socket`.
pub fn build(paths: &Paths, socket: &Path) -> Result<()> {
    let venv = paths.python_examples_venv();
    let python = std::fs::canonicalize(venv.join("bin/python"))
        .context("the examples' virtualenv: run `cargo xtask env install`")?;
    let prefix = python
        .parent()
        .and_then(Path::parent)
        .context("python's prefix")?
        .to_path_buf();
    let stdlib = prefix.join("lib/python3.11");
    let site = venv.join("lib/python3.11/site-packages");
    let kclpy = paths.kclpy();

    let mut files: Vec<(PathBuf, String)> = vec![(python.clone(), "/usr/local/bin/python3".into())];
    add(&mut files, &stdlib, "/usr/local/lib/python3.11")?;
    for name in SITE_PACKAGES {
        add(
            &mut files,
            &site.join(name),
            &format!("/usr/local/lib/python3.11/site-packages/{name}"),
        )?;
    }
    add(
        &mut files,
        &kclpy.join("amazon_kclpy"),
        "/usr/local/lib/python3.11/site-packages/amazon_kclpy",
    )?;
    add(
        &mut files,
        &kclpy.join("samples/sample_kclpy_app.py"),
        "/app/sample_kclpy_app.py",
    )?;
    add(
        &mut files,
        &workspace_root().join("tests/lambda/kinesis_handler.py"),
        "/app/kinesis_handler.py",
    )?;
    let node = std::fs::canonicalize(on_path("node")?)?;
    files.push((node.clone(), "/usr/local/bin/node".into()));
    add(&mut files, &paths.aws_kcl(), "/app/node_modules")?;
    add(
        &mut files,
        &workspace_root().join("tests/kcl/sample_kcl_app.js"),
        "/app/sample_kcl_app.js",
    )?;

    // The shared libraries of python, node and of every extension module. libpython lives in
    // python's own prefix here: it goes where the loader looks by default.
    let mut libs: Vec<(PathBuf, String)> = Vec::new();
    let programs: Vec<PathBuf> = [python.clone(), node]
        .into_iter()
        .chain(
            files
                .iter()
                .map(|(src, _)| src.clone())
                .filter(|p| p.extension().is_some_and(|e| e == "so")),
        )
        .collect();
    for program in &programs {
        for lib in libraries(program)? {
            let dest = if lib.starts_with(&prefix) {
                let name = lib.file_name().context("library name")?.to_string_lossy();
                format!("/usr/lib/x86_64-linux-gnu/{name}")
            } else {
                lib.to_string_lossy().into_owned()
            };
            if !libs.iter().any(|(_, d)| *d == dest) {
                libs.push((lib, dest));
            }
        }
    }
    files.extend(libs);
    build_and_import(
        &Image {
            reference: REFERENCE,
            files,
            entrypoint: "/usr/local/bin/python3",
            user: NONROOT,
            with_libraries: false,
        },
        &paths.cache.join("image-build/consumers"),
        socket,
    )
}
