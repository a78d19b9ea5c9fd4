//! `set_pipeline` on the in-memory fakes: the runner reads the file and its var files
//! out of artifacts, checks the pipeline, and hands it to the build's pipeline sink; with
//! no sink, or a pipeline that does not parse, nothing is recorded.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jetbridge_core::images::ImageResolver;
use jetbridge_core::plan::{Vars, parse_pipeline};
use jetbridge_core::services::{
    BuildOutcome, BuildRequest, BuildRunner, BuildStatus, NoEvents, PipelineRecorded, PipelineSink,
    PipelineToSet, StepConfig, StepFailure,
};
use jetbridge_core::{Error, Result};
use jetbridge_memory::MemoryRuntime;
use serde_json::json;

/// Records what it is given; answers `Conflict` once `refuse` is set.
#[derive(Default)]
struct Recorder {
    set: Mutex<Vec<PipelineToSet>>,
    refuse: bool,
}

#[async_trait]
impl PipelineSink for Recorder {
    async fn set_pipeline(&self, p: PipelineToSet) -> Result<PipelineRecorded> {
        if self.refuse {
            return Err(Error::conflict("build 7: the lease is no longer held"));
        }
        let mut set = self.set.lock().expect("lock");
        set.push(p);
        Ok(PipelineRecorded {
            version: set.len() as u64,
            changed: true,
        })
    }
}

fn quick() -> StepConfig {
    StepConfig {
        scheduling_timeout: Duration::from_millis(500),
        startup_timeout: Duration::from_secs(5),
        delete_grace: Duration::ZERO,
        keep_pods: false,
        create_retries: 3,
    }
}

/// A job whose task writes `pipeline` to `ci/p.yml` and two var files, then `step`.
fn job(pipeline: &str, step: &str) -> String {
    let script = format!(
        "echo {} > ci/p.yml && echo 'a: from-file-1' > ci/v1.yml && echo '{{a: from-file-2, b: 2}}' > ci/v2.yml",
        serde_json::to_string(pipeline)
            .expect("json")
            .replace('"', "'")
    );
    format!(
        "jobs:\n- name: j\n  plan:\n  - task: write\n    config:\n      platform: linux\n      outputs: [{{name: ci}}]\n      run: {{path: sh, args: [-c, {}]}}\n{step}",
        serde_json::to_string(&script).expect("json")
    )
}

async fn run(yaml: &str, sink: Option<Arc<Recorder>>) -> BuildOutcome {
    let m = MemoryRuntime::new();
    // The child's `((tool))` would be the build's own var in the task's script: given
    // as itself, it reaches the file as written.
    let mut vars = Vars::new();
    vars.insert("tool", json!("((tool))"));
    let pipeline = parse_pipeline(yaml, "deploy.yml", &vars).expect("pipeline parses");
    let runner = BuildRunner::new(
        m.runtime(),
        quick(),
        ImageResolver::new(),
        "w1",
        Arc::new(NoEvents),
    );
    let mut req = BuildRequest::new(Arc::new(pipeline), "j", 7, "build-7");
    if let Some(sink) = sink {
        req = req.with_pipelines(sink);
    }
    runner.run(req).await.expect("build runs")
}

const CHILD: &str =
    "jobs: [{name: build, plan: [{task: t, config: {platform: linux, run: {path: ((tool))}}}]}]";

#[tokio::test]
async fn the_pipeline_is_read_merged_and_recorded() {
    let sink = Arc::new(Recorder::default());
    let step = "  - set_pipeline: self\n    file: ci/p.yml\n    var_files: [ci/v1.yml, ci/v2.yml]\n    vars: {b: 3, c: four}\n    instance_vars: {branch: main}\n";
    let o = run(&job(CHILD, step), Some(sink.clone())).await;
    assert_eq!(o.status, BuildStatus::Succeeded, "{:?}", o.failure);
    let set = sink.set.lock().expect("lock");
    assert_eq!(set.len(), 1);
    let p = &set[0];
    // `self` is the build's own pipeline, named from its file.
    assert_eq!(p.name, "deploy");
    assert_eq!(p.team, "main");
    assert_eq!(p.file, "ci/p.yml");
    assert_eq!(p.config.trim(), CHILD);
    assert_eq!(p.instance_vars, json!({"branch": "main"}));
    // Later var files over earlier ones, `vars` over both.
    assert_eq!(
        serde_json::Value::Object(p.vars.clone()),
        json!({"a": "from-file-2", "b": 3, "c": "four"})
    );
    // The child's own `((tool))` is left for when it runs, not an error now.
    assert!(p.config.contains("((tool))"));
    assert!(
        o.steps
            .iter()
            .any(|s| s.name == "set_pipeline: self" && s.result.is_ok())
    );
}

#[tokio::test]
async fn a_named_pipeline_of_a_team_is_recorded_under_both() {
    let sink = Arc::new(Recorder::default());
    let step = "  - set_pipeline: other\n    file: ci/p.yml\n    team: platform\n";
    let o = run(&job(CHILD, step), Some(sink.clone())).await;
    assert_eq!(o.status, BuildStatus::Succeeded, "{:?}", o.failure);
    let set = sink.set.lock().expect("lock");
    assert_eq!(
        (set[0].team.as_str(), set[0].name.as_str()),
        ("platform", "other")
    );
    assert_eq!(set[0].instance_vars, json!({}));
    assert!(set[0].vars.is_empty());
}

#[tokio::test]
async fn an_invalid_pipeline_fails_the_step_with_its_place_and_records_nothing() {
    let sink = Arc::new(Recorder::default());
    let bad = "jobs: [{name: build, plan: [{task: t}]}]";
    let o = run(
        &job(bad, "  - set_pipeline: self\n    file: ci/p.yml\n"),
        Some(sink.clone()),
    )
    .await;
    // The pipeline is the build's own input: a bad one fails the build, as a bad task
    // file does.
    assert_eq!(o.status, BuildStatus::Failed);
    let (step, f) = o.failure.as_ref().expect("a failure");
    assert_eq!(step, "set_pipeline: self");
    let StepFailure::Invalid(msg) = f else {
        panic!("not Invalid: {f:?}");
    };
    assert!(msg.contains("the pipeline is not valid"), "{msg}");
    assert!(
        msg.contains("ci/p.yml:1:"),
        "the message names the file and line: {msg}"
    );
    assert!(sink.set.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn a_missing_var_file_fails_the_step_and_records_nothing() {
    let sink = Arc::new(Recorder::default());
    let step = "  - set_pipeline: self\n    file: ci/p.yml\n    var_files: [ci/nope.yml]\n";
    let o = run(&job(CHILD, step), Some(sink.clone())).await;
    assert_eq!(o.status, BuildStatus::Failed);
    let msg = o.failure.as_ref().expect("a failure").1.to_string();
    assert!(msg.contains("ci/nope.yml"), "{msg}");
    assert!(sink.set.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn without_a_sink_the_step_says_pipelines_are_not_stored() {
    let o = run(
        &job(CHILD, "  - set_pipeline: self\n    file: ci/p.yml\n"),
        None,
    )
    .await;
    assert_eq!(o.status, BuildStatus::Failed);
    let msg = o.failure.as_ref().expect("a failure").1.to_string();
    assert!(msg.contains("does not store pipelines"), "{msg}");
}

#[tokio::test]
async fn a_refused_set_stops_the_build_even_under_try() {
    let sink = Arc::new(Recorder {
        refuse: true,
        ..Recorder::default()
    });
    let step = "  - try:\n      set_pipeline: self\n      file: ci/p.yml\n";
    let o = run(&job(CHILD, step), Some(sink)).await;
    assert_eq!(o.status, BuildStatus::Errored);
    assert!(
        matches!(
            o.failure.as_ref().expect("a failure").1,
            StepFailure::WorkerLost(_)
        ),
        "{:?}",
        o.failure
    );
}
