//! Reading the controller configuration from the Kubernetes API, as the Go router does: the
//! `config` key of the `jumpstarter-controller` ConfigMap in the router's namespace.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::controller_config::CONFIG_MAP;

/// How long the API server has to answer.
const API_TIMEOUT: Duration = Duration::from_secs(30);

/// The controller configuration text in `namespace`, with the credentials of `kubeconfig`,
/// or else inferred as kube-rs does (`KUBECONFIG` or `~/.kube/config`, then the pod's
/// service account).
pub(crate) async fn read_config(
    namespace: &str,
    kubeconfig: Option<&Path>,
) -> Result<String, String> {
    let what = format!("ConfigMap {namespace}/{CONFIG_MAP}");
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read the kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("bad kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes credentials to read the {what}: {e}"))?,
    };
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config)
        .map_err(|e| format!("cannot make a Kubernetes client for {server}: {e}"))?;
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, namespace);
    let map = tokio::time::timeout(API_TIMEOUT, api.get(CONFIG_MAP))
        .await
        .map_err(|_| {
            format!("cannot read the {what}: {server} did not answer within {API_TIMEOUT:?}")
        })?
        .map_err(|e| format!("cannot read the {what} from {server}: {e}"))?;
    map.data
        .and_then(|mut d| d.remove("config"))
        .ok_or_else(|| format!("the {what} has no `config` key"))
}
