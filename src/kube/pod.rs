//! The parts of a Pod that draining needs, typed like `node.rs`: who controls
//! it, whether it is a mirror of a static pod, its volumes and phase.

use serde::Deserialize;

use super::node::ObjectMeta;

/// The annotation the kubelet puts on the API's copy of a static pod
/// (`corev1.MirrorPodAnnotationKey`); the API cannot evict those.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Pod {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodSpec {
    pub node_name: String,
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Volume {
    pub name: String,
    /// Present (even as `{}`) for an emptyDir volume.
    pub empty_dir: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodStatus {
    /// Pending, Running, Succeeded, Failed, Unknown.
    pub phase: String,
}

impl Pod {
    /// `namespace/name`, as kubectl prints it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }

    /// Succeeded or Failed: it can go without disrupting anything.
    pub fn finished(&self) -> bool {
        matches!(self.status.phase.as_str(), "Succeeded" | "Failed")
    }

    pub fn is_mirror(&self) -> bool {
        self.metadata.annotations.contains_key(MIRROR_ANNOTATION)
    }

    /// Has an emptyDir volume (its data goes with the pod).
    pub fn has_local_storage(&self) -> bool {
        self.spec.volumes.iter().any(|v| v.empty_dir.is_some())
    }
}
