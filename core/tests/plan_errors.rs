//! Every class of error: where it points (file, line, column) and that it names the
//! thing that is wrong.

use jetbridge_core::plan::*;

/// Parse `text` expecting an error at `line:col` whose message contains every needle.
#[track_caller]
fn fails_at(text: &str, line: usize, column: usize, needles: &[&str]) -> PlanError {
    let err = parse_pipeline(text, "ci/p.yml", &Vars::new())
        .expect_err("the pipeline should be rejected");
    assert_eq!(err.location.file, "ci/p.yml", "{err}");
    assert_eq!(
        (err.location.line, err.location.column),
        (line, column),
        "wrong place: {err}"
    );
    for n in needles {
        assert!(err.message.contains(n), "`{n}` not in: {err}");
    }
    assert!(
        err.to_string()
            .starts_with(&format!("ci/p.yml:{line}:{column}: ")),
        "{err}"
    );
    err
}

fn hint(err: &PlanError) -> &str {
    err.hint.as_deref().unwrap_or_default()
}

const R: &str = "resources: [{name: r, type: mock}, {name: s, type: mock}]\n";

#[test]
fn yaml_syntax() {
    fails_at(
        "jobs:\n- name: j\n  plan: [\n",
        3,
        9,
        &["invalid YAML", "bracket"],
    );
    fails_at("jobs: x\njobs: y\n", 2, 1, &["invalid YAML", "duplicate"]);
    let err = fails_at("", 1, 1, &["empty"]);
    assert!(!hint(&err).is_empty());
}

#[test]
fn unknown_keys() {
    let err = fails_at(
        "resorces: []\njobs: []\n",
        1,
        1,
        &["unknown key `resorces`"],
    );
    assert!(hint(&err).contains("`resources`"));
    let text = format!("{R}jobs:\n- name: j\n  plan:\n  - get: r\n    triger: true\n");
    let err = fails_at(&text, 6, 5, &["unknown key `triger`", "`get` step"]);
    assert!(hint(&err).contains("`trigger`"));
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      run: {{path: x, shell: sh}}\n"
    );
    fails_at(&text, 8, 22, &["unknown key `shell`", "`run`"]);
    // Explicitly ignored keys are accepted.
    let text = format!(
        "{R}groups: []\njobs:\n- name: j\n  serial: true\n  max_in_flight: 1\n  public: true\n  build_log_retention: {{builds: 3}}\n  plan:\n  - get: r\n    tags: [x]\n"
    );
    parse_pipeline(&text, "p.yml", &Vars::new()).unwrap();
}

#[test]
fn missing_fields() {
    let err = fails_at(
        "jobs:\n- name: j\n  serial: true\n",
        2,
        3,
        &["job `j`", "`plan`"],
    );
    assert!(hint(&err).contains("plan:"));
    fails_at(
        "resources:\n- name: r\njobs: []\n",
        2,
        3,
        &["resource `r`", "`type`"],
    );
    fails_at("resources: []\n", 1, 1, &["the pipeline", "`jobs`"]);
    fails_at("jobs: []\n", 1, 7, &["no jobs"]);
    fails_at("jobs:\n- plan: []\n", 2, 3, &["a job", "`name`"]);
    fails_at(
        "jobs:\n- name: j\n  plan: []\n",
        3,
        9,
        &["job `j`", "empty plan"],
    );
    let text =
        format!("{R}jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n");
    fails_at(&text, 7, 7, &["task config", "`run`"]);
}

#[test]
fn wrong_types() {
    fails_at(
        "jobs:\n- name: j\n  plan: get\n",
        3,
        9,
        &["`plan` must be a list"],
    );
    fails_at(
        "- jobs\n",
        1,
        1,
        &["the pipeline must be a mapping", "a list"],
    );
    let text = format!("{R}jobs:\n- name: j\n  plan:\n  - get: r\n    trigger: sometimes\n");
    fails_at(&text, 6, 14, &["`trigger`", "true or false"]);
    let text = format!("{R}jobs:\n- name: j\n  plan:\n  - get\n");
    fails_at(&text, 5, 5, &["a step must be a mapping"]);
    let text = format!("{R}jobs:\n- name: j\n  plan:\n  - get: r\n    params: [a]\n");
    fails_at(&text, 6, 13, &["`params` must be a mapping"]);
}

#[test]
fn duplicates() {
    let err = fails_at(
        &format!("{R}jobs:\n- name: j\n  plan: [{{get: r}}]\n- name: j\n  plan: [{{get: r}}]\n"),
        5,
        9,
        &["job `j`", "twice", "line 3"],
    );
    assert!(!hint(&err).is_empty());
    fails_at(
        "resources:\n- {name: r, type: git}\n- {name: r, type: mock}\njobs: []\n",
        3,
        10,
        &["resource `r`", "twice"],
    );
    fails_at(
        "resource_types:\n- {name: t, type: registry-image, source: {repository: a}}\n- {name: t, type: registry-image, source: {repository: b}}\njobs: []\n",
        3,
        10,
        &["resource type `t`", "twice"],
    );
    let task = "config: {platform: linux, run: {path: x}}";
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - task: t\n    {task}\n  - do:\n    - task: t\n      {task}\n"
    );
    // Repeated task names are Concourse's, and jetbridge's: each step binds its own
    // outputs (and a hook such as `on_failure: {task: notify}` can be reused).
    parse_pipeline(&text, "p.yml", &Vars::new()).unwrap();
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - put: r\n  - task: t\n    {task}\n    on_failure: {{task: notify, {task}}}\n  - put: r\n  - task: u\n    {task}\n    on_failure: {{task: notify, {task}}}\n"
    );
    parse_pipeline(&text, "p.yml", &Vars::new()).unwrap();
    // A repeated `get` name is the one Concourse refuses ("repeated name").
    let text = format!("{R}jobs:\n- name: j\n  plan:\n  - get: r\n  - do:\n    - get: r\n");
    let err = fails_at(
        &text,
        7,
        12,
        &["repeated name", "`get` steps named `r`", "line 5"],
    );
    assert!(hint(&err).contains("resource:"));
    // The same task name in another job is fine.
    let text = format!(
        "{R}jobs:\n- name: a\n  plan:\n  - task: t\n    {task}\n- name: b\n  plan:\n  - task: t\n    {task}\n"
    );
    parse_pipeline(&text, "p.yml", &Vars::new()).unwrap();
}

#[test]
fn outputs_binding_one_artifact() {
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - task: t\n    output_mapping: {{a: out, b: out}}\n    config:\n      platform: linux\n      outputs: [{{name: a}}, {{name: b}}]\n      run: {{path: x}}\n"
    );
    let err = fails_at(&text, 6, 33, &["outputs `a` and `b`", "artifact `out`"]);
    assert!(hint(&err).contains("output_mapping"));
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      outputs: [{{name: a}}, {{name: a}}]\n      run: {{path: x}}\n"
    );
    fails_at(&text, 8, 35, &["output `a`", "twice"]);
}

#[test]
fn invalid_names() {
    let err = fails_at(
        "jobs:\n- name: Build\n  plan: [{get: r}]\n",
        2,
        9,
        &["`Build`", "not a valid name"],
    );
    assert!(hint(&err).contains("lowercase letters, digits"));
    fails_at(
        "resources:\n- {name: 1repo, type: git}\njobs: []\n",
        2,
        10,
        &["`1repo`"],
    );
    let text = format!("{R}jobs:\n- name: j\n  plan:\n  - task: run tests\n    config: {{}}\n");
    fails_at(&text, 5, 11, &["task name", "`run tests`"]);
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - get: r\n  - task: t\n    input_mapping: {{src: R}}\n    file: r/t.yml\n"
    );
    fails_at(&text, 7, 26, &["`R`"]);
}

#[test]
fn undeclared_resources() {
    let text = format!("{R}jobs:\n- name: j\n  plan:\n  - get: repo\n");
    let err = fails_at(&text, 5, 10, &["`get`", "resource `repo`", "not declared"]);
    assert!(hint(&err).contains("resources"));
    let text = format!("{R}jobs:\n- name: j\n  plan:\n  - put: out\n    resource: rr\n");
    let err = fails_at(&text, 6, 15, &["`put`", "resource `rr`"]);
    assert!(hint(&err).contains("did you mean `r`"));
}

#[test]
fn unknown_resource_types() {
    let err = fails_at(
        "resources:\n- name: r\n  type: gti\n  source: {}\njobs: []\n",
        3,
        9,
        &["resource `r`", "unknown type `gti`"],
    );
    assert!(hint(&err).contains("`git`"));
    let err = fails_at(
        "resources:\n- {name: r, type: slack}\njobs: []\n",
        2,
        19,
        &["unknown type `slack`"],
    );
    assert!(hint(&err).contains("resource_types"));
    // Declared types are known, wherever they are declared.
    parse_pipeline(
        "resources:\n- {name: r, type: slack}\nresource_types:\n- {name: slack, type: registry-image, source: {repository: x}}\njobs:\n- name: j\n  plan: [{get: r}]\n",
        "p.yml",
        &Vars::new(),
    )
    .unwrap();
    fails_at(
        "resource_types:\n- {name: t, type: git, source: {uri: x}}\njobs: []\n",
        2,
        19,
        &["resource type `t`", "type `git`"],
    );
    fails_at(
        "resource_types:\n- {name: t, type: registry-image}\njobs: []\n",
        2,
        19,
        &["`source.repository`"],
    );
    fails_at(
        "resource_types:\n- name: t\n  type: local\n  source: {dir: x}\njobs: []\n",
        4,
        11,
        &["`source.path`"],
    );
}

fn task_with_inputs(inputs: &str) -> String {
    format!("config: {{platform: linux, inputs: [{inputs}], run: {{path: x}}}}")
}

#[test]
fn missing_inputs() {
    // Task input nobody produces.
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - get: r\n  - task: t\n    {}\n",
        task_with_inputs("{name: src}")
    );
    let err = fails_at(
        &text,
        7,
        47,
        &["task `t` needs input `src`", "artifact `src`"],
    );
    assert!(hint(&err).contains("`r`"), "{err}");
    // After input_mapping the error points at the mapping.
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - get: r\n  - task: t\n    input_mapping: {{src: nope}}\n    {}\n",
        task_with_inputs("{name: src}")
    );
    fails_at(&text, 7, 26, &["input `src`", "artifact `nope`"]);
    // Mapped to something that exists: fine; optional inputs may be missing.
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - get: r\n  - task: t\n    input_mapping: {{src: r}}\n    {}\n",
        task_with_inputs("{name: src}, {name: extra, optional: true}")
    );
    parse_pipeline(&text, "p.yml", &Vars::new()).unwrap();
    // `put` inputs.
    let text =
        format!("{R}jobs:\n- name: j\n  plan:\n  - get: r\n  - put: s\n    inputs: [r, built]\n");
    fails_at(&text, 7, 17, &["`put: s`", "`built`"]);
    // Task files come from an artifact.
    let text = format!("{R}jobs:\n- name: j\n  plan:\n  - task: t\n    file: repo/ci/t.yml\n");
    fails_at(&text, 6, 11, &["`repo/ci/t.yml`", "artifact `repo`"]);
}

#[test]
fn artifact_flow_through_parallel_do_and_hooks() {
    // in_parallel siblings do not see each other.
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - in_parallel:\n    - get: r\n    - task: t\n      {}\n",
        task_with_inputs("{name: r}")
    );
    let err = fails_at(&text, 8, 49, &["input `r`"]);
    assert!(hint(&err).contains("in_parallel"));
    // ... but the step after the in_parallel sees all of them.
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - in_parallel:\n    - get: r\n    - get: s\n  - task: t\n    {}\n",
        task_with_inputs("{name: r}, {name: s}")
    );
    parse_pipeline(&text, "p.yml", &Vars::new()).unwrap();
    // `do` is sequential.
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - do:\n    - get: r\n    - task: t\n      {}\n",
        task_with_inputs("{name: r}")
    );
    parse_pipeline(&text, "p.yml", &Vars::new()).unwrap();
    // Hooks see the outputs of their step.
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - get: r\n    on_success:\n      put: s\n      inputs: [r]\n  on_failure:\n    put: s\n    inputs: [r, s]\n"
    );
    parse_pipeline(&text, "p.yml", &Vars::new()).unwrap();
    // A hook does not see what a later step produces.
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - get: r\n    ensure:\n      put: s\n      inputs: [later]\n  - get: later\n    resource: r\n"
    );
    fails_at(&text, 8, 16, &["`later`"]);
    // Steps after a task file are not checked (its outputs are unknown).
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - get: r\n  - task: t\n    file: r/t.yml\n  - put: s\n    inputs: [whatever]\n"
    );
    parse_pipeline(&text, "p.yml", &Vars::new()).unwrap();
    // Two parallel steps producing one artifact clash.
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - in_parallel:\n    - get: x\n      resource: r\n    - task: t\n      config: {{platform: linux, outputs: [{{name: x}}], run: {{path: x}}}}\n"
    );
    fails_at(&text, 8, 7, &["artifact `x`", "line 6"]);
}

#[test]
fn attempts_limit_and_timeouts() {
    let base = format!("{R}jobs:\n- name: j\n  plan:\n  - get: r\n");
    fails_at(
        &format!("{base}    attempts: 0\n"),
        6,
        15,
        &["`attempts`", "at least 1"],
    );
    fails_at(
        &format!("{base}    attempts: -2\n"),
        6,
        15,
        &["`attempts`", "whole number", "-2"],
    );
    fails_at(
        &format!("{base}    attempts: many\n"),
        6,
        15,
        &["`attempts`", "whole number"],
    );
    let err = fails_at(
        &format!("{base}    timeout: 10\n"),
        6,
        14,
        &["`timeout`", "missing unit"],
    );
    assert!(hint(&err).contains("1h30m"));
    fails_at(
        &format!("{base}    timeout: 1d\n"),
        6,
        14,
        &["`timeout`", "unknown unit"],
    );
    fails_at(&format!("{base}    timeout: [1s]\n"), 6, 14, &["`timeout`"]);
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - in_parallel:\n      limit: 0\n      steps: [{{get: r}}]\n"
    );
    fails_at(&text, 6, 14, &["`limit`", "at least 1"]);
}

#[test]
fn unfilled_variables() {
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - get: r\n    params: {{branch: ((git.branch))}}\n"
    );
    let err = fails_at(&text, 6, 22, &["variable `git`", "((git.branch))"]);
    assert_eq!(err.unfilled.as_deref(), Some("git"), "{err}");
    assert!(hint(&err).contains("give `git` a value"), "{err}");
    assert!(err.to_string().contains("\n  hint: give `git` a value"));
    assert!(
        !err.to_string().contains("--"),
        "no interface's flags in core: {err}"
    );
}

#[test]
fn step_shapes() {
    let text = format!("{R}jobs:\n- name: j\n  plan:\n  - get: r\n    task: t\n");
    fails_at(&text, 6, 5, &["only one of", "`get` and `task`"]);
    let text = format!("{R}jobs:\n- name: j\n  plan:\n  - attempts: 2\n");
    let err = fails_at(&text, 5, 5, &["no `get`, `put`, `task`"]);
    assert!(hint(&err).contains("`attempts`"));
    let text = format!("{R}jobs:\n- name: j\n  plan:\n  - aggregate: []\n");
    fails_at(&text, 5, 5, &["`aggregate` steps are not supported"]);
    // `try` takes one step, checked as any other.
    let text = format!("{R}jobs:\n- name: j\n  plan:\n  - try:\n    - get: r\n");
    fails_at(&text, 6, 7, &["a step must be a mapping"]);
    let text = format!("{R}jobs:\n- name: j\n  plan:\n  - try:\n      task: t\n");
    fails_at(&text, 6, 7, &["neither `config` nor `file`"]);
    let text = format!("{R}jobs:\n- name: j\n  plan:\n  - task: t\n");
    fails_at(&text, 5, 5, &["neither `config` nor `file`"]);
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - get: r\n  - task: t\n    config: {{}}\n    file: r/x.yml\n"
    );
    fails_at(&text, 8, 5, &["both `config` and `file`"]);
    let text = format!("{R}jobs:\n- name: j\n  plan:\n  - get: r\n  - task: t\n    file: r\n");
    fails_at(&text, 7, 11, &["`file: r`"]);
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - get: r\n  - task: t\n    file: r/../../etc/x.yml\n"
    );
    fails_at(&text, 7, 11, &["leaves the artifact"]);
    let text = format!("{R}jobs:\n- name: j\n  plan:\n  - do: []\n");
    fails_at(&text, 5, 9, &["`do` has no steps"]);
    let text = format!("{R}jobs:\n- name: j\n  plan:\n  - get: r\n    version: newest\n");
    fails_at(&text, 6, 14, &["`version`"]);
    let text = format!("{R}jobs:\n- name: j\n  plan:\n  - get: r\n  - put: s\n    inputs: some\n");
    fails_at(&text, 7, 13, &["`inputs`"]);
}

#[test]
fn passed_names_declared_jobs() {
    let text = format!(
        "{R}jobs:\n- name: build\n  plan: [{{get: r}}]\n- name: deploy\n  plan:\n  - get: r\n    passed: [biuld]\n"
    );
    let err = fails_at(&text, 8, 14, &["`passed`", "job `biuld`"]);
    assert!(hint(&err).contains("`build`"));
}

#[test]
fn task_config_problems() {
    let run = "run: {path: x}";
    let wrap =
        |body: &str| format!("{R}jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n{body}");
    fails_at(
        &wrap(&format!("      platform: windows\n      {run}\n")),
        7,
        17,
        &["platform `windows`"],
    );
    fails_at(
        &wrap(&format!(
            "      platform: linux\n      outputs: [{{name: o, path: /etc}}]\n      {run}\n"
        )),
        8,
        33,
        &["`/etc`", "leaves the working directory"],
    );
    fails_at(
        &wrap(&format!(
            "      platform: linux\n      caches: [{{path: ../x}}]\n      {run}\n"
        )),
        8,
        23,
        &["`../x`"],
    );
    fails_at(
        &wrap(&format!(
            "      platform: linux\n      image_resource: {{type: git, source: {{uri: x}}}}\n      {run}\n"
        )),
        8,
        30,
        &["`image_resource` of type `git`"],
    );
    fails_at(
        &wrap(&format!(
            "      platform: linux\n      image_resource: {{type: registry-image, source: {{tag: x}}}}\n      {run}\n"
        )),
        8,
        54,
        &["`source.repository`"],
    );
    fails_at(
        &wrap(&format!(
            "      platform: linux\n      container_limits: {{memory: lots}}\n      {run}\n"
        )),
        8,
        34,
        &["`memory`"],
    );
    fails_at(
        &wrap(&format!(
            "      platform: linux\n      inputs: [{{name: a}}, {{path: b}}]\n      {run}\n"
        )),
        8,
        27,
        &["a task input", "`name`"],
    );
}

#[test]
fn param_names_must_be_environment_variable_names_on_every_cluster() {
    let task = |params: &str| {
        format!(
            "{R}jobs:\n- name: j\n  plan:\n  - task: t\n    params: {params}\n    config: {{platform: linux, run: {{path: x}}}}\n"
        )
    };
    // Kubernetes 1.29-1.31 refuse these in a pod (422); here they are plan errors.
    for bad in ["1PASSWORD", "a:b", "with space", "é", ".", "..", "..x"] {
        let text = task(&format!("{{{bad:?}: v}}"));
        let err = fails_at(&text, 6, 14, &["`params` name", "environment variable"]);
        assert!(hint(&err).contains("letters"), "{bad}");
    }
    for good in ["API_TOKEN", "_x", "-a.b", "a1", ".a", "a..b"] {
        parse_pipeline(&task(&format!("{{{good}: v}}")), "p.yml", &Vars::new())
            .unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    // In a task config too, with its own position.
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      params: {{9LIVES: v}}\n      run: {{path: x}}\n"
    );
    fails_at(&text, 8, 16, &["`9LIVES`"]);
}

#[test]
fn a_resource_pins_with_a_version_mapping_only() {
    let jobs = "jobs:\n- name: j\n  plan:\n  - get: r\n";
    for bad in ["latest", "every", "\"3\"", "{}", "[a]"] {
        let text = format!("resources:\n- name: r\n  type: mock\n  version: {bad}\n{jobs}");
        let err = fails_at(
            &text,
            4,
            12,
            &["resource `r`: `version` must be a version mapping"],
        );
        assert!(hint(&err).contains("go on a `get`"), "{bad}: {err}");
    }
    let text = format!("resources:\n- name: r\n  type: mock\n  version: {{ref: abc}}\n{jobs}");
    let p = parse_pipeline(&text, "ci/p.yml", &Vars::new()).expect("a pinned resource parses");
    assert_eq!(
        p.resource("r").and_then(|r| r.version.clone()),
        Some(serde_json::json!({"ref": "abc"}))
    );
}

#[test]
fn serial_serial_groups_and_max_in_flight_are_read_and_checked() {
    let job = |extra: &str| format!("{R}jobs:\n- name: j\n{extra}  plan:\n  - get: r\n");
    let p = parse_pipeline(
        &job("  serial: true\n  serial_groups: [deploy, db]\n"),
        "ci/p.yml",
        &Vars::new(),
    )
    .expect("parses");
    let j = p.job("j").expect("job");
    assert_eq!(j.max_in_flight, Some(1));
    assert_eq!(j.serial_groups, ["deploy", "db"]);
    let p = parse_pipeline(&job("  max_in_flight: 3\n"), "ci/p.yml", &Vars::new()).expect("parses");
    assert_eq!(p.job("j").expect("job").max_in_flight, Some(3));
    let p = parse_pipeline(&job(""), "ci/p.yml", &Vars::new()).expect("parses");
    assert_eq!(p.job("j").expect("job").max_in_flight, None);
    fails_at(
        &job("  max_in_flight: 0\n"),
        4,
        18,
        &["`max_in_flight` must be at least 1"],
    );
    fails_at(&job("  serial: yes\n"), 4, 11, &["`serial`"]);
    fails_at(
        &job("  serial: true\n  max_in_flight: 2\n"),
        5,
        3,
        &["`serial: true` runs one build at a time, but `max_in_flight` is 2"],
    );
    fails_at(
        &job("  serial_groups: deploy\n"),
        4,
        18,
        &["`serial_groups`"],
    );
}

#[test]
fn load_var_reads_a_file_of_an_earlier_artifact() {
    let plan = |step: &str| format!("{R}jobs:\n- name: j\n  plan:\n  - get: r\n{step}");
    let p = parse_pipeline(
        &plan("  - load_var: v\n    file: r/meta.json\n    reveal: true\n  - task: t\n    config:\n      platform: linux\n      params: {V: ((.:v.tag))}\n      run: {path: echo, args: [((.:v))]}\n"),
        "ci/p.yml",
        &Vars::new(),
    )
    .expect("parses, local vars left for the run");
    let StepKind::LoadVar(l) = &p.job("j").expect("job").plan[1].kind else {
        panic!("a load_var step");
    };
    assert_eq!(
        (l.name.as_str(), l.artifact.as_str(), l.path.as_str()),
        ("v", "r", "meta.json")
    );
    assert!(l.reveal && l.format.is_none());
    let StepKind::Task(t) = &p.job("j").expect("job").plan[2].kind else {
        panic!("a task");
    };
    let TaskSource::Inline(c) = &t.config else {
        panic!("inline");
    };
    assert_eq!(c.params["V"], "((.:v.tag))");
    assert_eq!(c.run.args, ["((.:v))"]);
    fails_at(
        &plan("  - load_var: v\n    file: nope/x\n"),
        7,
        11,
        &["`load_var: v` reads `nope/x`"],
    );
    fails_at(
        &plan("  - load_var: v\n    file: r\n"),
        7,
        11,
        &["does not name an artifact and a path"],
    );
    fails_at(
        &plan("  - load_var: v\n    file: r/../x\n"),
        7,
        11,
        &["leaves the artifact"],
    );
    fails_at(
        &plan("  - load_var: v\n    file: r/x\n    format: toml\n"),
        8,
        13,
        &["`format: toml` is not a format"],
    );
    fails_at(&plan("  - load_var: v\n"), 6, 5, &["`file`"]);
    fails_at(
        &plan("  - load_var: V\n    file: r/x\n"),
        6,
        15,
        &["not a valid name"],
    );
}

#[test]
fn across_is_checked_and_its_outputs_stay_in_their_iteration() {
    let plan = |steps: &str| format!("{R}jobs:\n- name: j\n  plan:\n{steps}");
    let t = |extra: &str| {
        format!(
            "  - task: t\n{extra}    config:\n      platform: linux\n      outputs: [{{name: out}}]\n      run: {{path: 'true'}}\n"
        )
    };
    let p = parse_pipeline(
        &plan(&t("    across:\n    - var: os\n      values: [linux, darwin]\n      max_in_flight: all\n    - var: v\n      values: ((.:vs))\n    fail_fast: true\n")),
        "ci/p.yml",
        &Vars::new(),
    )
    .expect("parses");
    let a = p.job("j").expect("job").plan[0]
        .across
        .clone()
        .expect("across");
    assert!(a.fail_fast);
    assert_eq!(a.vars[0].var, "os");
    assert_eq!(a.vars[0].max_in_flight, None);
    assert_eq!(a.vars[1].max_in_flight, Some(1), "Concourse's default");
    assert!(matches!(&a.vars[1].values, AcrossValues::Local(s) if s == "((.:vs))"));
    // What an iteration makes is not there afterwards.
    let after = "  - task: u\n    config:\n      platform: linux\n      inputs: [{name: out}]\n      run: {path: 'true'}\n";
    fails_at(
        &plan(&format!(
            "{}{after}",
            t("    across:\n    - var: os\n      values: [a]\n")
        )),
        16,
        23,
        &["needs input `out`, but no earlier step produces artifact `out`"],
    );
    fails_at(
        &plan(&t("    across: []\n")),
        6,
        13,
        &["`across` has no vars"],
    );
    fails_at(
        &plan(&t("    across:\n    - var: os\n      values: linux\n")),
        8,
        15,
        &["must be a list"],
    );
    fails_at(
        &plan(&t("    across:\n    - var: os\n      values: []\n")),
        8,
        15,
        &["has no values"],
    );
    fails_at(
        &plan(&t(
            "    across:\n    - var: os\n      values: [a]\n    - var: os\n      values: [b]\n",
        )),
        9,
        12,
        &["names the var `os` twice"],
    );
    fails_at(
        &plan(&t("    fail_fast: true\n")),
        6,
        5,
        &["`fail_fast` belongs with `across`"],
    );
}

#[test]
fn dummy_var_sources_fill_their_placeholders_and_others_say_what_they_are() {
    let pipeline = |sources: &str, param: &str| {
        format!(
            "var_sources:\n{sources}jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      params: {{V: \"{param}\"}}\n      run: {{path: 'true'}}\n"
        )
    };
    let dummy = "- name: inline\n  type: dummy\n  config:\n    vars: {region: eu-west-1, db: {host: pg, port: 5432}}\n- name: vault\n  type: vault\n  config: {url: https://vault}\n";
    let p = parse_pipeline(
        &pipeline(
            dummy,
            "((inline:region))-((inline:db.host)):((inline:db.port))",
        ),
        "ci/p.yml",
        &Vars::new(),
    )
    .expect("a dummy source fills its vars");
    let StepKind::Task(t) = &p.job("j").expect("job").plan[0].kind else {
        panic!("a task");
    };
    let TaskSource::Inline(c) = &t.config else {
        panic!("inline");
    };
    assert_eq!(c.params["V"], "eu-west-1-pg:5432");
    let err = fails_at(
        &pipeline(dummy, "((vault:token))"),
        15,
        19,
        &[
            "reads the var source `vault` of type `vault` (declared at ci/p.yml:6:3)",
            "only `dummy` var sources are supported",
        ],
    );
    assert!(hint(&err).contains("build var"), "{err}");
    fails_at(
        &pipeline(dummy, "((nope:x))"),
        15,
        19,
        &["the var source `nope`, which is not declared"],
    );
    fails_at(
        &pipeline(dummy, "((inline:missing))"),
        15,
        19,
        &["has no var `missing`"],
    );
    fails_at(
        &pipeline("- name: a\n  type: dummy\n- name: a\n  type: dummy\n", "x"),
        4,
        9,
        &["var source `a` is declared twice"],
    );
    // `validate` sees which placeholders nothing fills.
    let missing = missing_vars(
        &pipeline(dummy, "((inline:region)) ((vault:token)) ((plain))"),
        "ci/p.yml",
        &Vars::new(),
    )
    .expect("yaml");
    let names: Vec<&str> = missing.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["vault:token", "plain"]);
}

#[test]
fn a_task_image_names_an_earlier_artifact() {
    let plan = |steps: &str| format!("{R}jobs:\n- name: j\n  plan:\n{steps}");
    let use_ = "  - task: t\n    image: r\n    config:\n      platform: linux\n      run: {path: 'true'}\n";
    let p = parse_pipeline(
        &plan(&format!("  - get: r\n{use_}")),
        "ci/p.yml",
        &Vars::new(),
    )
    .expect("parses");
    let StepKind::Task(t) = &p.job("j").expect("job").plan[1].kind else {
        panic!("a task");
    };
    assert_eq!(t.image.as_deref(), Some("r"));
    fails_at(&plan(use_), 6, 12, &["task `t` runs in the image `r`"]);
}

#[test]
fn set_pipeline_is_read_and_checked() {
    let plan = |step: &str| format!("{R}jobs:\n- name: j\n  plan:\n  - get: r\n{step}");
    let p = parse_pipeline(
        &plan("  - set_pipeline: self\n    file: r/ci/pipeline.yml\n    var_files: [r/ci/vars.yml]\n    vars: {token: ((t))}\n    instance_vars: {branch: main}\n"),
        "ci/p.yml",
        &Vars::from_assignments(["t=x"]).expect("vars"),
    )
    .expect("parses");
    let job = p.job("j").expect("job");
    let StepKind::SetPipeline(sp) = &job.plan[1].kind else {
        panic!("a set_pipeline step");
    };
    assert_eq!(
        (sp.name.as_str(), sp.artifact.as_str(), sp.path.as_str()),
        ("self", "r", "ci/pipeline.yml")
    );
    assert_eq!(sp.var_files, ["r/ci/vars.yml"]);
    assert_eq!(sp.instance_vars, serde_json::json!({"branch": "main"}));
    assert!(
        !format!("{sp:?}").contains("\"x\""),
        "vars are redacted in Debug"
    );
    assert_eq!(job.steps().len(), 2);
    fails_at(
        &plan("  - set_pipeline: p\n    file: nope/p.yml\n"),
        7,
        11,
        &["`set_pipeline: p` reads `nope/p.yml`"],
    );
    fails_at(
        &plan("  - set_pipeline: Bad\n    file: r/p.yml\n"),
        6,
        19,
        &["pipeline name `Bad`"],
    );
    fails_at(&plan("  - set_pipeline: p\n"), 6, 5, &["`file`"]);
}

#[test]
fn hermetic_is_a_boolean_in_the_model() {
    let task = |v: &str| {
        format!(
            "{R}jobs:\n- name: j\n  plan:\n  - task: t\n    hermetic: {v}\n    config:\n      platform: linux\n      run: {{path: 'true'}}\n"
        )
    };
    let p = parse_pipeline(&task("true"), "ci/p.yml", &Vars::new()).expect("true is accepted");
    let job = p.job("j").expect("job");
    let StepKind::Task(t) = &job.plan[0].kind else {
        panic!("a task");
    };
    assert!(t.hermetic);
    let step = job
        .hermetic_step()
        .expect("the step runners refuse where they must");
    assert_eq!((step.location.line, step.location.column), (5, 5));
    fails_at(&task("[yes]"), 6, 15, &["`hermetic` must be true or false"]);
    let p = parse_pipeline(&task("false"), "ci/p.yml", &Vars::new()).expect("false is accepted");
    let job = p.job("j").expect("job");
    let StepKind::Task(t) = &job.plan[0].kind else {
        panic!("a task");
    };
    assert!(!t.hermetic);
    assert!(job.hermetic_step().is_none(), "nothing to refuse");
}

#[test]
fn a_mock_image_resource_needs_no_repository() {
    let text = format!(
        "{R}jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      image_resource: {{type: mock, source: {{mirror_self: true}}}}\n      run: {{path: 'true'}}\n"
    );
    let p = parse_pipeline(&text, "ci/p.yml", &Vars::new()).expect("a mock image parses");
    let StepKind::Task(t) = &p.job("j").expect("job").plan[0].kind else {
        panic!("a task");
    };
    let TaskSource::Inline(c) = &t.config else {
        panic!("inline");
    };
    assert_eq!(
        c.image_resource.as_ref().map(|i| i.type_.as_str()),
        Some("mock")
    );
}
