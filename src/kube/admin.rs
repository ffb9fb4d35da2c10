//! Changing the cluster: the admin identity's API (`AdminApi`). Reads go
//! through the same `Api` (it derefs to one); what only the admin may do is
//! here: cordon, annotate, list and evict pods. `wait` and `status` never
//! build one: they keep the node reader's least privilege.

use std::time::Duration;

use serde_json::{Value, json};

use super::client::{Api, ApiConfig, ApiError, PatchKind, path_segment};
use super::node::{INSTANCE_ID_ANNOTATION, Node};
use super::pod::Pod;

/// An API client whose certificate is in the admin group (`system:masters`).
pub struct AdminApi {
    api: Api,
}

impl std::ops::Deref for AdminApi {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// What the API said to one eviction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eviction {
    /// The pod is being deleted (it may take its grace period to go).
    Accepted,
    /// No such pod (any more).
    Gone,
    /// 429: a PodDisruptionBudget allows no disruption now; try again later.
    Blocked {
        /// The budget's name, from the Status cause.
        budget: Option<String>,
        message: String,
    },
}

/// The organisations (O) of a PEM certificate's subject.
fn organisations(pem: &str) -> Vec<String> {
    let Ok((_, p)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else {
        return Vec::new();
    };
    let Ok(cert) = p.parse_x509() else {
        return Vec::new();
    };
    cert.subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect()
}

impl AdminApi {
    /// Refuses a client certificate outside `system:masters`: a mutation
    /// with the node reader's would only be refused by the API, later.
    pub fn new(cfg: &ApiConfig) -> anyhow::Result<AdminApi> {
        let group = crate::secrets::client::ADMIN_GROUP;
        if !organisations(&cfg.client.cert_pem)
            .iter()
            .any(|o| o == group)
        {
            anyhow::bail!(
                "changing the cluster needs the admin identity (a client certificate in {group}); this one is not (wait and status use the read-only node reader)"
            );
        }
        Ok(AdminApi {
            api: Api::new(cfg)?,
        })
    }

    /// PATCH a Node; the Node as stored.
    pub fn patch_node(
        &self,
        name: &str,
        patch: &Value,
        kind: PatchKind,
        timeout: Duration,
    ) -> Result<Node, ApiError> {
        let path = format!("/api/v1/nodes/{}", path_segment(name)?);
        self.api.patch(&path, patch, kind, timeout)
    }

    /// Marks the node unschedulable, as `kubectl cordon` does.
    pub fn cordon(&self, name: &str, timeout: Duration) -> Result<Node, ApiError> {
        tracing::info!("{name}: cordoning (no new pods)");
        self.set_unschedulable(name, true, timeout)
    }

    pub fn uncordon(&self, name: &str, timeout: Duration) -> Result<Node, ApiError> {
        tracing::info!("{name}: uncordoning");
        self.set_unschedulable(name, false, timeout)
    }

    fn set_unschedulable(&self, name: &str, on: bool, timeout: Duration) -> Result<Node, ApiError> {
        // `false` as null: the field is omitted when not cordoned, as kubectl leaves it.
        let value = if on { json!(true) } else { Value::Null };
        self.patch_node(
            name,
            &json!({"spec": {"unschedulable": value}}),
            PatchKind::Merge,
            timeout,
        )
    }

    /// Sets (`Some`) or removes (`None`) one annotation of a Node.
    pub fn annotate(
        &self,
        name: &str,
        key: &str,
        value: Option<&str>,
        timeout: Duration,
    ) -> Result<Node, ApiError> {
        self.patch_node(
            name,
            &json!({"metadata": {"annotations": {key: value}}}),
            PatchKind::Merge,
            timeout,
        )
    }

    /// Records the instance ID of the image a node now runs
    /// (`imgbuild.dev/instance-id`), once it has booted after the flash.
    pub fn record_instance(
        &self,
        name: &str,
        instance_id: &str,
        timeout: Duration,
    ) -> Result<Node, ApiError> {
        tracing::info!("{name}: recording instance {instance_id} in the cluster");
        self.annotate(name, INSTANCE_ID_ANNOTATION, Some(instance_id), timeout)
    }

    /// Every pod bound to `node` (field selector `spec.nodeName`, as kubectl
    /// drain lists them), in all namespaces.
    pub fn pods_on(&self, node: &str, timeout: Duration) -> Result<Vec<Pod>, ApiError> {
        let path = format!(
            "/api/v1/pods?fieldSelector=spec.nodeName%3D{}",
            path_segment(node)?
        );
        Ok(self.api.list(&path, timeout)?.items)
    }

    /// One pod; `None` once it is gone.
    pub fn pod(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<Pod>, ApiError> {
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}",
            path_segment(namespace)?,
            path_segment(name)?
        );
        self.api.get(&path, timeout)
    }

    /// Asks the API to evict a pod (POST `.../pods/NAME/eviction`, a policy/v1
    /// Eviction), which honours PodDisruptionBudgets: a 429 means the budget
    /// allows no disruption now (Kubernetes
    /// `pkg/registry/core/pod/storage/eviction.go`, `checkAndDecrement`).
    pub fn evict(&self, pod: &Pod, timeout: Duration) -> Result<Eviction, ApiError> {
        let (ns, name) = (&pod.metadata.namespace, &pod.metadata.name);
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}/eviction",
            path_segment(ns)?,
            path_segment(name)?
        );
        let body = json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": ns},
        });
        let answer = self.api.post(&path, &body, timeout)?;
        match answer.status {
            200 | 201 => Ok(Eviction::Accepted),
            404 => Ok(Eviction::Gone),
            429 => {
                let status: super::node::Status =
                    serde_json::from_slice(&answer.body).unwrap_or_default();
                Ok(blocked(&status))
            }
            _ => Err(self.api.unexpected(&answer)),
        }
    }
}

/// The budget named in a 429's causes: eviction.go adds a cause of type
/// `DisruptionBudget` whose message begins "The disruption budget NAME ...".
fn blocked(status: &super::node::Status) -> Eviction {
    let cause = status
        .details
        .causes
        .iter()
        .find(|c| c.reason == "DisruptionBudget");
    let budget = cause.and_then(|c| {
        c.message
            .strip_prefix("The disruption budget ")
            .and_then(|rest| rest.split_whitespace().next())
            .map(|n| n.trim_end_matches(['.', ',']).to_string())
    });
    let message = match cause {
        Some(c) if !c.message.is_empty() => c.message.clone(),
        _ if !status.message.is_empty() => status.message.clone(),
        _ => "the eviction would violate a PodDisruptionBudget".to_string(),
    };
    Eviction::Blocked { budget, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_names_its_budget() {
        let s: super::super::node::Status = serde_json::from_str(
            r#"{"kind":"Status","status":"Failure","message":"Cannot evict pod as it would violate the pod's disruption budget.",
                "reason":"TooManyRequests","code":429,
                "details":{"causes":[{"reason":"DisruptionBudget","message":"The disruption budget web-pdb needs 2 healthy pods and has 2 currently"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            blocked(&s),
            Eviction::Blocked {
                budget: Some("web-pdb".into()),
                message: "The disruption budget web-pdb needs 2 healthy pods and has 2 currently"
                    .into()
            }
        );
        let bare: super::super::node::Status =
            serde_json::from_str(r#"{"message":"Too many requests","code":429}"#).unwrap();
        assert_eq!(
            blocked(&bare),
            Eviction::Blocked {
                budget: None,
                message: "Too many requests".into()
            }
        );
    }
}
