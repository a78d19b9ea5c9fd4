//! ArtifactRegistry on Postgres with diesel-async.
