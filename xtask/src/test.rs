//! `cargo xtask test`.

use std::time::Instant;

use anyhow::{Context, Result};

use crate::env;
use crate::paths::Paths;
use crate::programs::{cargo, images, workspace_root};
use crate::sh::{output, run, step};

/// Prints the free space where the build and the environment's cache write (a CI machine's
/// disk is shared and may be nearly full: a failure for want of space should be explained by
/// the log itself). Never fails the run.
fn disk(when: &str) {
    let target = target_dir();
    let mut df = std::process::Command::new("df");
    df.args(["-h", "--output=avail,size,target"])
        .arg(workspace_root());
    let free = output(&mut df).unwrap_or_else(|e| format!("(df failed: {e:#})"));
    let mut fields = free.lines().nth(1).unwrap_or("").split_whitespace();
    let (avail, size) = (fields.next().unwrap_or("?"), fields.next().unwrap_or("?"));
    let used = dir_bytes(&target) as f64 / f64::from(1u32 << 30);
    step(format!(
        "disk {when}: {avail} free of {size}; the target folder holds {used:.1} GB"
    ));
}

/// A dev-profile target folder larger than this is built again from nothing: cargo never
/// deletes what it built before (each change of a workspace crate or a dependency leaves its
/// old test binaries, ≈ 100 MB each, and incremental caches), so a target folder kept between
/// runs grows without bound (69 GB was seen on a development machine) until the disk is full.
/// A fresh build of everything `cargo xtask test` builds takes ≈ 8.3 GB (2026-12-06).
const TARGET_PRUNE_BYTES: u64 = 24 << 30;

/// Below this much free space, a target folder holding more than a fresh build needs is
/// pruned too (the disk is shared: what is stale in it may be what the build needs).
const LOW_FREE_BYTES: u64 = 10 << 30;

/// Removes the target folder when it has outgrown [`TARGET_PRUNE_BYTES`]: the build starts
/// again from nothing.
fn prune_target() -> Result<()> {
    let target = target_dir();
    let size = dir_bytes(&target);
    let free = free_bytes();
    let low = free.is_some_and(|f| f < LOW_FREE_BYTES) && size > LOW_FREE_BYTES;
    if size <= TARGET_PRUNE_BYTES && !low {
        return Ok(());
    }
    step(format!(
        "the target folder holds {:.1} GB ({}): removing it, everything is built again",
        size as f64 / f64::from(1u32 << 30),
        if low {
            "and the disk is nearly full"
        } else {
            "mostly old builds"
        }
    ));
    std::fs::remove_dir_all(&target).with_context(|| format!("removing {}", target.display()))
}

/// Free bytes on the workspace's file system, if `df` can tell.
fn free_bytes() -> Option<u64> {
    let mut df = std::process::Command::new("df");
    df.args(["-B1", "--output=avail"]).arg(workspace_root());
    output(&mut df).ok()?.lines().nth(1)?.trim().parse().ok()
}

/// The target folder cargo builds into (`CARGO_TARGET_DIR` relative to the workspace root,
/// as cargo takes it when run from there).
fn target_dir() -> std::path::PathBuf {
    let root = workspace_root();
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| root.join(d))
        .unwrap_or_else(|| root.join("target"))
}

/// The bytes of the files under `dir`, each file once however many hard links it has (cargo
/// links every binary into two places); 0 if it cannot be read; symbolic links not followed.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    fn walk(dir: &std::path::Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut total = 0;
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => total += walk(&e.path(), seen),
                Ok(t) if t.is_file() => {
                    if let Ok(m) = e.metadata()
                        && seen.insert((m.dev(), m.ino()))
                    {
                        total += m.len();
                    }
                }
                _ => {}
            }
        }
        total
    }
    walk(dir, &mut std::collections::HashSet::new())
}

/// fmt check, `env up`, images, clippy, every test of the workspace; `env down` at the end if
/// this run brought the environment up (and `--keep-env` was not given).
pub fn test(paths: &Paths, keep_env: bool) -> Result<()> {
    let started = Instant::now();
    disk("at the start");
    prune_target()?;
    step("cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    let was_up = env::is_up(paths);
    let result = (|| {
        env::up(paths)?;
        images(paths, false)?;
        crate::programs::test_images(paths)?;
        step("cargo clippy");
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        // The front door: the README's first command, short, then torn down again so the
        // tests have the node to themselves.
        step("cargo xtask demo --short");
        crate::demo::run_demo(paths, crate::demo::Mode::Short, Instant::now())?;
        step("cargo test");
        let tests = run(cargo()
            .env("KINESIS_OPERATOR_ENV_FILE", paths.env_file())
            .args(["test", "--workspace"]));
        disk("after the tests");
        tests
    })();
    if !was_up
        && !keep_env
        && let Err(e) = env::down(paths)
    {
        eprintln!("warning: env down failed: {e:#}");
    }
    step(format!(
        "xtask test finished in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    result
}
