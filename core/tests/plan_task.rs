//! Task configs on their own (task files loaded when their step runs).

use jetbridge_core::plan::*;
use serde_json::json;
use std::collections::BTreeMap;

const TASK: &str = "\
platform: linux
image_resource:
  type: registry-image
  source: {repository: ((image)), tag: ((tag))}
inputs:
- name: repo
outputs:
- name: out
params:
  LEVEL: ((level))
  EMPTY:
  LIST: [1, two]
  OCTAL: 0755
  FLAG: on
run:
  path: repo/ci/run.sh
  args: [((mode))]
container_limits: {cpu: \"250m\", memory: 512MB}
";

#[test]
fn task_file_with_step_vars() {
    let mut pipeline_vars = Vars::new();
    pipeline_vars
        .insert("image", json!("golang"))
        .insert("tag", json!("old"));
    let step_vars = BTreeMap::from([
        ("tag".to_owned(), json!("1.22")),
        ("level".to_owned(), json!(3)),
        ("mode".to_owned(), json!("fast")),
    ]);
    let vars = pipeline_vars.overlay(&step_vars);
    let c = parse_task_config(TASK, "repo/ci/test.yml", &vars).unwrap();
    assert_eq!(
        c.image_resource.unwrap().image_ref().unwrap(),
        "golang:1.22"
    );
    assert_eq!(c.inputs[0].name, "repo");
    assert_eq!(c.outputs[0].path, "out");
    assert_eq!(c.params["LEVEL"], "3");
    assert_eq!(c.params["EMPTY"], "");
    assert_eq!(c.params["LIST"], r#"[1,"two"]"#);
    assert_eq!(c.params["OCTAL"], "0755");
    assert_eq!(c.params["FLAG"], "on");
    assert_eq!(c.run.args, vec!["fast"]);
    assert_eq!(c.container_limits.cpu_millis, Some(250));
    assert_eq!(c.container_limits.memory_bytes, Some(512 << 20));
    assert_eq!(c.location.file, "repo/ci/test.yml");
    assert_eq!((c.location.line, c.location.column), (1, 1));

    // Without the step's vars, the first unfilled one is reported in the task file.
    let err = parse_task_config(TASK, "repo/ci/test.yml", &pipeline_vars).unwrap_err();
    assert_eq!(err.location.file, "repo/ci/test.yml");
    assert_eq!((err.location.line, err.location.column), (10, 10));
    assert!(err.message.contains("`level`"), "{err}");
    assert_eq!(err.unfilled.as_deref(), Some("level"));
    assert!(err.hint.unwrap().contains("`level`"));
}

#[test]
fn task_file_errors_name_the_file() {
    let err = parse_task_config(
        "platform: linux\nrun: {path: x}\nimage: foo\n",
        "r/t.yml",
        &Vars::new(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string().lines().next().unwrap(),
        "r/t.yml:3:1: unknown key `image` in the task config"
    );
    let err = parse_task_config("run: {path: x}\n", "r/t.yml", &Vars::new()).unwrap_err();
    assert_eq!((err.location.line, err.location.column), (1, 1));
    assert!(err.message.contains("`platform`"));
    let err = parse_task_config(
        "platform: linux\nrun: {path: \"\"}\n",
        "r/t.yml",
        &Vars::new(),
    )
    .unwrap_err();
    assert_eq!((err.location.line, err.location.column), (2, 13));
    assert!(err.message.contains("`run.path` is empty"));
    let err = parse_task_config(
        "platform: linux\nrun: {path: x}\ncontainer_limits: {cpu: -1}\n",
        "r/t.yml",
        &Vars::new(),
    )
    .unwrap_err();
    assert_eq!((err.location.line, err.location.column), (3, 25));
    assert!(err.message.contains("`cpu`"));
    let err = parse_task_config(
        "platform: linux\nrun: {path: x, dir: /abs}\n",
        "r/t.yml",
        &Vars::new(),
    )
    .unwrap_err();
    assert!(err.message.contains("`run.dir`"), "{err}");
}

#[test]
fn limits_units() {
    let limits = |cpu: &str, mem: &str| {
        let text = format!(
            "platform: linux\nrun: {{path: x}}\ncontainer_limits: {{cpu: {cpu}, memory: {mem}}}\n"
        );
        parse_task_config(&text, "t.yml", &Vars::new()).map(|c| c.container_limits)
    };
    let l = limits("1024", "1048576").unwrap();
    assert_eq!((l.cpu_millis, l.memory_bytes), (Some(1000), Some(1 << 20)));
    let l = limits("1", "2Gi").unwrap();
    assert_eq!((l.cpu_millis, l.memory_bytes), (Some(1), Some(2 << 30)));
    let l = limits("\"1500m\"", "\"64 kb\"").unwrap();
    assert_eq!((l.cpu_millis, l.memory_bytes), (Some(1500), Some(64 << 10)));
    assert!(limits("x", "1").is_err());
    assert!(limits("1", "1PB").is_err());
    assert!(limits("1", "99999999999999999999G").is_err());
}

#[test]
fn yaml_anchors_and_merges_keep_locations() {
    let text = "\
run_defaults: &run {path: sh}
";
    // Unknown top-level keys are still errors, even when used as anchor holders.
    let err = parse_task_config(text, "t.yml", &Vars::new()).unwrap_err();
    assert!(err.message.contains("unknown key `run_defaults`"));

    let text = "\
platform: linux
params: &p {A: 1}
inputs:
- &in {name: a}
- {<<: *in, name: b, path: bb}
run: {path: sh, args: [*p]}
";
    let err = parse_task_config(text, "t.yml", &Vars::new()).unwrap_err();
    // args must be strings; the alias of a mapping is reported where it is used.
    assert_eq!((err.location.line, err.location.column), (6, 24), "{err}");
    let ok = text.replace("args: [*p]", "args: [x]");
    let c = parse_task_config(&ok, "t.yml", &Vars::new()).unwrap();
    assert_eq!(c.inputs[1].name, "b");
    assert_eq!(c.inputs[1].path, "bb");
    assert_eq!(c.params["A"], "1");
}
