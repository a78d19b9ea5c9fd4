//! The built-in mix: small pipelines, each a kind of build a CI server meets, each with
//! the end it expects. A build that fails on purpose and fails that way is an expected
//! outcome; one that ends any other way is not.

use jetbridge_server::api::BuildView;
use serde::Serialize;

/// How a build is expected to end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expect {
    /// `succeeded`, `failed`, `errored` or `aborted`.
    pub state: String,
    /// The failure class of the step that failed (`failed`, `timed-out`, ...).
    pub class: Option<String>,
    /// The attempts of the step that failed.
    pub attempts: Option<u32>,
}

impl Expect {
    /// Expect `state`, nothing more.
    pub fn state(state: &str) -> Self {
        Expect {
            state: state.to_owned(),
            class: None,
            attempts: None,
        }
    }

    fn failed(class: &str) -> Self {
        Expect {
            class: Some(class.to_owned()),
            ..Expect::state("failed")
        }
    }

    /// `None` when `b` ended as expected; otherwise what differs.
    pub fn check(&self, b: &BuildView) -> Option<String> {
        if b.state != self.state {
            let why = b.reason.as_deref().unwrap_or("no reason given");
            return Some(format!(
                "ended {} ({why}), expected {}",
                b.state, self.state
            ));
        }
        let failed = b.outcome.as_ref().and_then(|o| {
            let name = o.failed_step.as_ref()?;
            o.steps.iter().rev().find(|s| &s.name == name)
        });
        if let Some(class) = &self.class {
            let got = failed.and_then(|s| s.failure_class.as_deref());
            if got != Some(class.as_str()) {
                return Some(format!(
                    "its failed step's class is {}, expected {class}",
                    got.unwrap_or("none")
                ));
            }
        }
        if let Some(n) = self.attempts {
            let got = failed.map(|s| s.attempts);
            if got != Some(n) {
                return Some(format!(
                    "its failed step made {} attempt(s), expected {n}",
                    got.map_or("no".to_owned(), |a| a.to_string())
                ));
            }
        }
        None
    }
}

/// One kind of build the harness submits.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its name (the pipeline's, in reports).
    pub name: String,
    /// The submission's body (as `jetbridge submit` sends it).
    pub body: serde_json::Value,
    /// How it must end.
    pub expect: Expect,
    /// Abort it once its first step has started.
    pub abort: bool,
}

/// The mix, its tasks in `image` (`REPO[:TAG]`), its large artifact of `large_mib` MiB.
pub fn builtin(image: &str, large_mib: u64) -> Vec<Entry> {
    let (repo, tag) = split_image(image);
    let img = match tag {
        Some(t) => format!(
            "{{type: registry-image, source: {{repository: {}, tag: {}}}}}",
            json(repo),
            json(t)
        ),
        None => format!(
            "{{type: registry-image, source: {{repository: {}}}}}",
            json(repo)
        ),
    };
    let task = |name: &str, inputs: &[&str], outputs: &[&str], script: &str| {
        let list = |v: &[&str]| {
            v.iter()
                .map(|n| format!("{{name: {n}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "task: {name}\n    config:\n      platform: linux\n      image_resource: {img}\n      inputs: [{}]\n      outputs: [{}]\n      run: {{path: sh, args: [-c, {}]}}",
            list(inputs),
            list(outputs),
            json(script)
        )
    };
    let mut out = Vec::new();
    let mut add = |name: &str, yaml: String, expect: Expect, abort: bool| {
        out.push(Entry {
            name: name.to_owned(),
            body: serde_json::json!({
                "pipeline": yaml,
                "file": format!("{name}.yml"),
                "job": name,
                "vars": {},
                "inputs": {},
            }),
            expect,
            abort,
        });
    };
    add(
        "load-get-task-put",
        format!(
            "resources:\n- name: src\n  type: mock\n  source: {{create_files: {{input.txt: hello from the load harness}}}}\n- name: sink\n  type: mock\n  source: {{no_initial_version: true}}\njobs:\n- name: load-get-task-put\n  plan:\n  - get: src\n  - {}\n  - put: sink\n    params: {{file: out/version}}\n",
            task(
                "transform",
                &["src"],
                &["out"],
                "tr a-z A-Z < src/input.txt > out/version && cat out/version"
            )
        ),
        Expect::state("succeeded"),
        false,
    );
    add(
        "load-fan-out",
        format!(
            "jobs:\n- name: load-fan-out\n  plan:\n  - in_parallel:\n      steps:\n      - {}\n      - {}\n      - {}\n      - {}\n  - {}\n",
            task("a", &[], &["a"], "echo a > a/part").replace("\n", "\n    "),
            task("b", &[], &["b"], "echo b > b/part").replace("\n", "\n    "),
            task("c", &[], &["c"], "echo c > c/part").replace("\n", "\n    "),
            task("d", &[], &["d"], "echo d > d/part").replace("\n", "\n    "),
            task(
                "join",
                &["a", "b", "c", "d"],
                &[],
                "test \"$(cat a/part b/part c/part d/part | tr -d '\\n')\" = abcd"
            )
        ),
        Expect::state("succeeded"),
        false,
    );
    add(
        "load-large-artifact",
        format!(
            "jobs:\n- name: load-large-artifact\n  plan:\n  - {}\n  - {}\n",
            task(
                "write",
                &[],
                &["big"],
                &format!(
                    "head -c {} /dev/urandom > big/blob && cp big/blob big/copy",
                    large_mib * 1024 * 1024 / 2
                )
            ),
            task(
                "read",
                &["big"],
                &[],
                &format!(
                    "test $(wc -c < big/blob) -eq {} && cmp big/blob big/copy",
                    large_mib * 1024 * 1024 / 2
                )
            )
        ),
        Expect::state("succeeded"),
        false,
    );
    add(
        "load-many-small-files",
        format!(
            "jobs:\n- name: load-many-small-files\n  plan:\n  - {}\n  - {}\n",
            task(
                "write",
                &[],
                &["tree"],
                "for d in 0 1 2 3 4 5 6 7 8 9; do mkdir -p tree/$d; for f in 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49; do echo $d$f > tree/$d/$f; done; done"
            ),
            task(
                "count",
                &["tree"],
                &[],
                "n=$(find tree/ -type f | wc -l); echo \"$n files\"; test \"$n\" -eq 500"
            )
        ),
        Expect::state("succeeded"),
        false,
    );
    add(
        "load-cache",
        format!(
            "jobs:\n- name: load-cache\n  plan:\n  - {}\n",
            task(
                "cached",
                &[],
                &[],
                "n=$(cat cache/runs 2>/dev/null || echo 0); echo $((n + 1)) > cache/runs; cat cache/runs"
            )
            .replace(
                "      run:",
                "      caches: [{path: cache}]\n      run:"
            )
        ),
        Expect::state("succeeded"),
        false,
    );
    add(
        "load-fails",
        format!(
            "jobs:\n- name: load-fails\n  plan:\n  - {}\n",
            task("tests", &[], &[], "echo '1 passed, 1 failed' >&2; exit 3")
        ),
        Expect::failed("failed"),
        false,
    );
    add(
        "load-times-out",
        format!(
            "jobs:\n- name: load-times-out\n  plan:\n  - {}\n    timeout: 2s\n",
            task("slow", &[], &[], "sleep 60")
        ),
        Expect::failed("timed-out"),
        false,
    );
    add(
        "load-aborted",
        format!(
            "jobs:\n- name: load-aborted\n  plan:\n  - {}\n    on_abort:\n      {}\n",
            task("long", &[], &[], "echo started; sleep 120"),
            task("cleanup", &[], &[], "echo cleaning up").replace("\n", "\n  ")
        ),
        Expect::state("aborted"),
        true,
    );
    add(
        "load-retries",
        format!(
            "jobs:\n- name: load-retries\n  plan:\n  - {}\n    attempts: 3\n",
            task("flaky", &[], &[], "echo attempt failed; exit 1")
        ),
        Expect {
            attempts: Some(3),
            ..Expect::failed("failed")
        },
        false,
    );
    out
}

/// `REPO[:TAG]`, a port in the registry's host not taken for a tag.
fn split_image(image: &str) -> (&str, Option<&str>) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') && !repo.is_empty() => (repo, Some(tag)),
        _ => (image, None),
    }
}

fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_parses_and_names_its_job() {
        let mix = builtin("registry.example:5000/busybox:1.36", 1);
        assert_eq!(mix.len(), 9);
        for e in &mix {
            let text = e.body["pipeline"].as_str().unwrap();
            let p = jetbridge_core::plan::parse_pipeline(
                text,
                e.body["file"].as_str().unwrap(),
                &jetbridge_core::plan::Vars::new(),
            )
            .unwrap_or_else(|err| panic!("{}: {err}\n{text}", e.name));
            assert_eq!(p.name, e.name);
            assert!(p.job(&e.name).is_some(), "{}", e.name);
            assert!(text.contains("repository: \"registry.example:5000/busybox\", tag: \"1.36\""));
        }
        assert_eq!(mix.iter().filter(|e| e.abort).count(), 1);
        assert_eq!(
            mix.iter().filter(|e| e.expect.state != "succeeded").count(),
            4
        );
    }

    #[test]
    fn images_split_at_the_tag_not_at_a_registry_port() {
        assert_eq!(split_image("busybox:1.36"), ("busybox", Some("1.36")));
        assert_eq!(split_image("busybox"), ("busybox", None));
        assert_eq!(split_image("reg:5000/busybox"), ("reg:5000/busybox", None));
    }
}
