//! Stores made by every earlier schema open with this binary, every row kept with its
//! meaning and the schema made the same as a new store's; a store of a later schema is
//! refused and left as it was.
//!
//! `testdata/store/vN.sql` is a store as schema N made it: its CREATE statements as
//! that version ran them, then rows as it wrote them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use warren_core::store::{EventRow, SessionRow, SCHEMA_VERSION};
use warren_core::tokens::{sha256_hex, TokenRef};
use warren_core::{Record, Store, StoreError};
use warren_types::api::{SandboxState, SessionTimeouts, SshKey, TimeoutAction};
use warren_types::egress::Egress;
use warren_types::spec::{Isolation, NetworkMode, PortMap, Resources, SandboxSpec, VolumeMount};

const T: i64 = 1_764_000_000_000;

fn fixture(version: u32) -> String {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/testdata/store/v{version}.sql"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A store file made from `sql`, as the version that wrote it left it.
fn store_from(dir: &Path, sql: &str) -> PathBuf {
    let path = dir.join("warren.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(sql).unwrap();
    path
}

/// The schema of the store at `path`, in a form that does not depend on how it got
/// there: a column added by `ALTER TABLE` comes last and keeps no comment, so tables
/// are compared column by column (sorted), indexes by their statement.
fn schema_of(path: &Path) -> (u32, Vec<String>) {
    let conn = Connection::open(path).unwrap();
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    let mut out = Vec::new();
    let objects: Vec<(String, String, String, Option<String>)> = conn
        .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (kind, name, table, sql) in objects {
        match kind.as_str() {
            "table" => {
                let mut columns: Vec<String> = conn
                    .prepare(
                        "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1)",
                    )
                    .unwrap()
                    .query_map([&name], |r| {
                        Ok(format!(
                            "{name}.{} {} notnull={} default={:?} pk={}",
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    })
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                columns.sort();
                out.push(format!("table {name}"));
                out.extend(columns);
                let references: Vec<String> = conn
                    .prepare("SELECT \"from\", \"table\", \"to\" FROM pragma_foreign_key_list(?1)")
                    .unwrap()
                    .query_map([&name], |r| {
                        Ok(format!(
                            "{name}.{} references {}({:?})",
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<String>>(2)?
                        ))
                    })
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                out.extend(references);
            }
            _ => {
                // Automatic indexes (a primary key's) have no statement: their table's
                // columns say what they are.
                let sql = sql
                    .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                out.push(format!("{kind} {name} on {table}: {sql}"));
            }
        }
    }
    (version, out)
}

fn spec_min(id: &str, version: u32, isolation: Isolation) -> SandboxSpec {
    SandboxSpec {
        id: id.into(),
        template: "base".into(),
        // The field came with schema 7 in these stores; before it, the default.
        isolation: if version >= 7 {
            isolation
        } else {
            Isolation::Namespace
        },
        ..Default::default()
    }
}

fn token(version: u32, id: &str, plain: &str, derived: u32) -> TokenRef {
    match (version, id) {
        // Plain tokens of schema 4 and before are kept only as their hashes; a store
        // that later binaries had already rewritten so keeps the hash as it is.
        (..=4, _) | (_, "sb-paused") => TokenRef::Legacy(sha256_hex(plain)),
        _ => TokenRef::Derived(derived),
    }
}

/// The sandboxes of `testdata/store/v{version}.sql`, as the current code must read them.
fn expected_sandboxes(version: u32) -> Vec<Record> {
    let live = Record {
        id: "sb-live".into(),
        tenant: "default".into(),
        owner: "alice".into(),
        name: Some("lab".into()),
        state: SandboxState::Running,
        spec: SandboxSpec {
            id: "sb-live".into(),
            template: "python".into(),
            hostname: Some("lab".into()),
            resources: Resources {
                memory: Some(512 << 20),
                cpu_millis: Some(500),
                pids: Some(256),
                disk: None,
            },
            network: NetworkMode::Nat,
            publish: vec![PortMap {
                host: 8080,
                sandbox: 80,
            }],
            volumes: vec![VolumeMount {
                name: "data".into(),
                target: "/data".into(),
                size: Some(1 << 30),
            }],
            mounts: Vec::new(),
            env: BTreeMap::from([("LANG".into(), "C.UTF-8".into())]),
            isolation: Isolation::Namespace,
            egress: if version >= 8 {
                Egress {
                    allow: vec!["pypi.org".into()],
                    deny: vec!["10.0.0.0/8".into()],
                    dns: None,
                }
            } else {
                Egress::default()
            },
        },
        labels: BTreeMap::from([("team".into(), "a".into())]),
        metadata: BTreeMap::from([("purpose".into(), "ci".into())]),
        created_at: T + 10,
        last_active_at: T + 20,
        expires_at: Some(T + 3_600_000),
        idle_timeout_secs: Some(600),
        on_timeout: TimeoutAction::Pause,
        access: token(
            version,
            "sb-live",
            "5f1c0a9e7b3d4c2a8e6f1b0d9c7a5e3f2b4d6c8a0e1f3b5d",
            7,
        ),
        traffic: match version {
            ..=3 => None,
            4 => Some(TokenRef::Legacy(sha256_hex(
                "7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f",
            ))),
            _ => Some(TokenRef::Derived(8)),
        },
        auto_resume: false,
        request_host: (version >= 7).then(|| "app-${PORT}.example.test".into()),
    };
    let plain = |id: &str, state, tenant: &str, owner: &str, n: i64, action| Record {
        id: id.into(),
        tenant: tenant.into(),
        owner: owner.into(),
        name: None,
        state,
        spec: spec_min(id, version, Isolation::Namespace),
        labels: BTreeMap::new(),
        metadata: BTreeMap::new(),
        created_at: T + n,
        last_active_at: T + n + 10,
        expires_at: None,
        idle_timeout_secs: None,
        on_timeout: action,
        access: TokenRef::Derived(0),
        traffic: None,
        auto_resume: false,
        request_host: None,
    };
    let paused = Record {
        spec: spec_min("sb-paused", version, Isolation::Gvisor),
        access: token(
            version,
            "sb-paused",
            "c3e5a7b9d1f2e4c6a8b0d2f4e6c8a0b2d4f6e8c0a2b4d6f8",
            0,
        ),
        // Before schema 6 there was no auto-resume: the default, off.
        auto_resume: version >= 6,
        ..plain(
            "sb-paused",
            SandboxState::Paused,
            "acme",
            "bob",
            30,
            TimeoutAction::Terminate,
        )
    };
    let gone = Record {
        idle_timeout_secs: Some(300),
        access: token(
            version,
            "sb-gone",
            "0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f",
            2,
        ),
        ..plain(
            "sb-gone",
            SandboxState::Terminated,
            "default",
            "alice",
            50,
            TimeoutAction::Stop,
        )
    };
    let stopped = Record {
        name: Some("old".into()),
        labels: BTreeMap::from([("keep".into(), "yes".into())]),
        access: token(
            version,
            "sb-stopped",
            "9f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c6b5a49382",
            3,
        ),
        ..plain(
            "sb-stopped",
            SandboxState::Stopped,
            "default",
            "alice",
            70,
            TimeoutAction::Stop,
        )
    };
    let mut all = vec![live, paused, gone, stopped];
    if version >= 2 {
        all.push(Record {
            last_active_at: T + 90,
            access: token(
                version,
                "sb-warm",
                "1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e",
                1,
            ),
            ..plain(
                "sb-warm",
                SandboxState::Running,
                "@pool",
                "@pool",
                90,
                TimeoutAction::Terminate,
            )
        });
    }
    all
}

fn pool_key(version: u32) -> String {
    let isolation = if version >= 7 {
        r#","isolation":"namespace""#
    } else {
        ""
    };
    format!(
        r#"{{"template":"base","resources":{{"memory":268435456,"cpu_millis":null,"pids":null,"disk":null}},"network":"none"{isolation}}}"#
    )
}

fn check_rows(store: &Store, version: u32) {
    for want in expected_sandboxes(version) {
        assert_eq!(
            store.get(&want.id).unwrap().as_ref(),
            Some(&want),
            "schema {version}: {}",
            want.id
        );
    }
    let live: Vec<String> = store
        .list_live(None)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    let mut want_live = vec!["sb-live", "sb-paused", "sb-stopped"];
    if version >= 2 {
        want_live.push("sb-warm");
    }
    assert_eq!(live, want_live, "schema {version}");
    // Names stay unique among live sandboxes, and a terminated one gave its up.
    assert_eq!(
        store
            .by_name("default", "alice", "lab")
            .unwrap()
            .unwrap()
            .id,
        "sb-live"
    );
    let mut clash = expected_sandboxes(version).remove(0);
    clash.id = "sb-clash".into();
    assert!(matches!(
        store.insert(&clash),
        Err(StoreError::NameTaken(_))
    ));
    if version >= 2 {
        let members = store.pool_members(&pool_key(version)).unwrap();
        assert_eq!(
            members,
            [("sb-warm".to_string(), T + 90)],
            "schema {version}"
        );
    }

    assert_eq!(
        store.tenant_of_key(&"a".repeat(64)).unwrap(),
        Some(("default".into(), false))
    );
    assert_eq!(
        store.tenant_of_key(&"b".repeat(64)).unwrap(),
        Some(("acme".into(), false))
    );
    assert_eq!(
        store.tenant_of_key(&"c".repeat(64)).unwrap(),
        (version >= 5).then(|| ("default".into(), true)),
        "schema {version}"
    );

    let event = |time, sandbox: &str, kind: &str, message: &str| EventRow {
        time,
        sandbox: sandbox.into(),
        owner: "alice".into(),
        kind: kind.into(),
        message: message.into(),
    };
    assert_eq!(
        store.events_of("sb-live", 10).unwrap(),
        [
            event(T + 10, "sb-live", "created", "created from python"),
            event(T + 15, "sb-live", "paused", "idle for 600s"),
            event(T + 16, "sb-live", "resumed", "exec"),
        ]
    );
    assert_eq!(
        store.events_of("sb-gone", 10).unwrap(),
        [event(T + 60, "sb-gone", "terminated", "removed")]
    );

    let sessions = store.live_sessions(None).unwrap();
    if version >= 3 {
        assert_eq!(
            sessions,
            [SessionRow {
                id: "ses-live".into(),
                tenant: "default".into(),
                client: "laptop".into(),
                sandbox: "sb-live".into(),
                state: "detached".into(),
                timeouts: SessionTimeouts {
                    active_secs: 300,
                    detached_secs: 3600,
                    suspended_secs: 86_400,
                },
                created_at: T + 100,
                last_seen_at: T + 200,
                since: T + 150,
            }]
        );
    } else {
        assert!(sessions.is_empty());
    }

    let alice = store.ssh_keys("default", None).unwrap();
    let bob = store.ssh_keys("acme", None).unwrap();
    if version >= 8 {
        assert_eq!(
            alice,
            [SshKey {
                owner: "alice".into(),
                fingerprint: "SHA256:q3VhbGl0eS1maW5nZXJwcmludC1vZi1hbGljZQ".into(),
                algorithm: "ssh-ed25519".into(),
                comment: "alice@laptop".into(),
                public_key:
                    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHdhcnJlbi10ZXN0LWtleS1vZi1hbGljZS0wMDAw"
                        .into(),
                created_at: T + 300,
                // Before schema 9 a key named no template: the default one.
                template: (version >= 9).then(|| "python".into()),
            }]
        );
        assert_eq!(bob.len(), 1);
        assert_eq!(bob[0].template, None);
        assert_eq!(
            store
                .ssh_key_tenants("bob", "SHA256:Ym9icy1rZXktZmluZ2VycHJpbnQtZm9yLXRlc3Rz")
                .unwrap(),
            [("acme".to_string(), None)]
        );
    } else {
        assert!(alice.is_empty() && bob.is_empty());
    }
}

/// Every row the test reads, raw, to see that none was lost in moving.
fn row_counts(path: &Path) -> BTreeMap<String, i64> {
    let conn = Connection::open(path).unwrap();
    [
        "tenants",
        "api_keys",
        "sandboxes",
        "sessions",
        "events",
        "ssh_keys",
    ]
    .into_iter()
    .filter_map(|t| {
        conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
            .ok()
            .map(|n| (t.to_string(), n))
    })
    .collect()
}

#[test]
fn a_store_of_every_earlier_schema_opens_with_its_rows_and_this_schema() {
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = fresh_dir.path().join("warren.db");
    drop(Store::open(&fresh).unwrap());
    let (fresh_version, fresh_schema) = schema_of(&fresh);
    assert_eq!(fresh_version, SCHEMA_VERSION);

    for version in 1..=SCHEMA_VERSION {
        let dir = tempfile::tempdir().unwrap();
        let path = store_from(dir.path(), &fixture(version));
        let before = row_counts(&path);
        let store = Store::open(&path).unwrap_or_else(|e| panic!("schema {version}: {e}"));
        check_rows(&store, version);
        drop(store);

        let mut after = row_counts(&path);
        // Tables a schema lacked are there now, empty.
        for (table, n) in &before {
            assert_eq!(after.remove(table), Some(*n), "schema {version}: {table}");
        }
        assert!(
            after.values().all(|n| *n == 0),
            "schema {version}: {after:?}"
        );
        assert_eq!(
            schema_of(&path),
            (fresh_version, fresh_schema.clone()),
            "schema {version}"
        );

        // Once moved, opening again finds nothing left to do, and the store is used
        // as any other.
        let store = Store::open(&path).unwrap();
        check_rows(&store, version);
        store.set_state("sb-paused", SandboxState::Running).unwrap();
        assert_eq!(
            store.get("sb-paused").unwrap().unwrap().state,
            SandboxState::Running
        );
    }
}

#[test]
fn the_fixtures_hold_the_schemas_in_order() {
    // Each fixture is its version's schema: its columns are those of the one before
    // and more (never fewer), and the last is this binary's.
    let mut prev: Vec<String> = Vec::new();
    for version in 1..=SCHEMA_VERSION {
        let dir = tempfile::tempdir().unwrap();
        let path = store_from(dir.path(), &fixture(version));
        let (recorded, schema) = schema_of(&path);
        assert_eq!(recorded, 0, "schema {version} recorded no version");
        assert!(
            prev.iter().all(|line| schema.contains(line)),
            "schema {version} lost something of {}",
            version - 1
        );
        assert_ne!(schema, prev, "schema {version} is the one before");
        prev = schema;
    }
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("warren.db");
    drop(Store::open(&fresh).unwrap());
    assert_eq!(schema_of(&fresh).1, prev);
}

#[test]
fn a_store_of_a_newer_schema_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warren.db");
    drop(Store::open(&path).unwrap());
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "ALTER TABLE sandboxes ADD COLUMN from_the_future TEXT;
             INSERT INTO tenants (name, created_at) VALUES ('default', 1);
             PRAGMA user_version = {};",
            SCHEMA_VERSION + 1
        ))
        .unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();

    let e = Store::open(&path).unwrap_err();
    assert!(
        matches!(e, StoreError::Newer { found, known, .. }
            if found == SCHEMA_VERSION + 1 && known == SCHEMA_VERSION),
        "{e:?}"
    );
    let message = e.to_string();
    for part in [
        path.to_str().unwrap(),
        &format!("schema version {}", SCHEMA_VERSION + 1),
        "newer warren",
        "never downgraded",
    ] {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(schema_of(&path).0, SCHEMA_VERSION + 1);

    // Nor is its backup put in place of a store this binary can open.
    let current = dir.path().join("current.db");
    drop(Store::open(&current).unwrap());
    let current_bytes = std::fs::read(&current).unwrap();
    let e = Store::restore(&path, &current).unwrap_err();
    assert!(matches!(e, StoreError::Newer { .. }), "{e:?}");
    assert_eq!(std::fs::read(&current).unwrap(), current_bytes);
    assert!(!dir.path().join("current.db.restoring").exists());
}
