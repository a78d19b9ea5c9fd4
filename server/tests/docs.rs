//! The metric list in docs/server.md is the one the server exports
//! (`JETBRIDGE_UPDATE_DOCS=1 cargo test -p jetbridge-server --test docs` rewrites it).

use std::path::Path;

use jetbridge_server::metrics::METRICS;

const START: &str = "<!-- metrics:start -->";
const END: &str = "<!-- metrics:end -->";

fn render() -> String {
    let mut out = String::from("| metric | type | what |\n|---|---|---|\n");
    for (name, kind, help) in METRICS {
        out.push_str(&format!("| `{name}` | {kind} | {help} |\n"));
    }
    out
}

#[test]
fn the_metrics_table_in_the_docs_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/server.md");
    let doc = std::fs::read_to_string(&path).expect("docs/server.md");
    let (Some(start), Some(end)) = (doc.find(START), doc.find(END)) else {
        panic!("docs/server.md lacks the markers {START} and {END}");
    };
    let body = start + START.len();
    let wanted = render();
    if doc[body..end].trim_matches('\n') == wanted.trim_matches('\n') {
        return;
    }
    if std::env::var_os("JETBRIDGE_UPDATE_DOCS").is_some() {
        std::fs::write(&path, format!("{}\n{wanted}{}", &doc[..body], &doc[end..]))
            .expect("rewriting docs/server.md");
        return;
    }
    panic!(
        "the metrics table in docs/server.md is stale; regenerate it with \
         `JETBRIDGE_UPDATE_DOCS=1 cargo test -p jetbridge-server --test docs`\n\nwanted:\n{wanted}"
    );
}
