//! `cluster.bootstrap` as files in the cluster-init server's auto-deploy
//! directory: plain manifests as they are, Helm charts as k3s `HelmChart`
//! resources (helm.cattle.io/v1) with the archive embedded (`chartContent`),
//! so k3s's helm controller installs them with no download at boot.

use base64::Engine;
use serde::Serialize;

/// Where k3s applies manifests from at start.
pub const AUTO_DEPLOY: &str = "/var/lib/rancher/k3s/server/manifests";

/// One chart to embed: its profile entry, archive bytes and values text.
pub struct ChartInput<'a> {
    pub chart: &'a crate::config::bootstrap::Chart,
    pub archive: &'a [u8],
    pub values: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HelmChart<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata<'a>,
    spec: Spec<'a>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    name: &'a str,
    namespace: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Spec<'a> {
    chart_content: String,
    version: &'a str,
    target_namespace: &'a str,
    create_namespace: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    values_content: Option<&'a str>,
}

/// The HelmChart resource for one chart, as YAML.
pub fn helm_chart(c: &ChartInput) -> anyhow::Result<String> {
    let doc = HelmChart {
        api_version: "helm.cattle.io/v1",
        kind: "HelmChart",
        metadata: Metadata {
            name: &c.chart.name,
            namespace: "kube-system",
        },
        spec: Spec {
            chart_content: base64::engine::general_purpose::STANDARD.encode(c.archive),
            version: &c.chart.version,
            target_namespace: &c.chart.namespace,
            create_namespace: true,
            values_content: c.values,
        },
    };
    Ok(format!(
        "# Written by imgbuild: Helm chart {} {} from {} (sha256 {}), embedded.\n{}",
        c.chart.chart,
        c.chart.version,
        c.chart.archive_url(),
        c.chart.sha256,
        serde_yaml_ng::to_string(&doc)?
    ))
}
