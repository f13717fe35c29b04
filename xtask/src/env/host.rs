//! What the environment changes on the host, recorded at `env up` and undone at `env down`:
//! sysctls, network interfaces, network namespaces, mounts, folders kubelet and containerd
//! create outside the environment folder, cgroups.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::sh::{output, run, succeeds};

/// The sysctls kubelet (`vm.overcommit_memory`, `kernel.panic`, `kernel.panic_on_oops`) and
/// the CNI bridge plugin (`net.ipv4.ip_forward`) change.
pub const SYSCTLS: &[&str] = &[
    "kernel.panic",
    "kernel.panic_on_oops",
    "vm.overcommit_memory",
    "net.ipv4.ip_forward",
];

/// Host folders kubelet, containerd and CNI may create outside our folder; each one that did
/// not exist before `env up` is removed by `env down`.
pub const HOST_FOLDERS: &[&str] = &[
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/cni",
    "/var/lib/kubelet",
    "/run/containerd",
    "/opt/containerd",
    "/run/netns",
];

/// The cgroup that kubelet creates for pods (under every v1 controller and the v2 mount).
const POD_CGROUP: &str = "kubepods";

/// The state of the host before `env up` touched it.
#[derive(Debug, Default)]
pub struct Baseline {
    pub sysctls: BTreeMap<String, String>,
    pub absent_folders: Vec<String>,
    pub netns: Vec<String>,
    pub interfaces: Vec<String>,
    pub cgroups: Vec<String>,
}

fn sysctl_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

fn read_sysctl(key: &str) -> Result<String> {
    Ok(std::fs::read_to_string(sysctl_path(key))
        .with_context(|| format!("reading sysctl {key}"))?
        .trim()
        .to_string())
}

fn write_sysctl(key: &str, value: &str) -> Result<()> {
    std::fs::write(sysctl_path(key), value).with_context(|| format!("setting sysctl {key}={value}"))
}

fn list_dir(dir: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Interface names on the host.
pub fn interfaces() -> Vec<String> {
    list_dir("/sys/class/net")
}

/// Every cgroup folder named `kubepods` at the top of a cgroup hierarchy.
fn pod_cgroups() -> Vec<String> {
    list_dir("/sys/fs/cgroup")
        .into_iter()
        .map(|c| format!("/sys/fs/cgroup/{c}/{POD_CGROUP}"))
        .filter(|p| Path::new(p).is_dir())
        .collect()
}

impl Baseline {
    /// Reads the host as it is now.
    pub fn capture() -> Result<Self> {
        let mut sysctls = BTreeMap::new();
        for key in SYSCTLS {
            sysctls.insert((*key).to_string(), read_sysctl(key)?);
        }
        Ok(Self {
            sysctls,
            absent_folders: HOST_FOLDERS
                .iter()
                .filter(|f| !Path::new(f).exists())
                .map(|f| (*f).to_string())
                .collect(),
            netns: list_dir("/run/netns"),
            interfaces: interfaces(),
            cgroups: pod_cgroups(),
        })
    }

    /// Serialises as JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::json!({
            "sysctls": self.sysctls,
            "absent_folders": self.absent_folders,
            "netns": self.netns,
            "interfaces": self.interfaces,
            "cgroups": self.cgroups,
        });
        crate::sh::write_atomic(path, serde_json::to_vec_pretty(&json)?)
    }

    /// Reads what [`Baseline::save`] wrote.
    pub fn load(path: &Path) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        )?;
        let strings = |k: &str| -> Vec<String> {
            v[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let sysctls = v["sysctls"]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            sysctls,
            absent_folders: strings("absent_folders"),
            netns: strings("netns"),
            interfaces: strings("interfaces"),
            cgroups: strings("cgroups"),
        })
    }

    /// Puts the sysctls back.
    pub fn restore_sysctls(&self) {
        for (k, v) in &self.sysctls {
            match read_sysctl(k) {
                Ok(now) if now == *v => {}
                _ => {
                    eprintln!("    sysctl {k} = {v} (restored)");
                    if let Err(e) = write_sysctl(k, v) {
                        eprintln!("    warning: {e:#}");
                    }
                }
            }
        }
    }

    /// Network namespaces that appeared since the baseline (the pods' ones).
    pub fn new_netns(&self) -> Vec<String> {
        list_dir("/run/netns")
            .into_iter()
            .filter(|n| !self.netns.contains(n))
            .collect()
    }

    /// Interfaces that appeared since the baseline.
    pub fn new_interfaces(&self) -> Vec<String> {
        interfaces()
            .into_iter()
            .filter(|n| !self.interfaces.contains(n))
            .collect()
    }

    /// Removes the `kubepods` cgroups that kubelet made (deepest first; a cgroup folder is
    /// removed with rmdir, which fails while a process is still in it).
    pub fn remove_new_cgroups(&self) {
        for root in pod_cgroups() {
            if self.cgroups.contains(&root) {
                continue;
            }
            let _ = succeeds(
                Command::new("find")
                    .args([&root, "-depth", "-type", "d", "-exec", "rmdir", "{}", ";"]),
            );
            if Path::new(&root).exists() {
                eprintln!("    warning: could not remove cgroup {root}");
            }
        }
    }

    /// Removes the host folders that did not exist before.
    pub fn remove_new_folders(&self) {
        for f in &self.absent_folders {
            let p = Path::new(f);
            if p.exists() {
                // /run/netns may hold namespaces that are not ours: only an empty one goes.
                let res = if f == "/run/netns" {
                    std::fs::remove_dir(p)
                } else {
                    std::fs::remove_dir_all(p)
                };
                if let Err(e) = res {
                    eprintln!("    warning: could not remove {f}: {e}");
                }
            }
        }
    }
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().into_owned();
    let mut found: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        // mountinfo escapes spaces as \040; our paths have none.
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .map(String::from)
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.len()));
    found.dedup();
    found
}

/// Unmounts every mount at or below `dir`, lazily when a plain unmount is refused.
pub fn unmount_below(dir: &Path) {
    for m in mounts_below(dir) {
        if !succeeds(Command::new("umount").arg(&m)) {
            let _ = succeeds(Command::new("umount").arg("-l").arg(&m));
        }
    }
}

/// Creates the node's bridge with its /32 address (kubelet refuses a loopback node IP and
/// this VM cannot create `dummy` devices). Returns `true` if it created it.
pub fn ensure_node_bridge(name: &str, ip: &str) -> Result<bool> {
    let created = if interfaces().iter().any(|i| i == name) {
        false
    } else {
        run(Command::new("ip").args(["link", "add", name, "type", "bridge"]))?;
        true
    };
    let addrs = output(Command::new("ip").args(["-o", "addr", "show", "dev", name]))?;
    if !addrs.contains(&format!("inet {ip}/32")) {
        run(Command::new("ip").args(["addr", "add", &format!("{ip}/32"), "dev", name]))?;
    }
    run(Command::new("ip").args(["link", "set", name, "up"]))?;
    Ok(created)
}

/// Deletes interface `name` if it exists.
pub fn delete_interface(name: &str) {
    if interfaces().iter().any(|i| i == name) {
        eprintln!("    removing interface {name}");
        let _ = succeeds(Command::new("ip").args(["link", "delete", name]));
    }
}
