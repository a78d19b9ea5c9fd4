//! A database role without grants on the registry's tables: registry calls fail
//! `PermissionDenied`, naming what the server refused (SQLSTATE 42501), not `Other`.
//! (Without `USAGE` on the schema the server answers 42P01, "relation does not exist",
//! as for a database never migrated: that stays `Other`.)

mod common;

use diesel_async::SimpleAsyncConnection;
use jetbridge_core::ErrorKind;
use jetbridge_core::ports::ArtifactRegistry;
use jetbridge_postgres::{PgOptions, PgRegistry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_grants_gets_permission_denied() {
    let Some((_owner, schema, url)) = common::registry(1).await else {
        return;
    };
    let role = format!("{}_noperm", schema.name());
    let mut admin = common::raw(&url, schema.name()).await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{role}\" LOGIN; GRANT USAGE ON SCHEMA \"{s}\" TO \"{role}\"",
            s = schema.name()
        ))
        .await
        .expect("a role that sees the schema but may not use its tables");
    // The same server and database, as that role (trust authentication, as in CI).
    let (scheme, rest) = url.split_once("://").expect("DATABASE_URL is a URL");
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let as_role = format!("{scheme}://{role}@{host}");
    let result = async {
        let registry = PgRegistry::connect(
            &as_role,
            PgOptions {
                pool_size: 1,
                schema: Some(schema.name().to_owned()),
                migrate: false,
                ..PgOptions::default()
            },
        )
        .await?;
        registry.workers().await.map(drop)
    }
    .await;
    admin
        .batch_execute(&format!(
            "REVOKE ALL ON SCHEMA \"{s}\" FROM \"{role}\"; DROP ROLE \"{role}\"",
            s = schema.name()
        ))
        .await
        .expect("drop the role");
    let e = result.expect_err("no grants, no access");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(!e.is_retryable());
    assert!(
        e.message().contains("permission denied for table workers"),
        "{e}"
    );
}
