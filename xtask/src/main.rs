//! `cargo xtask`: the project's developer tasks.
//!
//! - `env up | down | status | install`: the local test environment (a real single-node
//!   Kubernetes 1.20.2 cluster, kinesis-mock, moto, Helm).
//! - `images`: builds the project's binaries and imports them as OCI images into the node.
//! - `test`: brings the environment up, builds the images, runs every check and test.
//! - `demo`: the whole system on this machine (README's first command).

mod consumers_image;
mod demo;
mod env;
mod images;
mod install;
mod paths;
mod programs;
mod sh;
mod test;

use anyhow::{Result, bail};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  demo [--short] the whole system on this machine: environment, images, the operator
                 (helm), a 4-shard stream, the Counter application, pageviews; then a
                 reshard to 8 shards (--short: fewer records, no reshard, torn down after)
  env install    install and build what the environment needs (cached), start nothing
  env up         install what is missing and start the environment (idempotent)
  env down       stop what `env up` started and undo its changes to the machine
  env status     show what is running
  images [--release]
                 build the binaries and import them as images into the node
  test [--keep-env]
                 fmt check, env up, images, clippy, every test; then env down if
                 this run started it (unless --keep-env)";

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let paths = paths::Paths::discover()?;
    match args.as_slice() {
        ["demo"] => demo::demo(&paths, demo::Mode::Full),
        ["demo", "--short"] => demo::demo(&paths, demo::Mode::Short),
        ["env", "install"] => env::install_all(&paths),
        ["env", "up"] => env::up(&paths),
        ["env", "down"] => env::down(&paths),
        ["env", "status"] => env::status(&paths),
        ["images", rest @ ..] => programs::images(&paths, rest.contains(&"--release"))
            .and_then(|()| programs::test_images(&paths)),
        ["test", rest @ ..] => test::test(&paths, rest.contains(&"--keep-env")),
        ["help" | "-h" | "--help"] | [] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("unknown command `{}`\n{USAGE}", args.join(" ")),
    }
}
