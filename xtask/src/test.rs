//! `cargo xtask test`.

use std::time::Instant;

use anyhow::Result;

use crate::env;
use crate::paths::Paths;
use crate::programs::{cargo, images};
use crate::sh::{run, step};

/// fmt check, `env up`, images, clippy, every test of the workspace; `env down` at the end if
/// this run brought the environment up (and `--keep-env` was not given).
pub fn test(paths: &Paths, keep_env: bool) -> Result<()> {
    let started = Instant::now();
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
        run(cargo()
            .env("KINESIS_OPERATOR_ENV_FILE", paths.env_file())
            .args(["test", "--workspace"]))
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
