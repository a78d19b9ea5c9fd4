//! `across` values given by a pipeline `((var))`: a list is expanded when the pipeline is
//! read, anything else is refused with the place of the `values:` it fills.

use jetbridge_core::plan::{AcrossValues, Vars, parse_pipeline};
use serde_json::json;

const PIPELINE: &str = "jobs:\n- name: j\n  plan:\n  - task: t\n    across:\n    - var: os\n      values: ((oses))\n      max_in_flight: 2\n    config:\n      platform: linux\n      run: {path: 'true'}\n";

fn with(v: serde_json::Value) -> Vars {
    let mut vars = Vars::new();
    vars.insert("oses", v);
    vars
}

#[test]
fn a_pipeline_var_holding_a_list_gives_the_values() {
    let p =
        parse_pipeline(PIPELINE, "ci/p.yml", &with(json!(["linux", "darwin"]))).expect("parses");
    let a = p.job("j").expect("job").plan[0]
        .across
        .clone()
        .expect("across");
    assert_eq!(
        a.vars[0].values,
        AcrossValues::List(vec![json!("linux"), json!("darwin")])
    );
    assert_eq!(a.vars[0].max_in_flight, Some(2));
}

#[test]
fn a_pipeline_var_holding_anything_else_is_refused_at_its_place() {
    for v in [json!("linux"), json!({"os": "linux"}), json!([])] {
        let err = parse_pipeline(PIPELINE, "ci/p.yml", &with(v.clone())).expect_err("refused");
        assert_eq!(
            (err.location.line, err.location.column),
            (7, 15),
            "{v}: wrong place: {err}"
        );
        assert!(err.to_string().starts_with("ci/p.yml:7:15: "), "{err}");
        assert!(err.message.contains("values"), "{v}: {err}");
    }
}
