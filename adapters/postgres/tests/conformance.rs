//! The registry conformance suite against a real server (`DATABASE_URL`), each case in its
//! own schema, dropped afterwards.

use std::sync::Arc;

use jetbridge_conformance::Subject;
use jetbridge_core::ports::ArtifactRegistry;
use jetbridge_postgres::scratch::ScratchSchema;
use jetbridge_postgres::{PgOptions, PgRegistry};

async fn make_registry() -> Option<Subject<dyn ArtifactRegistry>> {
    let Some(url) = std::env::var("DATABASE_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
    else {
        jetbridge_conformance::live::unavailable("POSTGRES", "DATABASE_URL is not set");
        return None;
    };
    let schema = ScratchSchema::new(&url, "jb_test").expect("a scratch schema name");
    let registry = PgRegistry::connect(
        &url,
        PgOptions {
            pool_size: 4,
            schema: Some(schema.name().to_owned()),
            ..PgOptions::default()
        },
    )
    .await
    .expect("connect to DATABASE_URL");
    let port: Arc<dyn ArtifactRegistry> = Arc::new(registry);
    Some(Subject::new(port).with_guard(schema))
}

jetbridge_conformance::registry_suite!(make_registry);
