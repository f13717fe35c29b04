//! `cargo xtask env up | down | status`: a real single-node Kubernetes cluster (etcd,
//! apiserver, controller-manager, scheduler, kubelet with containerd, runc and CNI), the
//! Kinesis server (kinesis-mock) and the DynamoDB server (moto), all on this machine.
//!
//! The servers listen on the node's own bridge address ([`NODE_IP`]) or on 127.0.0.1: tests
//! reach them there from the host, and pods reach them at the same address. The one
//! exception is kinesis-mock, which has no bind-address setting and listens on every
//! address (tests still use [`NODE_IP`]). `env.json` in the environment folder tells tests
//! every endpoint.

mod host;
mod pki;
pub mod process;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::images::{self, Image};
use crate::install;
use crate::paths::{Paths, versions};
use crate::sh::{output, step, succeeds, write_atomic};
use host::Baseline;
use process::{Daemon, running, stop, wait_until};

/// The node's address, on a bridge of its own that carries only this /32.
pub const NODE_IP: &str = "10.250.0.1";
/// That bridge.
const NODE_BRIDGE: &str = "konode0";
/// The bridge the CNI plugin creates for pods (10.244.0.0/24, gateway 10.244.0.1).
const POD_BRIDGE: &str = "kobr0";
/// The node's name in Kubernetes.
pub const NODE_NAME: &str = "kinesis-operator-node";
const ETCD_CLIENT_PORT: u16 = 23790;
const ETCD_PEER_PORT: u16 = 23800;
const APISERVER_PORT: u16 = 6443;
const KINESIS_PORT: u16 = 4567;
const KINESIS_TLS_PORT: u16 = 4568;
const DYNAMODB_PORT: u16 = 4569;
/// The sandbox ("pause") image, built from the same Kubernetes source.
const PAUSE_IMAGE: &str = "localhost/pause:3.4.1";
/// The region the emulators are addressed as.
const REGION: &str = "us-east-1";

/// Daemons in start order; `env down` stops them in reverse.
const DAEMONS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "containerd",
    "kubelet",
    "kinesis-mock",
    "moto",
];

/// Folders and files of a running environment.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
    /// The containerd socket.
    pub fn containerd_socket(&self) -> PathBuf {
        self.p("containerd/containerd.sock")
    }
    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.p("admin.kubeconfig")
    }
    fn baseline(&self) -> PathBuf {
        self.p("baseline.json")
    }
}

fn kubectl(paths: &Paths, layout: &Layout) -> Command {
    let mut c = Command::new(paths.kubernetes_bin().join("kubectl"));
    c.arg("--kubeconfig").arg(layout.kubeconfig());
    c
}

/// Answers a plain-HTTP GET on `addr` with a 2xx status?
pub fn http_ok(addr: &str, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(sock_addr) = addr.parse() else {
        return false;
    };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&sock_addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.starts_with("HTTP/1.") && head.get(9..10) == Some("2")
}

/// `env install`: everything the environment needs, cached; starts nothing.
pub fn install_all(paths: &Paths) -> Result<()> {
    install::apt(install::RUNTIME_PACKAGES)?;
    install::kubernetes(paths)?;
    install::kinesis_mock(paths)?;
    install::moto(paths)?;
    install::python_examples(paths)?;
    install::kclpy(paths)?;
    install::aws_kcl(paths)?;
    install::helm(paths)
}

/// Is every daemon of the environment running?
pub fn is_up(paths: &Paths) -> bool {
    DAEMONS.iter().all(|d| running(&paths.env, d).is_some()) && paths.env_file().is_file()
}

fn check_root() -> Result<()> {
    let uid = output(Command::new("id").arg("-u"))?;
    if uid.trim() != "0" {
        bail!(
            "the test environment needs root (kubelet, containerd, bridges and sysctls): run as root"
        );
    }
    Ok(())
}

/// `env up`: installs what is missing, then starts what is not running; idempotent.
pub fn up(paths: &Paths) -> Result<()> {
    let started = Instant::now();
    check_root()?;
    install_all(paths)?;
    let layout = Layout {
        dir: paths.env.clone(),
    };
    // A folder with no daemon running is what a reboot or a killed session leaves: mounts,
    // interfaces and changed sysctls may remain, and containerd's state names dead tasks.
    if layout.dir.exists() && !DAEMONS.iter().any(|d| running(&layout.dir, d).is_some()) {
        step("found a stopped environment: cleaning it up before starting");
        down(paths)?;
    }
    for d in [
        "logs",
        "pids",
        "pki",
        "etcd",
        "containerd",
        "cni/net.d",
        "cni/ipam",
        "kubelet/manifests",
    ] {
        std::fs::create_dir_all(layout.p(d))?;
    }
    if !layout.baseline().is_file() {
        Baseline::capture()?.save(&layout.baseline())?;
    }

    step("network: node bridge");
    host::ensure_node_bridge(NODE_BRIDGE, NODE_IP)?;
    let env_dir = &layout.dir;

    // The emulators need only the node address; they start while the cluster comes up.
    step("Kinesis (kinesis-mock) and DynamoDB (moto)");
    let kinesis_pkg = paths.kinesis_mock();
    Daemon::new("kinesis-mock", "node")
        .args([kinesis_pkg.join("main.js").display().to_string()])
        .cwd(&kinesis_pkg)
        // Started outside its package folder it cannot find its certificate without this.
        .env(
            "KINESIS_MOCK_CERT_PATH",
            kinesis_pkg.join("server.json").display().to_string(),
        )
        .env("KINESIS_MOCK_PLAIN_PORT", KINESIS_PORT.to_string())
        .env("KINESIS_MOCK_TLS_PORT", KINESIS_TLS_PORT.to_string())
        .env("LOG_LEVEL", "WARN")
        // Its default account-wide limit of 50 open shards is reached by a few test runs
        // against a long-lived environment (AWS's own default is 500 per region or more).
        .env("SHARD_LIMIT", "10000")
        .start(env_dir)?;
    let moto_script = layout.p("moto_server.py");
    write_atomic(&moto_script, include_str!("moto_server.py"))?;
    Daemon::new("moto", paths.moto_venv().join("bin/python"))
        .args([
            moto_script.display().to_string(),
            NODE_IP.to_string(),
            DYNAMODB_PORT.to_string(),
        ])
        .start(env_dir)?;
    step("control plane");
    let tokens = pki::ensure(&layout.p("pki"), NODE_IP, NODE_NAME)?;
    let server = format!("https://{NODE_IP}:{APISERVER_PORT}");
    let ca = layout.p("pki/ca.crt");
    write_atomic(
        &layout.kubeconfig(),
        pki::kubeconfig(&server, &ca, "admin", &tokens.admin)?,
    )?;
    write_atomic(
        &layout.p("kubelet.kubeconfig"),
        pki::kubeconfig(
            &server,
            &ca,
            &format!("system:node:{NODE_NAME}"),
            &tokens.node,
        )?,
    )?;
    write_configs(&layout)?;
    let bin = paths.kubernetes_bin();

    Daemon::new("etcd", "/usr/bin/etcd")
        .args([
            "--name=default".to_string(),
            format!("--data-dir={}", layout.p("etcd/data").display()),
            format!("--listen-client-urls=http://127.0.0.1:{ETCD_CLIENT_PORT}"),
            format!("--advertise-client-urls=http://127.0.0.1:{ETCD_CLIENT_PORT}"),
            format!("--listen-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}"),
            format!("--initial-cluster=default=http://127.0.0.1:{ETCD_PEER_PORT}"),
        ])
        .start(env_dir)?;
    let etcd_addr = format!("127.0.0.1:{ETCD_CLIENT_PORT}");
    wait_until(
        "etcd",
        Duration::from_secs(30),
        &log(&layout, "etcd"),
        || http_ok(&etcd_addr, "/health"),
    )?;

    let pki = layout.p("pki");
    let pf = |f: &str| pki.join(f).display().to_string();
    Daemon::new("kube-apiserver", bin.join("kube-apiserver"))
        .args([
            format!("--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}"),
            format!("--bind-address={NODE_IP}"),
            format!("--advertise-address={NODE_IP}"),
            format!("--secure-port={APISERVER_PORT}"),
            "--insecure-port=0".into(),
            format!("--tls-cert-file={}", pf("apiserver.crt")),
            format!("--tls-private-key-file={}", pf("apiserver.key")),
            format!("--client-ca-file={}", pf("ca.crt")),
            format!("--token-auth-file={}", pf("tokens.csv")),
            "--authorization-mode=Node,RBAC".into(),
            format!("--service-account-key-file={}", pf("sa.pub")),
            format!("--service-account-signing-key-file={}", pf("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--allow-privileged=true".into(),
            "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
        ])
        .start(env_dir)?;
    wait_until(
        "kube-apiserver",
        Duration::from_secs(90),
        &log(&layout, "kube-apiserver"),
        || succeeds(kubectl(paths, &layout).args(["get", "--raw", "/readyz"])),
    )?;

    Daemon::new(
        "kube-controller-manager",
        bin.join("kube-controller-manager"),
    )
    .args([
        format!("--kubeconfig={}", layout.kubeconfig().display()),
        "--port=0".into(),
        "--bind-address=127.0.0.1".into(),
        "--leader-elect=false".into(),
        format!("--service-account-private-key-file={}", pf("sa.key")),
        format!("--root-ca-file={}", pf("ca.crt")),
        "--use-service-account-credentials=true".into(),
    ])
    .start(env_dir)?;
    Daemon::new("kube-scheduler", bin.join("kube-scheduler"))
        .args([
            format!("--kubeconfig={}", layout.kubeconfig().display()),
            "--port=0".into(),
            "--bind-address=127.0.0.1".into(),
            "--leader-elect=false".into(),
        ])
        .start(env_dir)?;

    step("node: containerd and kubelet");
    Daemon::new("containerd", "/usr/bin/containerd")
        .args([
            "--config".to_string(),
            layout.p("containerd/config.toml").display().to_string(),
        ])
        .start(env_dir)?;
    let sock = layout.containerd_socket();
    wait_until(
        "containerd",
        Duration::from_secs(30),
        &log(&layout, "containerd"),
        || {
            succeeds(
                Command::new("ctr")
                    .arg("--address")
                    .arg(&sock)
                    .arg("version"),
            )
        },
    )?;
    ensure_pause_image(paths, &layout)?;
    Daemon::new("kubelet", bin.join("kubelet"))
        .args([
            format!("--config={}", layout.p("kubelet/config.yaml").display()),
            format!("--kubeconfig={}", layout.p("kubelet.kubeconfig").display()),
            format!("--root-dir={}", layout.p("kubelet/root").display()),
            format!("--cert-dir={}", layout.p("kubelet/pki").display()),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={NODE_IP}"),
            "--container-runtime=remote".into(),
            format!("--container-runtime-endpoint=unix://{}", sock.display()),
            format!("--image-service-endpoint=unix://{}", sock.display()),
        ])
        .start(env_dir)?;
    wait_until(
        "node Ready",
        Duration::from_secs(90),
        &log(&layout, "kubelet"),
        || {
            output(kubectl(paths, &layout).args([
                "get",
                "node",
                NODE_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]))
            .is_ok_and(|s| s.trim() == "True")
        },
    )?;

    let kinesis_addr = format!("{NODE_IP}:{KINESIS_PORT}");
    let moto_addr = format!("{NODE_IP}:{DYNAMODB_PORT}");
    wait_until(
        "kinesis-mock",
        Duration::from_secs(60),
        &log(&layout, "kinesis-mock"),
        || http_ok(&kinesis_addr, "/healthcheck"),
    )?;
    wait_until(
        "moto",
        Duration::from_secs(60),
        &log(&layout, "moto"),
        || http_ok(&moto_addr, "/moto-api/"),
    )?;

    let env = serde_json::json!({
        "kubeconfig": layout.kubeconfig(),
        "kubectl": bin.join("kubectl"),
        "helm": paths.helm(),
        "containerd_socket": sock,
        "node_name": NODE_NAME,
        "node_ip": NODE_IP,
        "kinesis_endpoint": format!("http://{kinesis_addr}"),
        "dynamodb_endpoint": format!("http://{moto_addr}"),
        "region": REGION,
        "kubernetes_version": versions::KUBERNETES,
        "python": paths.python_examples_venv().join("bin/python"),
        // A test that needs its own moto (e.g. with IAM enforcement on) starts this one.
        "moto_server": paths.moto_venv().join("bin/moto_server"),
        // amazon_kclpy's package and samples, for PYTHONPATH.
        "kclpy": paths.kclpy(),
        // aws-kcl's node_modules, for NODE_PATH.
        "aws_kcl": paths.aws_kcl(),
    });
    write_atomic(&paths.env_file(), serde_json::to_vec_pretty(&env)?)?;
    step(format!(
        "environment up in {:.0} s; endpoints in {}\n    export KUBECONFIG={}",
        started.elapsed().as_secs_f64(),
        paths.env_file().display(),
        layout.kubeconfig().display()
    ));
    Ok(())
}

fn log(layout: &Layout, name: &str) -> String {
    layout
        .p("logs")
        .join(format!("{name}.log"))
        .display()
        .to_string()
}

/// Writes containerd's, the CNI plugin's and kubelet's configs from the templates beside
/// this file, with the environment folder filled in.
fn write_configs(layout: &Layout) -> Result<()> {
    let dir = layout.dir.display().to_string();
    let fill = |t: &str| {
        t.replace("${ENV_DIR}", &dir)
            .replace("${NODE_IP}", NODE_IP)
            .replace("${PAUSE_IMAGE}", PAUSE_IMAGE)
            .replace("${POD_BRIDGE}", POD_BRIDGE)
    };
    write_atomic(
        &layout.p("containerd/config.toml"),
        fill(include_str!("containerd.toml")),
    )?;
    write_atomic(
        &layout.p("cni/net.d/10-bridge.conflist"),
        fill(include_str!("cni-bridge.conflist")),
    )?;
    write_atomic(
        &layout.p("kubelet/config.yaml"),
        fill(include_str!("kubelet.yaml")),
    )?;
    Ok(())
}

fn ensure_pause_image(paths: &Paths, layout: &Layout) -> Result<()> {
    let sock = layout.containerd_socket();
    let listed = output(Command::new("ctr").arg("--address").arg(&sock).args([
        "--namespace",
        "k8s.io",
        "images",
        "ls",
        "-q",
    ]))?;
    if listed.lines().any(|l| l.trim() == PAUSE_IMAGE) {
        return Ok(());
    }
    images::build_and_import(
        &Image {
            reference: PAUSE_IMAGE,
            files: vec![(paths.kubernetes_bin().join("pause"), "/pause".into())],
            entrypoint: "/pause",
            user: "65535:65535",
            with_libraries: false,
        },
        &layout.p("image-build"),
        &sock,
    )
}

/// `env down`: stops what `env up` started (by pid), removes the pods' containers, mounts,
/// network namespaces and interfaces, the node bridge, the host folders kubelet made, and
/// restores the sysctls; the environment folder goes too (its logs are kept in
/// `last-env-logs/` of the cache).
pub fn down(paths: &Paths) -> Result<()> {
    check_root()?;
    let layout = Layout {
        dir: paths.env.clone(),
    };
    if !layout.dir.exists() {
        eprintln!(
            "environment is not up ({} does not exist)",
            layout.dir.display()
        );
        return Ok(());
    }
    let baseline = Baseline::load(&layout.baseline()).ok();
    let env_dir = &layout.dir;

    step("stopping kubelet and the pods' containers");
    stop(env_dir, "kubelet", Duration::from_secs(10));
    let sock = layout.containerd_socket();
    if running(env_dir, "containerd").is_some() {
        remove_containers(&sock);
    }
    stop(env_dir, "containerd", Duration::from_secs(10));
    // Shims outlive containerd by design; ours are the ones started with our socket.
    for pid in process::pids_with_cmdline(&sock.display().to_string()) {
        eprintln!("    stopping container shim (pid {pid})");
        process::signal(pid, "KILL");
        process::wait_gone(pid, Duration::from_secs(5));
    }

    step("stopping the control plane and the emulators");
    for d in DAEMONS.iter().rev() {
        stop(env_dir, d, Duration::from_secs(10));
    }

    step("undoing host changes");
    host::unmount_below(&layout.dir);
    if let Some(b) = &baseline {
        for ns in b.new_netns() {
            let p = Path::new("/run/netns").join(&ns);
            eprintln!("    removing network namespace {ns}");
            host::unmount_below(&p);
            let _ = std::fs::remove_file(&p);
        }
    }
    host::delete_interface(POD_BRIDGE);
    host::delete_interface(NODE_BRIDGE);
    if let Some(b) = &baseline {
        for i in b.new_interfaces() {
            if i.starts_with("veth") {
                host::delete_interface(&i);
            }
        }
        b.remove_new_cgroups();
        b.remove_new_folders();
        b.restore_sysctls();
    } else {
        eprintln!("    warning: no baseline recorded; sysctls and host folders left as they are");
    }

    let logs = paths.cache.join("last-env-logs");
    if logs.exists() {
        std::fs::remove_dir_all(&logs)?;
    }
    let _ = std::fs::rename(layout.p("logs"), &logs);
    // Nothing may still be mounted below the folder we are about to delete.
    if !host::mounts_below(&layout.dir).is_empty() {
        bail!(
            "mounts remain below {}: {:?}",
            layout.dir.display(),
            host::mounts_below(&layout.dir)
        );
    }
    std::fs::remove_dir_all(&layout.dir)
        .with_context(|| format!("removing {}", layout.dir.display()))?;
    step(format!(
        "environment down; its logs are in {}",
        logs.display()
    ));
    Ok(())
}

/// Kills and deletes every container task of the node, so their mounts and network
/// namespaces go away with them (sandboxes, then nothing holds the pods' veths).
fn remove_containers(sock: &Path) {
    let ctr = |args: &[&str]| {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(sock)
            .args(["--namespace", "k8s.io"])
            .args(args);
        c
    };
    let tasks = output(&mut ctr(&["tasks", "ls", "-q"])).unwrap_or_default();
    for id in tasks.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let _ = succeeds(&mut ctr(&["tasks", "kill", "--signal", "SIGKILL", id]));
    }
    for id in tasks.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // A killed task can take a moment to be reaped; delete retries until it is.
        let start = Instant::now();
        while !succeeds(&mut ctr(&["tasks", "delete", id]))
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let containers = output(&mut ctr(&["containers", "ls", "-q"])).unwrap_or_default();
    for id in containers.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let _ = succeeds(&mut ctr(&["containers", "delete", id]));
    }
}

/// `env status`: each daemon's pid, the node and the endpoints.
pub fn status(paths: &Paths) -> Result<()> {
    let layout = Layout {
        dir: paths.env.clone(),
    };
    let mut all = true;
    for d in DAEMONS {
        match running(&layout.dir, d) {
            Some(pid) => println!("{d:<24} running (pid {pid})"),
            None => {
                all = false;
                println!("{d:<24} stopped");
            }
        }
    }
    if all && paths.env_file().is_file() {
        let node = output(kubectl(paths, &layout).args(["get", "nodes", "--no-headers"]))
            .unwrap_or_else(|e| format!("unreadable: {e:#}"));
        println!("node: {}", node.trim());
        println!("endpoints: {}", paths.env_file().display());
        println!("export KUBECONFIG={}", layout.kubeconfig().display());
    } else {
        println!("environment is not (fully) up: run `cargo xtask env up`");
    }
    Ok(())
}

/// The node's containerd socket, for `images`; fails with the fix if the node is down.
pub fn containerd_socket(paths: &Paths) -> Result<PathBuf> {
    let layout = Layout {
        dir: paths.env.clone(),
    };
    if running(&layout.dir, "containerd").is_none() {
        bail!("the node's containerd is not running: run `cargo xtask env up` first");
    }
    Ok(layout.containerd_socket())
}
