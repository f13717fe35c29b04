//! OCI images without a Docker engine or a registry: a rootfs holding a program (and, for a
//! dynamically linked one, the shared libraries `ldd` names), packed by umoci, exported by
//! skopeo and imported into the node's containerd, where pods use it with
//! `imagePullPolicy: Never`.
//!
//! The layout matches the Dockerfiles: the program at `/usr/local/bin/NAME`, run as the
//! unprivileged user 65532.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::sh::{output, run, step};

/// The unprivileged user and group our images run as (the distroless "nonroot" id).
pub const NONROOT: &str = "65532:65532";

/// One image to build.
pub struct Image<'a> {
    /// Reference in containerd, e.g. `localhost/kinesis-worker:dev`.
    pub reference: &'a str,
    /// (file on the host, absolute path in the image)
    pub files: Vec<(PathBuf, String)>,
    pub entrypoint: &'a str,
    pub user: &'a str,
    /// Copy the shared libraries of the first file (a dynamically linked program).
    pub with_libraries: bool,
}

/// Shared libraries (and the loader) a dynamically linked program needs, from `ldd`.
pub(crate) fn libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let text = output(Command::new("ldd").arg(program))?;
    if text.contains("statically linked") || text.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            bail!("{}: a shared library is missing: {line}", program.display());
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// Builds `image` in `work` and imports it into the containerd at `socket`.
pub fn build_and_import(image: &Image<'_>, work: &Path, socket: &Path) -> Result<()> {
    step(format!("image {}", image.reference));
    if work.exists() {
        std::fs::remove_dir_all(work)?;
    }
    std::fs::create_dir_all(work)?;
    let layout = work.join("oci");
    let bundle = work.join("bundle");
    let tag = "build";
    let at = format!("{}:{tag}", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &at]))?;
    run(Command::new("umoci")
        .args(["unpack", "--image", &at])
        .arg(&bundle))?;
    let rootfs = bundle.join("rootfs");
    let mut files = image.files.clone();
    if image.with_libraries {
        let program = &image.files.first().context("an image needs a program")?.0;
        for lib in libraries(program)? {
            let dest = lib.to_string_lossy().into_owned();
            files.push((lib, dest));
        }
    }
    for (src, dest) in &files {
        let target = rootfs.join(dest.trim_start_matches('/'));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Follows symlinks: the loader and libraries are links into /lib on Debian.
        std::fs::copy(src, &target)
            .with_context(|| format!("copying {} into the image", src.display()))?;
    }
    // A writable /tmp for programs that need scratch space (or a socket).
    let tmp = rootfs.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    crate::install::set_mode(&tmp, 0o1777)?;
    run(Command::new("umoci")
        .args(["repack", "--image", &at])
        .arg(&bundle))?;
    run(Command::new("umoci").args([
        "config",
        "--image",
        &at,
        "--config.entrypoint",
        image.entrypoint,
        "--config.user",
        image.user,
    ]))?;
    let archive = work.join("image.tar");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci:{at}"),
        &format!("docker-archive:{}:{}", archive.display(), image.reference),
    ]))?;
    run(Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", "k8s.io", "images", "import"])
        .arg(&archive))?;
    std::fs::remove_dir_all(work)?;
    Ok(())
}
