//! Whole pipelines that parse: every supported key lands in the model.

use std::time::Duration;

use jetbridge_core::plan::*;
use serde_json::json;

const FULL: &str = r##"
resource_types:
- name: slack
  type: registry-image
  source: {repository: cfcommunity/slack-notification-resource, tag: 1.10}
  check_every: 24h
- name: scripts
  type: local
  source: {path: ./resources/scripts}
  defaults: {channel: "#ci"}

resources:
- name: repo
  type: git
  icon: github
  source:
    uri: https://example.com/repo.git
    branch: main
- name: notify
  type: scripts
  source: {url: https://hooks.example.com}
- name: image
  type: registry-image
  source: {repository: example/app}

groups:
- name: all
  jobs: [build]

jobs:
- name: build
  public: true
  serial: true
  plan:
  - in_parallel:
      limit: 2
      fail_fast: true
      steps:
      - get: repo
        trigger: true
        version: every
        params: {depth: 1}
      - get: other
        resource: repo
        version: {ref: abc123}
  - task: unit
    attempts: 3
    timeout: 1h30m
    input_mapping: {source: repo}
    output_mapping: {dist: built}
    params: {GOFLAGS: -mod=vendor, COUNT: 3, DEBUG: true}
    privileged: true
    config:
      platform: linux
      image_resource:
        type: registry-image
        source: {repository: golang, tag: "1.22"}
      inputs:
      - name: source
      - name: cache-seed
        path: seed
        optional: true
      outputs:
      - name: dist
        path: out/dist
      caches:
      - path: .cache/go
      params:
        CGO_ENABLED: 0
        NAME: unit
        RATIO: 1.50
      run:
        path: sh
        args: [-c, "go test ./...", 7]
        dir: source
        user: root
      container_limits: {cpu: 512, memory: 1GB}
    on_failure:
      put: notify
      params: {text: failed}
      no_get: true
    ensure:
      do:
      - task: report
        config:
          platform: linux
          inputs: [{name: built}]
          run: {path: "true"}
  - put: image
    inputs: [built, repo]
    get_params: {skip_download: true}
    params: {build: built}
  - task: from-file
    file: repo/ci/tasks/lint.yml
    vars: {level: 3, mode: strict}
  on_success:
    put: notify
    inputs: detect
    params: {text: ok}
  on_abort:
    put: notify
    inputs: all
- name: deploy
  plan:
  - get: repo
    passed: [build]
  - get: image
    passed: [build]
"##;

#[test]
fn full_pipeline() {
    let p = parse_pipeline(FULL, "ci/pipeline.yml", &Vars::new()).unwrap();
    assert_eq!(p.name, "pipeline");
    assert_eq!(p.resource_types.len(), 2);
    let slack = p.resource_type("slack").unwrap();
    assert_eq!(slack.type_, "registry-image");
    // A numeric tag keeps its text.
    assert_eq!(slack.source["tag"], json!("1.10"));
    assert_eq!((slack.location.line, slack.location.column), (3, 3));
    let notify = p.resource("notify").unwrap();
    assert_eq!(notify.type_, "scripts");
    // `defaults` of the type land under the source.
    assert_eq!(
        notify.source,
        json!({"url": "https://hooks.example.com", "channel": "#ci"})
    );
    assert_eq!(p.resource("repo").unwrap().location.line, 13);

    let build = p.job("build").unwrap();
    assert_eq!(build.location.line, 31);
    assert_eq!(build.plan.len(), 4);

    let StepKind::InParallel(par) = &build.plan[0].kind else {
        panic!("{:?}", build.plan[0].kind)
    };
    assert_eq!(par.limit, Some(2));
    assert!(par.fail_fast);
    let StepKind::Get(g) = &par.steps[0].kind else {
        panic!()
    };
    assert_eq!((g.name.as_str(), g.resource.as_str()), ("repo", "repo"));
    assert!(g.trigger);
    assert_eq!(g.version, None);
    assert_eq!(g.params, json!({"depth": 1}));
    let StepKind::Get(g) = &par.steps[1].kind else {
        panic!()
    };
    assert_eq!((g.name.as_str(), g.resource.as_str()), ("other", "repo"));
    assert_eq!(g.version, Some(json!({"ref": "abc123"})));
    assert!(!g.trigger);

    let unit = &build.plan[1];
    assert_eq!(unit.attempts, 3);
    assert_eq!(unit.timeout, Some(Duration::from_secs(5400)));
    assert_eq!(unit.location.line, 46);
    let StepKind::Task(t) = &unit.kind else {
        panic!()
    };
    assert_eq!(t.name, "unit");
    assert!(t.privileged);
    assert_eq!(t.input_mapping["source"], "repo");
    assert_eq!(t.output_mapping["dist"], "built");
    assert_eq!(t.params["GOFLAGS"], "-mod=vendor");
    assert_eq!(t.params["COUNT"], "3");
    assert_eq!(t.params["DEBUG"], "true");
    let TaskSource::Inline(c) = &t.config else {
        panic!()
    };
    assert_eq!(c.platform, "linux");
    assert_eq!(
        c.image_resource.as_ref().unwrap().image_ref().unwrap(),
        "golang:1.22"
    );
    assert_eq!(c.inputs.len(), 2);
    assert_eq!(c.inputs[0].path, "source");
    assert!(!c.inputs[0].optional);
    assert_eq!(
        (c.inputs[1].path.as_str(), c.inputs[1].optional),
        ("seed", true)
    );
    assert_eq!(c.outputs[0].path, "out/dist");
    assert_eq!(c.caches, vec![".cache/go".to_owned()]);
    assert_eq!(c.params["CGO_ENABLED"], "0");
    assert_eq!(c.params["RATIO"], "1.50");
    assert_eq!(c.run.path, "sh");
    assert_eq!(c.run.args, vec!["-c", "go test ./...", "7"]);
    assert_eq!(c.run.dir.as_deref(), Some("source"));
    assert_eq!(c.run.user.as_deref(), Some("root"));
    assert_eq!(c.container_limits.cpu_millis, Some(500));
    assert_eq!(c.container_limits.memory_bytes, Some(1 << 30));
    assert_eq!(c.location.line, 54);

    let on_failure = unit.hooks.on_failure.as_ref().unwrap();
    let StepKind::Put(put) = &on_failure.kind else {
        panic!()
    };
    assert!(put.no_get);
    assert_eq!(put.inputs, None);
    let ensure = unit.hooks.ensure.as_ref().unwrap();
    let StepKind::Do(steps) = &ensure.kind else {
        panic!()
    };
    assert_eq!(steps.len(), 1);
    assert!(unit.hooks.on_success.is_none());

    let StepKind::Put(put) = &build.plan[2].kind else {
        panic!()
    };
    assert_eq!(
        put.inputs,
        Some(vec!["built".to_owned(), "repo".to_owned()])
    );
    assert_eq!(put.get_params, json!({"skip_download": true}));
    assert!(!put.no_get);

    let StepKind::Task(t) = &build.plan[3].kind else {
        panic!()
    };
    assert_eq!(
        t.config,
        TaskSource::File {
            artifact: "repo".into(),
            path: "ci/tasks/lint.yml".into()
        }
    );
    assert_eq!(t.vars["level"], json!(3));
    assert_eq!(t.vars["mode"], json!("strict"));

    assert!(build.hooks.on_success.is_some());
    assert!(build.hooks.on_abort.is_some());
    assert!(build.hooks.on_failure.is_none());

    let deploy = p.job("deploy").unwrap();
    let StepKind::Get(g) = &deploy.plan[0].kind else {
        panic!()
    };
    assert_eq!(g.passed, vec!["build".to_owned()]);
}

#[test]
fn in_parallel_as_a_list_and_defaults() {
    let text = "\
resources: [{name: r, type: mock}]
jobs:
- name: j
  plan:
  - in_parallel:
    - get: r
    - get: s
      resource: r
";
    let p = parse_pipeline(text, "x.yaml", &Vars::new()).unwrap();
    let step = &p.jobs[0].plan[0];
    assert_eq!(step.attempts, 1);
    assert_eq!(step.timeout, None);
    let StepKind::InParallel(par) = &step.kind else {
        panic!()
    };
    assert_eq!(par.limit, None);
    assert!(!par.fail_fast);
    assert_eq!(par.steps.len(), 2);
    assert_eq!(p.resource("r").unwrap().source, json!({}));
}

#[test]
fn vars_fill_placeholders_with_types() {
    let text = "\
resources:
- name: repo
  type: git
  source: ((repo_source))
jobs:
- name: j
  plan:
  - get: repo
    attempts: ((tries))
    timeout: ((limit))
  - task: t
    config:
      platform: linux
      image_resource:
        type: registry-image
        source: {repository: ((registry.host))/app, tag: ((tag))}
      inputs: [{name: repo}]
      params: {URL: \"https://((registry.host))/v2\", N: ((tries))}
      run: {path: echo, args: [\"((greeting)) world\"]}
";
    let mut vars = Vars::new();
    vars.insert(
        "repo_source",
        json!({"uri": "git@x:y.git", "private_key": "KEY"}),
    )
    .insert("tries", json!(4))
    .insert("limit", json!("10m"))
    .insert("registry", json!({"host": "reg.example.com"}))
    .insert("tag", json!("v2"))
    .insert("greeting", json!("hello"));
    let p = parse_pipeline(text, "p.yml", &vars).unwrap();
    assert_eq!(
        p.resource("repo").unwrap().source,
        json!({"uri": "git@x:y.git", "private_key": "KEY"})
    );
    let job = &p.jobs[0];
    assert_eq!(job.plan[0].attempts, 4);
    assert_eq!(job.plan[0].timeout, Some(Duration::from_secs(600)));
    let StepKind::Task(t) = &job.plan[1].kind else {
        panic!()
    };
    let TaskSource::Inline(c) = &t.config else {
        panic!()
    };
    assert_eq!(
        c.image_resource.as_ref().unwrap().image_ref().unwrap(),
        "reg.example.com/app:v2"
    );
    assert_eq!(c.params["URL"], "https://reg.example.com/v2");
    assert_eq!(
        c.params.get("N").map(String::as_str),
        Some("4"),
        "{:?}",
        c.params
    );
    assert_eq!(c.run.args, vec!["hello world"]);

    // String values from `--var` work where numbers are expected.
    let vars = Vars::from_assignments([
        "repo_source=x",
        "tries=2",
        "limit=5s",
        "tag=1",
        "greeting=hi",
    ])
    .unwrap();
    let mut vars = vars;
    vars.insert("registry", json!({"host": "h"}));
    let err = parse_pipeline(text, "p.yml", &vars).unwrap_err();
    // `source: x` is not a mapping.
    assert_eq!((err.location.line, err.location.column), (4, 11));
    assert!(err.message.contains("`source` must be a mapping"), "{err}");
}

#[test]
fn debug_output_hides_secrets() {
    let text = "\
resources:
- name: repo
  type: git
  source: {uri: x, private_key: TOPSECRET1}
jobs:
- name: j
  plan:
  - get: repo
    params: {token: TOPSECRET2}
  - put: repo
    params: {password: TOPSECRET3}
    get_params: {password: TOPSECRET4}
  - task: t
    params: {API_KEY: TOPSECRET5}
    vars: {v: TOPSECRET6}
    config:
      platform: linux
      params: {SECRET: TOPSECRET7}
      image_resource:
        type: registry-image
        source: {repository: busybox, password: TOPSECRET8}
      run: {path: \"true\"}
";
    let p = parse_pipeline(text, "p.yml", &Vars::new()).unwrap();
    let shown = format!("{p:?} {p:#?}");
    assert!(!shown.contains("TOPSECRET"), "{shown}");
    for key in [
        "private_key",
        "token",
        "password",
        "API_KEY",
        "SECRET",
        "\"v\"",
    ] {
        assert!(shown.contains(key), "{key} missing from {shown}");
    }
}

#[test]
fn error_converts_to_invalid() {
    let err = parse_pipeline("jobs: []\n", "p.yml", &Vars::new()).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("p.yml:1:7: "), "{text}");
    assert!(text.contains("\n  hint: "), "{text}");
    let core: jetbridge_core::Error = err.into();
    assert_eq!(core.kind(), jetbridge_core::ErrorKind::Invalid);
    assert!(core.message().contains("p.yml:1:7"));
}
