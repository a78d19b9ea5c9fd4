//! What the resource images of the runtime suite hold on the Kubernetes API simulator,
//! shared by the tests that run the suite there.

use jetbridge_kube_sim::Simulator;

/// The suite's `jb-mock` type, in Concourse's image; the simulator runs its
/// `/opt/resource` scripts from the shell scripts the suite writes.
pub const MOCK_TYPE: &str =
    "{name: jb-mock, type: registry-image, source: {repository: concourse/mock-resource}}";

/// The image of the built-in `mock`, as the chart names its own (`ghcr.io/jetbridge/
/// jetbridge:TAG`, `images.mock-image`): the jetbridge image, whose `/opt/resource/{check,
/// in,out}` are links to the binary (the Dockerfile makes them).
pub const MOCK_IMAGE: &str = "ghcr.io/jetbridge/jetbridge:test";

/// What the two resource images hold on the simulator, which runs container commands as
/// host processes: Concourse's mock resource holds the suite's scripts, the jetbridge
/// image the binary under test, as `check`, `in` and `out` and as itself (the
/// Dockerfile's `/usr/local/bin/jetbridge`).
pub fn image_files(sim: &Simulator, scripts: &std::path::Path) {
    let binary = env!("CARGO_BIN_EXE_jetbridge");
    for name in ["check", "in", "out"] {
        let in_image = format!("/opt/resource/{name}");
        sim.image_file("concourse/mock-resource", &in_image, scripts.join(name))
            .expect("mock-resource file");
        sim.image_file(MOCK_IMAGE, &in_image, binary)
            .expect("jetbridge image file");
    }
    sim.image_file(MOCK_IMAGE, "/usr/local/bin/jetbridge", binary)
        .expect("jetbridge image file");
    sim.image_file(
        MOCK_IMAGE,
        jetbridge_kube::STEP_HELPER_PATH,
        jetbridge_kube_sim::built_step_helper(),
    )
    .expect("jetbridge image file");
}
