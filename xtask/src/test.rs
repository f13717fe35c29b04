//! `cargo xtask test`.

use std::time::Instant;

use anyhow::{Context, Result};

use crate::env;
use crate::paths::Paths;
use crate::programs::{cargo, images, target_dir, workspace_root};
use crate::sh::{output, run, step};

/// Prints the free space where the build writes and the target folder's size (a CI machine's
/// disk is shared and may be nearly full: a failure for want of space should be explained by
/// the log itself). Never fails the run.
fn disk(when: &str) {
    let gb = |b: u64| b as f64 / f64::from(1u32 << 30);
    let free = free_bytes().map_or("?".into(), |f| format!("{:.1} GB", gb(f)));
    let used = gb(dir_bytes(&target_dir()));
    step(format!(
        "disk {when}: {free} free; the target folder holds {used:.1} GB"
    ));
}

/// A target folder larger than this is built again from nothing: cargo never deletes what it
/// built before (each change of a workspace crate or a dependency leaves its old test
/// binaries, ≈ 100 MB each, and incremental caches), so a target folder kept between runs
/// grows without bound (69 GB was seen on a development machine) until the disk is full. A
/// fresh build of everything `cargo xtask test` builds takes ≈ 8.3 GB (2026-12-06).
const TARGET_PRUNE_BYTES: u64 = 24 << 30;

/// Below this much free space, a target folder holding more than a fresh build needs is
/// pruned too (the disk is shared: what is stale in it may be what the build needs).
const LOW_FREE_BYTES: u64 = 10 << 30;

/// Why a target folder of `size` bytes, with `free` bytes left on its disk, is to be removed
/// before the build; `None`: kept (pure).
fn prune_reason(size: u64, free: Option<u64>) -> Option<&'static str> {
    if size > TARGET_PRUNE_BYTES {
        Some("mostly old builds")
    } else if size > LOW_FREE_BYTES && free.is_some_and(|f| f < LOW_FREE_BYTES) {
        Some("and the disk is nearly full")
    } else {
        None
    }
}

/// Removes the target folder when [`prune_reason`] says so: the build starts again from
/// nothing.
fn prune_target() -> Result<()> {
    let target = target_dir();
    let size = dir_bytes(&target);
    let Some(reason) = prune_reason(size, free_bytes()) else {
        return Ok(());
    };
    step(format!(
        "the target folder holds {:.1} GB ({reason}): removing it, everything is built again",
        size as f64 / f64::from(1u32 << 30),
    ));
    std::fs::remove_dir_all(&target).with_context(|| format!("removing {}", target.display()))
}

/// Free bytes on the workspace's file system, if `df` can tell.
fn free_bytes() -> Option<u64> {
    let mut df = std::process::Command::new("df");
    df.args(["-B1", "--output=avail"]).arg(workspace_root());
    output(&mut df).ok()?.lines().nth(1)?.trim().parse().ok()
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

#[cfg(test)]
mod tests {
    use super::{LOW_FREE_BYTES, TARGET_PRUNE_BYTES, prune_reason};

    #[test]
    fn an_outgrown_target_folder_or_a_full_disk_prunes_a_fresh_build_never() {
        const GB: u64 = 1 << 30;
        // A fresh build's size, on a roomy or a nearly full disk: kept.
        assert_eq!(prune_reason(8 * GB, Some(70 * GB)), None);
        assert_eq!(prune_reason(8 * GB, Some(GB)), None);
        assert_eq!(prune_reason(8 * GB, None), None);
        // Old builds piled up: removed whatever the disk.
        assert!(prune_reason(TARGET_PRUNE_BYTES + 1, Some(70 * GB)).is_some());
        assert!(prune_reason(TARGET_PRUNE_BYTES + 1, None).is_some());
        // More than a build needs on a nearly full disk: removed; unknown free space: kept.
        assert!(prune_reason(LOW_FREE_BYTES + 1, Some(LOW_FREE_BYTES - 1)).is_some());
        assert_eq!(
            prune_reason(LOW_FREE_BYTES + 1, Some(LOW_FREE_BYTES + 1)),
            None
        );
        assert_eq!(prune_reason(LOW_FREE_BYTES + 1, None), None);
    }
}
