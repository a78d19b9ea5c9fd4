//! What the Kubernetes tests of the binary share: a simulator and a Kubernetes backend
//! talking to it.

use std::path::Path;
use std::sync::Arc;

use jetbridge_kube::{KubeBackend, KubeConfig};
use jetbridge_kube_sim::{SimConfig, Simulator};

/// Start `sim` (its work directory under `dir`) and a backend on namespace `ns` with
/// `cfg` (its kubeconfig and namespace filled in).
pub async fn kube_on_sim(
    dir: &Path,
    ns: &str,
    sim: SimConfig,
    cfg: KubeConfig,
) -> (Simulator, Arc<KubeBackend>) {
    let sim = Simulator::start(SimConfig {
        work_root: Some(dir.join("sim")),
        ..sim
    })
    .await
    .expect("simulator");
    let kubeconfig = dir.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, ns).expect("kubeconfig");
    let backend = KubeBackend::new(KubeConfig {
        kubeconfig: Some(kubeconfig),
        namespace: Some(ns.into()),
        ..cfg
    })
    .await
    .expect("kube backend");
    (sim, Arc::new(backend))
}
