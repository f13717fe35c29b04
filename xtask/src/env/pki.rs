//! The test cluster's keys, certificates and tokens, made once per environment with openssl.
//!
//! A real CA signs the apiserver's serving certificate (with every name and address clients
//! use, including the in-cluster `kubernetes.default.svc` ones), so clients verify TLS as in
//! production instead of skipping verification.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::sh::{output, run, write_atomic};

/// Tokens of the static token file: `admin` (system:masters) and the node's.
pub struct Tokens {
    pub admin: String,
    pub node: String,
}

fn random_token() -> Result<String> {
    Ok(
        output(Command::new("openssl").args(["rand", "-hex", "16"]))?
            .trim()
            .to_string(),
    )
}

/// Creates the CA, the apiserver certificate, the service-account key pair and the token
/// file in `pki` unless they exist; returns the tokens.
pub fn ensure(pki: &Path, node_ip: &str, node_name: &str) -> Result<Tokens> {
    std::fs::create_dir_all(pki)?;
    let tokens_file = pki.join("tokens.csv");
    if !pki.join("apiserver.crt").is_file() || !tokens_file.is_file() {
        let openssl = |args: &[&str]| run(Command::new("openssl").current_dir(pki).args(args));
        openssl(&["genrsa", "-out", "ca.key", "2048"])?;
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-sha256",
            "-days",
            "3650",
            "-subj",
            "/CN=kinesis-operator-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "ca.crt",
        ])?;
        openssl(&["genrsa", "-out", "apiserver.key", "2048"])?;
        openssl(&[
            "req",
            "-new",
            "-key",
            "apiserver.key",
            "-subj",
            "/CN=kube-apiserver",
            "-out",
            "apiserver.csr",
        ])?;
        std::fs::write(
            pki.join("apiserver.ext"),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName=IP:{node_ip},IP:127.0.0.1,IP:10.96.0.1,\
                 DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,\
                 DNS:kubernetes.default.svc.cluster.local,DNS:localhost\n"
            ),
        )?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "apiserver.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3650",
            "-sha256",
            "-extfile",
            "apiserver.ext",
            "-out",
            "apiserver.crt",
        ])?;
        openssl(&["genrsa", "-out", "sa.key", "2048"])?;
        openssl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
        let admin = random_token()?;
        let node = random_token()?;
        write_atomic(
            &tokens_file,
            format!(
                "{admin},admin,admin,system:masters\n\
                 {node},system:node:{node_name},kubelet-{node_name},system:nodes\n"
            ),
        )?;
    }
    let text = std::fs::read_to_string(&tokens_file)?;
    let token_of = |user: &str| {
        text.lines()
            .find(|l| l.split(',').nth(1) == Some(user))
            .and_then(|l| l.split(',').next())
            .map(String::from)
            .unwrap_or_default()
    };
    Ok(Tokens {
        admin: token_of("admin"),
        node: token_of(&format!("system:node:{node_name}")),
    })
}

/// A kubeconfig for `server` trusting `ca` and authenticating with `token`.
pub fn kubeconfig(server: &str, ca: &Path, user: &str, token: &str) -> Result<String> {
    let ca_data = output(Command::new("base64").args(["-w0"]).arg(ca))?;
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kinesis-operator-test\n  cluster:\n    \
         server: {server}\n    certificate-authority-data: {ca_data}\nusers:\n- name: {user}\n  user:\n    \
         token: {token}\ncontexts:\n- name: kinesis-operator-test\n  context:\n    cluster: kinesis-operator-test\n    \
         user: {user}\ncurrent-context: kinesis-operator-test\n"
    ))
}
