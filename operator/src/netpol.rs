//! The worker pods' NetworkPolicy (opt-in: `--worker-network-policy-from`, the chart's
//! `workers.networkPolicy`): the worker's admin port (`/metrics`, `/readyz`, `/drained`) admits
//! only the peers the administrator chose (Prometheus, say); the ports the application's own
//! containers declare stay open as before. Pure: the reconciler applies it.
//!
//! Kubelet probes come from the node; most network plugins let node traffic through whatever
//! the policy says, but where one does not, add the nodes' CIDR as an `ipBlock` peer.
//!
//! Limits: a port the app listens on without declaring it (or a sidecar a webhook injects)
//! is closed by the policy; NetworkPolicies add up, so another policy that admits everyone to
//! these pods opens the admin port again; turning the feature off leaves the policies made
//! (delete them by the label `app.kubernetes.io/managed-by=kinesis-operator`).

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{KinesisApplication, labels};
use crate::deployment::ADMIN_PORT;

/// The NetworkPolicy's name: `NAME-workers`.
pub fn name(app: &KinesisApplication) -> String {
    format!("{}-workers", app.name_any())
}

/// The worker pods' NetworkPolicy: the admin port from `admin_from` only (no peer: from
/// nobody), and every port the pod template's containers declare from anywhere.
///
/// # Guarantees
/// The admin port is never in a rule without peers (which would admit everyone).
pub fn network_policy(app: &KinesisApplication, admin_from: &[NetworkPolicyPeer]) -> NetworkPolicy {
    let app_name = app.name_any();
    let tcp = |port: IntOrString, protocol: Option<String>| NetworkPolicyPort {
        port: Some(port),
        protocol: Some(protocol.unwrap_or_else(|| "TCP".into())),
        ..Default::default()
    };
    let mut ingress = Vec::new();
    if !admin_from.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(admin_from.to_vec()),
            ports: Some(vec![tcp(IntOrString::Int(ADMIN_PORT), None)]),
        });
    }
    let app_ports: Vec<NetworkPolicyPort> = app
        .spec
        .template
        .spec
        .iter()
        // The app's containers, and its sidecars (init containers that keep running).
        .flat_map(|p| {
            p.containers.iter().chain(
                p.init_containers
                    .iter()
                    .flatten()
                    .filter(|c| c.restart_policy.as_deref() == Some("Always")),
            )
        })
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.container_port != ADMIN_PORT)
        .map(|p| tcp(IntOrString::Int(p.container_port), p.protocol.clone()))
        .collect();
    if !app_ports.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            from: None,
            ports: Some(app_ports),
        });
    }
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(name(app)),
            namespace: app.namespace(),
            labels: Some(labels(&app_name)),
            owner_references: app.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels(&app_name)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..Default::default()
        }),
    }
}

/// Reads `--worker-network-policy-from`: a JSON list of NetworkPolicy peers.
///
/// # Errors
/// Not such a list (the message names the setting).
pub fn parse_peers(json: &str) -> Result<Vec<NetworkPolicyPeer>, String> {
    serde_json::from_str(json).map_err(|e| {
        format!("--worker-network-policy-from is not a JSON list of NetworkPolicy peers: {e}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(ports: serde_json::Value) -> KinesisApplication {
        let v = serde_json::json!({
            "apiVersion": "kinesis-operator.io/v1alpha1", "kind": "KinesisApplication",
            "metadata": {"name": "orders", "namespace": "team-a", "uid": "u1"},
            "spec": {"stream": {"name": "s"},
                "template": {"spec": {"containers": [{"name": "app", "ports": ports}]}}}
        });
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_admin_port_admits_only_the_chosen_peers_and_the_apps_ports_stay_open() {
        let peers = parse_peers(
            r#"[{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]"#,
        )
        .unwrap_or_default();
        let p = network_policy(&app(serde_json::json!([{"containerPort": 9000}])), &peers);
        let v = serde_json::to_value(&p).unwrap_or_default();
        assert_eq!(v["metadata"]["name"], "orders-workers");
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(v["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
        assert_eq!(
            v["spec"]["ingress"],
            serde_json::json!([
                {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                 "ports": [{"port": ADMIN_PORT, "protocol": "TCP"}]},
                {"ports": [{"port": 9000, "protocol": "TCP"}]},
            ])
        );
        assert_eq!(
            v["spec"]["podSelector"]["matchLabels"],
            serde_json::to_value(labels("orders")).unwrap_or_default()
        );
    }

    #[test]
    fn no_peer_closes_the_admin_port_to_everyone_never_opens_it() {
        let p = network_policy(&app(serde_json::json!([])), &[]);
        let v = serde_json::to_value(&p).unwrap_or_default();
        assert_eq!(v["spec"]["ingress"], serde_json::json!([]));
        // An app port that is the admin port's number is not opened by the app rule.
        let p = network_policy(
            &app(serde_json::json!([{"containerPort": ADMIN_PORT}])),
            &[],
        );
        let v = serde_json::to_value(&p).unwrap_or_default();
        assert_eq!(v["spec"]["ingress"], serde_json::json!([]));
        assert!(parse_peers("{}").is_err_and(|e| e.contains("--worker-network-policy-from")));
    }
}
