//! Property tests: the parsers never panic, and generated valid pipelines keep their
//! step names and structure.

use jetbridge_core::plan::*;
use proptest::prelude::*;
use serde_json::{Value, json};

/// Keys the parser knows, so random documents reach deep into it.
const KEYS: &[&str] = &[
    "resources",
    "resource_types",
    "jobs",
    "name",
    "type",
    "source",
    "plan",
    "get",
    "put",
    "task",
    "in_parallel",
    "do",
    "steps",
    "limit",
    "fail_fast",
    "config",
    "file",
    "params",
    "inputs",
    "outputs",
    "caches",
    "path",
    "optional",
    "run",
    "args",
    "platform",
    "image_resource",
    "repository",
    "attempts",
    "timeout",
    "on_success",
    "on_failure",
    "ensure",
    "input_mapping",
    "output_mapping",
    "passed",
    "version",
    "vars",
    "no_get",
    "container_limits",
    "cpu",
    "memory",
    "defaults",
    "tag",
];

const WORDS: &[&str] = &[
    "r",
    "git",
    "mock",
    "linux",
    "local",
    "registry-image",
    "all",
    "detect",
    "every",
    "1h",
    "90s",
    "0",
    "-1",
    "((v))",
    "((v.x))",
    "a/b.yml",
    "true",
    "512MB",
    "250m",
    "",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        prop::sample::select(WORDS).prop_map(|w| json!(w)),
        "[a-z(). /-]{0,12}".prop_map(Value::String),
    ]
}

fn yamlish() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..5).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

fn vars() -> Vars {
    let mut v = Vars::new();
    v.insert("v", json!({"x": [1, 2]}));
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn never_panics_on_text(text in "\\PC{0,200}") {
        let _ = parse_pipeline(&text, "p.yml", &vars());
        let _ = parse_task_config(&text, "t.yml", &vars());
    }

    #[test]
    fn never_panics_on_yamlish_text(text in "[-a-z:{}\\[\\],&*!|>'\"#() \n]{0,200}") {
        for result in [
            parse_pipeline(&text, "p.yml", &vars()).map(|_| ()),
            parse_task_config(&text, "t.yml", &vars()).map(|_| ()),
        ] {
            if let Err(e) = result {
                prop_assert!(e.location.line >= 1 && e.location.column >= 1, "{}", e);
                prop_assert!(!e.message.is_empty());
            }
        }
    }

    #[test]
    fn never_panics_on_structures(doc in yamlish()) {
        let text = serde_saphyr::to_string(&doc).unwrap();
        for (file, result) in [
            ("p.yml", parse_pipeline(&text, "p.yml", &vars()).map(|_| ())),
            ("t.yml", parse_task_config(&text, "t.yml", &vars()).map(|_| ())),
        ] {
            if let Err(e) = result {
                prop_assert_eq!(e.location.file.as_str(), file);
                prop_assert!(e.location.line >= 1 && e.location.column >= 1, "{}", e);
            }
        }
    }

    #[test]
    fn durations_never_panic(text in "[0-9.hmsun+-]{0,20}") {
        let _ = parse_duration(&text);
    }

    #[test]
    fn durations_round_trip(h in 0u64..1000, m in 0u64..60, s in 0u64..60, ms in 0u64..1000) {
        let text = format!("{h}h{m}m{s}s{ms}ms");
        let d = parse_duration(&text).unwrap();
        prop_assert_eq!(d.as_millis(), u128::from(((h * 60 + m) * 60 + s) * 1000 + ms));
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    for text in [
        "[".repeat(100_000),
        format!("{}x", "- ".repeat(20_000)),
        format!("jobs: {}{}", "[".repeat(5_000), "]".repeat(5_000)),
        (0..2_000)
            .map(|i| format!("{}a:\n", " ".repeat(i)))
            .collect(),
    ] {
        let err = parse_pipeline(&text, "deep.yml", &Vars::new()).unwrap_err();
        assert!(err.location.line >= 1, "{err}");
        assert!(
            err.message.contains("nest") || err.message.contains("recursion limit"),
            "{err}"
        );
        assert!(
            err.hint.as_deref().unwrap_or_default().contains("flatten"),
            "{err}"
        );
    }
}

/// A generated step tree (names are assigned afterwards so they are unique).
#[derive(Debug, Clone)]
enum Gen {
    Get,
    Task,
    Par(Vec<Gen>),
    Do(Vec<Gen>),
}

fn gen_step() -> impl Strategy<Value = Gen> {
    prop_oneof![Just(Gen::Get), Just(Gen::Task)].prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(Gen::Par),
            prop::collection::vec(inner, 1..4).prop_map(Gen::Do),
        ]
    })
}

/// Render `g` as a YAML list item at `indent`, naming steps `{prefix}{n}`; the names
/// in document order go to `names`.
fn render(g: &Gen, indent: usize, prefix: &str, names: &mut Vec<String>, out: &mut String) {
    let pad = " ".repeat(indent);
    match g {
        Gen::Get => {
            let name = format!("{prefix}{}", names.len());
            out.push_str(&format!("{pad}- get: {name}\n{pad}  resource: r\n"));
            names.push(name);
        }
        Gen::Task => {
            let name = format!("{prefix}{}", names.len());
            out.push_str(&format!(
                "{pad}- task: {name}\n{pad}  config: {{platform: linux, run: {{path: x}}}}\n"
            ));
            names.push(name);
        }
        Gen::Par(steps) => {
            out.push_str(&format!("{pad}- in_parallel:\n"));
            for s in steps {
                render(s, indent + 4, prefix, names, out);
            }
        }
        Gen::Do(steps) => {
            out.push_str(&format!("{pad}- do:\n"));
            for s in steps {
                render(s, indent + 4, prefix, names, out);
            }
        }
    }
}

fn collect(step: &Step, names: &mut Vec<String>) {
    match &step.kind {
        StepKind::Get(g) => names.push(g.name.clone()),
        StepKind::Put(p) => names.push(p.name.clone()),
        StepKind::Task(t) => names.push(t.name.clone()),
        StepKind::InParallel(p) => p.steps.iter().for_each(|s| collect(s, names)),
        StepKind::Do(steps) => steps.iter().for_each(|s| collect(s, names)),
        StepKind::Try(s) => collect(s, names),
        StepKind::LoadVar(_) | StepKind::SetPipeline(_) => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn generated_pipelines_round_trip(
        jobs in prop::collection::vec(
            ("[a-z][a-z0-9_-]{0,6}", prop::collection::vec(gen_step(), 1..5)),
            1..4,
        ),
        prefix in "[a-z][a-z0-9.-]{0,5}",
    ) {
        let mut text = String::from("resources:\n- name: r\n  type: mock\njobs:\n");
        let mut expected = Vec::new();
        for (i, (job, steps)) in jobs.iter().enumerate() {
            let job_name = format!("{job}-{i}");
            text.push_str(&format!("- name: {job_name}\n  plan:\n"));
            let mut names = Vec::new();
            for s in steps {
                render(s, 2, &format!("{prefix}-"), &mut names, &mut text);
            }
            expected.push((job_name, names));
        }
        let p = parse_pipeline(&text, "gen.yml", &Vars::new())
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(p.jobs.len(), expected.len());
        for (job, (name, names)) in p.jobs.iter().zip(&expected) {
            prop_assert_eq!(&job.name, name);
            let mut got = Vec::new();
            job.plan.iter().for_each(|s| collect(s, &mut got));
            prop_assert_eq!(&got, names);
        }
    }
}
