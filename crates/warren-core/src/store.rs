//! The embedded store: SQLite in WAL mode, the truth for every sandbox.
//!
//! Every state change is written (and committed) before the API acknowledges it, so a
//! daemon killed at any point restarts from what it last promised. A sandbox's last
//! activity is the one exception: it is written at most once a second
//! ([`ACTIVITY_WRITE_MS`]), and read from memory in between. Names are unique per
//! (tenant, owner) among sandboxes that are not terminated; SQLite's UNIQUE index is what
//! makes get-or-create atomic under concurrency.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use warren_types::api::{ApiKeyInfo, SandboxState, SshKey, TimeoutAction};
use warren_types::spec::SandboxSpec;

use crate::tokens::TokenRef;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store at {path} cannot be opened: {source}; move it aside to start afresh, or restore a backup")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the store failed its integrity check ({0}); restore a backup or move it aside")]
    Corrupt(String),
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("cannot make the store private: {0}")]
    Private(String),
    #[error("store: bad record: {0}")]
    Record(#[from] serde_json::Error),
    #[error("a sandbox named {0:?} already exists for this owner")]
    NameTaken(String),
    #[error("{0}")]
    Backup(String),
    #[error(
        "the store at {path} has schema version {found}, newer than this binary's {known}: \
         a newer warren wrote it; run that version or a later one (a store is never downgraded)"
    )]
    Newer {
        path: String,
        found: u32,
        known: u32,
    },
}

impl StoreError {
    /// Whether the store failed for want of disk space.
    pub fn is_disk_full(&self) -> bool {
        match self {
            // SQLite reports a write that met ENOSPC as SQLITE_FULL.
            Self::Sql(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            _ => false,
        }
    }
}

/// One sandbox's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub tenant: String,
    pub owner: String,
    pub name: Option<String>,
    pub state: SandboxState,
    pub spec: SandboxSpec,
    pub labels: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    /// Unix milliseconds.
    pub created_at: i64,
    pub last_active_at: i64,
    pub expires_at: Option<i64>,
    pub idle_timeout_secs: Option<u64>,
    pub on_timeout: TimeoutAction,
    /// Which access token the sandbox has (see [`crate::tokens`]); never the token.
    pub access: TokenRef,
    /// Set when traffic to the sandbox's ports needs a token: which one.
    pub traffic: Option<TokenRef>,
    /// A paused sandbox resumes by itself on its next use (a call into it, traffic
    /// to a port).
    pub auto_resume: bool,
    /// The `Host` its ports see on traffic through the daemon (`${PORT}` stands for
    /// the port); the client's own when unset.
    pub request_host: Option<String>,
}

/// One session's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id: String,
    pub tenant: String,
    pub client: String,
    pub sandbox: String,
    pub state: String,
    pub timeouts: warren_types::api::SessionTimeouts,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub since: i64,
}

/// A stored lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub time: i64,
    pub sandbox: String,
    pub owner: String,
    pub kind: String,
    pub message: String,
}

/// The daemon is the store's one writer (a second daemon on the same data directory is
/// refused before the store is opened), so what it keeps of the rows in memory stays true.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    /// Sandboxes' rows as last read by id: every exec, file call and terminal looks its
    /// sandbox up here. Every write to a row drops its entry.
    rows: RefCell<HashMap<String, Record>>,
    /// Activity newer than the rows say (see [`Store::touch`]), merged into every record
    /// read.
    activity: RefCell<HashMap<String, Activity>>,
}

/// A sandbox's last activity, and when it was last written to its row.
#[derive(Debug, Clone, Copy)]
struct Activity {
    written: i64,
    latest: i64,
}

/// How often one sandbox's activity is written to its row: a command loop makes a
/// store write per second, not one per command. What is newer is kept in memory and
/// read with the row, so the reaper and the API see it at once; a daemon killed loses
/// at most this much of it (the sandbox looks that much longer idle after a restart).
pub const ACTIVITY_WRITE_MS: i64 = 1_000;

/// Rows kept in memory at most; past it the memory starts again empty.
const ROWS_KEPT: usize = 4096;

/// Events kept per sandbox.
pub const EVENTS_KEPT: u32 = 1000;

/// The hex digits of an API key's hash that name it (see [`ApiKeyInfo::id`]): 64 bits,
/// so two keys of one store do not share an id.
pub const API_KEY_ID_LEN: usize = 16;

/// The version of the schema, kept in the store's `PRAGMA user_version`. Migrations go
/// forward only: a store of an earlier version is brought up to this one when opened,
/// and one of a later version is refused untouched.
///
/// Versions 1 to 8 were never written down: a store they made reads 0 and is told
/// apart by its columns (`tests/testdata/store/` holds one made by each).
pub const SCHEMA_VERSION: u32 = 9;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    hash TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(name),
    created_at INTEGER NOT NULL,
    -- An operator's key: no quota, the whole host's metrics and templates.
    operator INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    owner TEXT NOT NULL,
    name TEXT,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    labels TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_active_at INTEGER NOT NULL,
    expires_at INTEGER,
    idle_timeout_secs INTEGER,
    on_timeout TEXT NOT NULL,
    access_token TEXT NOT NULL,
    -- Set while the sandbox waits, warm, in a pool: the pool's key.
    pool_key TEXT,
    traffic_token TEXT,
    -- 1: a paused sandbox resumes by itself when it is used.
    auto_resume INTEGER NOT NULL DEFAULT 0,
    -- The Host header traffic to its ports carries, `${PORT}` replaced.
    request_host TEXT
);
CREATE INDEX IF NOT EXISTS sandbox_pools ON sandboxes(pool_key, state) WHERE pool_key IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS sandbox_names ON sandboxes(tenant, owner, name)
    WHERE name IS NOT NULL AND state != 'terminated';
CREATE INDEX IF NOT EXISTS sandbox_states ON sandboxes(state);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    client TEXT NOT NULL,
    sandbox TEXT NOT NULL,
    state TEXT NOT NULL,
    timeouts TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    -- When the session entered its current state.
    since INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_live ON sessions(state) WHERE state != 'terminated';
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time INTEGER NOT NULL,
    sandbox TEXT NOT NULL,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_sandbox ON events(sandbox, seq);
CREATE TABLE IF NOT EXISTS ssh_keys (
    tenant TEXT NOT NULL,
    owner TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    comment TEXT NOT NULL,
    public_key TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    template TEXT,
    PRIMARY KEY (tenant, owner, fingerprint)
);
CREATE INDEX IF NOT EXISTS ssh_keys_by_fingerprint ON ssh_keys(fingerprint, owner);
";

fn action_str(a: TimeoutAction) -> &'static str {
    match a {
        TimeoutAction::Pause => "pause",
        TimeoutAction::Stop => "stop",
        TimeoutAction::Terminate => "terminate",
    }
}

fn parse_action(s: &str) -> TimeoutAction {
    match s {
        "pause" => TimeoutAction::Pause,
        "stop" => TimeoutAction::Stop,
        _ => TimeoutAction::Terminate,
    }
}

const COLUMNS: &str = "id, tenant, owner, name, state, spec, labels, metadata, created_at, \
     last_active_at, expires_at, idle_timeout_secs, on_timeout, access_token, traffic_token, \
     auto_resume, request_host";

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Record, StoreError>> {
    let state: String = row.get(4)?;
    let spec: String = row.get(5)?;
    let labels: String = row.get(6)?;
    let metadata: String = row.get(7)?;
    let on_timeout: String = row.get(12)?;
    let idle: Option<i64> = row.get(11)?;
    let build = || -> Result<Record, StoreError> {
        Ok(Record {
            id: row.get(0)?,
            tenant: row.get(1)?,
            owner: row.get(2)?,
            name: row.get(3)?,
            state: SandboxState::parse(&state).unwrap_or(SandboxState::Terminated),
            spec: serde_json::from_str(&spec)?,
            labels: serde_json::from_str(&labels)?,
            metadata: serde_json::from_str(&metadata)?,
            created_at: row.get(8)?,
            last_active_at: row.get(9)?,
            expires_at: row.get(10)?,
            idle_timeout_secs: idle.map(|i| i as u64),
            on_timeout: parse_action(&on_timeout),
            access: TokenRef::from_column(&row.get::<_, String>(13)?),
            traffic: row
                .get::<_, Option<String>>(14)?
                .map(|t| TokenRef::from_column(&t)),
            auto_resume: row.get::<_, i64>(15)? != 0,
            request_host: row.get(16)?,
        })
    };
    Ok(build())
}

/// Adds `column` to `table` if the table is there without it (a store an earlier
/// version made; a missing table is made whole by [`SCHEMA`]). The names are this
/// file's constants, never input.
fn add_column(conn: &Connection, table: &str, column: &str, decl: &str) -> Result<(), StoreError> {
    let (columns, has): (i64, i64) = conn.query_row(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE name = ?2) FROM pragma_table_info(?1)",
        params![table, column],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if columns > 0 && has == 0 {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
    }
    Ok(())
}

/// The schema version a store records (0 for one made before versions were).
fn schema_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Brings a store of version `from` (0: unrecorded, 1 to 8) up to [`SCHEMA_VERSION`],
/// in the caller's transaction. A later schema adds its step here, after the others,
/// guarded by `from < ITS_VERSION`.
fn migrate(conn: &Connection, from: u32) -> Result<(), StoreError> {
    if from < 9 {
        // Columns added to tables of versions 1 to 8, each once: before `SCHEMA`, whose
        // indexes name them.
        add_column(conn, "sandboxes", "pool_key", "TEXT")?;
        add_column(conn, "sandboxes", "traffic_token", "TEXT")?;
        add_column(
            conn,
            "sandboxes",
            "auto_resume",
            "INTEGER NOT NULL DEFAULT 0",
        )?;
        add_column(conn, "sandboxes", "request_host", "TEXT")?;
        add_column(conn, "api_keys", "operator", "INTEGER NOT NULL DEFAULT 0")?;
        add_column(conn, "ssh_keys", "template", "TEXT")?;
    }
    // Tables and indexes a store lacks.
    conn.execute_batch(SCHEMA)?;
    if from < 9 {
        hash_plain_tokens(conn)?;
    }
    Ok(())
}

/// Tokens were kept in plain text (schema 4 and before): keep only their hashes (see
/// `crate::tokens`).
fn hash_plain_tokens(conn: &Connection) -> Result<(), StoreError> {
    let plain: Vec<(String, String, Option<String>)> = {
        let mut stmt = conn.prepare(
            "SELECT id, access_token, traffic_token FROM sandboxes \
             WHERE access_token NOT LIKE 'g%' AND access_token NOT LIKE 'legacy-sha256:%'",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (id, access, traffic) in plain {
        conn.execute(
            "UPDATE sandboxes SET access_token = ?2, traffic_token = ?3 WHERE id = ?1",
            params![
                id,
                TokenRef::from_column(&access).to_column(),
                traffic.map(|t| TokenRef::from_column(&t).to_column())
            ],
        )?;
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the store and checks it. A file that is not a database, or
    /// fails `PRAGMA integrity_check`, is refused rather than overwritten.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        // SQLite takes an empty file for a new database, so a store truncated to nothing
        // would open empty and every sandbox it knew would be forgotten.
        if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
            return Err(StoreError::Corrupt(format!("{} is empty", path.display())));
        }
        let conn = Connection::open(path).map_err(open_err)?;
        // Before anything is written: a newer binary's store is left as it is.
        let version = schema_version(&conn).map_err(open_err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Newer {
                path: path.display().to_string(),
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        // Private to the daemon, and so the journal files SQLite makes beside it, which
        // take the store's permissions.
        for p in [
            path.to_path_buf(),
            path.with_extension("db-wal"),
            path.with_extension("db-shm"),
        ] {
            use std::os::unix::fs::PermissionsExt;
            if p.exists() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| StoreError::Private(format!("{}: {e}", p.display())))?;
            }
        }
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(open_err)?;
        if check != "ok" {
            return Err(StoreError::Corrupt(check));
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Room for every statement the store runs, so none is parsed twice.
        conn.set_prepared_statement_cache_capacity(64);
        if version < SCHEMA_VERSION {
            // All of it or none: a migration that fails leaves the store as it was.
            let tx = conn.unchecked_transaction()?;
            migrate(&tx, version)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()?;
        }
        Ok(Self::with(conn))
    }

    /// Copies the store at `from` to a new file `to`, consistently while a daemon
    /// writes it (SQLite's `VACUUM INTO` reads one snapshot), readable by root alone,
    /// and checks the copy. Returns the copy's size in bytes.
    pub fn backup(from: &Path, to: &Path) -> Result<u64, StoreError> {
        use rusqlite::OpenFlags;
        if to.symlink_metadata().is_ok() {
            return Err(StoreError::Backup(format!(
                "{} exists: name a new file (a backup never overwrites)",
                to.display()
            )));
        }
        if !from.exists() {
            return Err(StoreError::Backup(format!(
                "no store at {} (is WARREN_DATA_DIR the daemon's?)",
                from.display()
            )));
        }
        let conn = Connection::open_with_flags(
            from,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open {
            path: from.display().to_string(),
            source,
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Made empty and private first: SQLite then writes into it, keeping its mode.
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(to)
                .map_err(|e| StoreError::Backup(format!("{}: {e}", to.display())))?;
        }
        let copied = conn
            .execute("VACUUM INTO ?1", params![to.to_string_lossy()])
            .map_err(StoreError::from)
            .and_then(|_| Self::check_copy(to));
        if let Err(e) = copied {
            let _ = std::fs::remove_file(to);
            return Err(e);
        }
        Ok(std::fs::metadata(to).map(|m| m.len()).unwrap_or(0))
    }

    /// Checks that `path` is a whole store: a database that passes its integrity check
    /// and holds the store's tables.
    pub fn check_copy(path: &Path) -> Result<(), StoreError> {
        use rusqlite::OpenFlags;
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(
            |source| StoreError::Open {
                path: path.display().to_string(),
                source,
            },
        )?;
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
        if check != "ok" {
            return Err(StoreError::Corrupt(check));
        }
        let tables: i64 = conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('sandboxes', 'api_keys')",
            [],
            |r| r.get(0),
        )?;
        if tables != 2 {
            return Err(StoreError::Backup(format!(
                "{} is a database, but not a Warren store",
                path.display()
            )));
        }
        Ok(())
    }

    /// Puts the backup `from` in place of the store at `to` (no daemon may have it
    /// open), keeping the store it replaces beside it; returns where that went.
    pub fn restore(from: &Path, to: &Path) -> Result<Option<std::path::PathBuf>, StoreError> {
        Self::check_copy(from)?;
        // Refused before the store in place is moved aside, which this binary could
        // then not open either.
        let version = Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| schema_version(&c))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Newer {
                path: from.display().to_string(),
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        let io = |what: &str, e: std::io::Error| StoreError::Backup(format!("{what}: {e}"));
        let staged = to.with_extension("db.restoring");
        std::fs::copy(from, &staged).map_err(|e| io("copy the backup", e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| io("make the store private", e))?;
        }
        let mut kept = None;
        if to.exists() {
            let aside = to.with_extension(format!("db.before-restore-{}", crate::now_ms()));
            std::fs::rename(to, &aside).map_err(|e| io("move the old store aside", e))?;
            // Its journal belongs to it, not to the restored store.
            for ext in ["db-wal", "db-shm"] {
                let j = to.with_extension(ext);
                if j.exists() {
                    let _ = std::fs::rename(&j, aside.with_extension(format!("{ext}.old")));
                }
            }
            kept = Some(aside);
        }
        std::fs::rename(&staged, to).map_err(|e| io("put the backup in place", e))?;
        Ok(kept)
    }

    fn with(conn: Connection) -> Self {
        Self {
            conn,
            rows: RefCell::default(),
            activity: RefCell::default(),
        }
    }

    /// Forgets what is kept in memory of a row: it is about to change.
    fn changing(&self, id: &str) {
        self.rows.borrow_mut().remove(id);
    }

    /// Forgets every row kept in memory: a statement changes rows it does not name.
    fn changing_many(&self) {
        self.rows.borrow_mut().clear();
    }

    /// `r` with the activity not yet written to its row.
    fn fresh(&self, mut r: Record) -> Record {
        if let Some(a) = self.activity.borrow().get(&r.id) {
            r.last_active_at = r.last_active_at.max(a.latest);
        }
        r
    }

    /// Records read from rows, with the activity not yet written.
    fn fresh_all(
        &self,
        rows: impl Iterator<Item = rusqlite::Result<Result<Record, StoreError>>>,
    ) -> Result<Vec<Record>, StoreError> {
        let mut out = Vec::new();
        for r in rows {
            out.push(self.fresh(r??));
        }
        Ok(out)
    }

    /// Runs one statement through the connection's cache of prepared statements: the
    /// daemon runs the same few on every request, and parsing one costs more than
    /// running it.
    fn run<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.conn.prepare_cached(sql)?.execute(params)
    }

    /// An in-memory store, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(Self::with(conn))
    }

    pub fn ensure_tenant(&self, name: &str, now: i64) -> Result<(), StoreError> {
        self.run(
            "INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?1, ?2)",
            params![name, now],
        )?;
        Ok(())
    }

    pub fn add_api_key(
        &self,
        hash: &str,
        tenant: &str,
        operator: bool,
        now: i64,
    ) -> Result<(), StoreError> {
        self.ensure_tenant(tenant, now)?;
        self.run(
            "INSERT INTO api_keys (hash, tenant, created_at, operator) VALUES (?1, ?2, ?3, ?4)",
            params![hash, tenant, now, operator],
        )?;
        Ok(())
    }

    /// The tenant of the key with this hash, and whether it is an operator's key.
    pub fn tenant_of_key(&self, hash: &str) -> Result<Option<(String, bool)>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT tenant, operator FROM api_keys WHERE hash = ?1",
                params![hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// The API keys of `tenant` (of every tenant: None), oldest first; operators' keys
    /// only `with_operators`.
    pub fn api_keys(
        &self,
        tenant: Option<&str>,
        with_operators: bool,
    ) -> Result<Vec<ApiKeyInfo>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT substr(hash, 1, ?2), tenant, operator, created_at FROM api_keys \
             WHERE (?1 IS NULL OR tenant = ?1) AND (?3 OR operator = 0) \
             ORDER BY created_at, tenant, hash",
        )?;
        let rows = stmt.query_map(params![tenant, API_KEY_ID_LEN, with_operators], |r| {
            Ok(ApiKeyInfo {
                id: r.get(0)?,
                tenant: r.get(1)?,
                operator: r.get(2)?,
                created_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes the API key named `id` (see [`ApiKeyInfo::id`]), if it is `tenant`'s (of
    /// any tenant: None), and not an operator's unless `with_operators`: how many.
    pub fn remove_api_key(
        &self,
        id: &str,
        tenant: Option<&str>,
        with_operators: bool,
    ) -> Result<usize, StoreError> {
        Ok(self.run(
            "DELETE FROM api_keys WHERE substr(hash, 1, ?3) = ?1 AND (?2 IS NULL OR tenant = ?2) \
             AND (?4 OR operator = 0)",
            params![id, tenant, API_KEY_ID_LEN, with_operators],
        )?)
    }

    /// The tenants given an API key, with when the first was made.
    pub fn tenants(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, created_at FROM tenants ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets `tenant`: its API keys, its owners' SSH keys and its row, at once. How
    /// many API keys and SSH keys went.
    pub fn remove_tenant(&self, tenant: &str) -> Result<(usize, usize), StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let keys = tx.execute("DELETE FROM api_keys WHERE tenant = ?1", params![tenant])?;
        let ssh = tx.execute("DELETE FROM ssh_keys WHERE tenant = ?1", params![tenant])?;
        tx.execute("DELETE FROM tenants WHERE name = ?1", params![tenant])?;
        tx.commit()?;
        Ok((keys, ssh))
    }

    /// Registers `key` for `tenant`; false if that owner of that tenant has it already.
    pub fn add_ssh_key(&self, tenant: &str, key: &SshKey) -> Result<bool, StoreError> {
        let n = self.run(
            "INSERT OR IGNORE INTO ssh_keys (tenant, owner, fingerprint, algorithm, comment, \
             public_key, created_at, template) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                tenant,
                key.owner,
                key.fingerprint,
                key.algorithm,
                key.comment,
                key.public_key,
                key.created_at,
                key.template
            ],
        )?;
        Ok(n == 1)
    }

    /// A tenant's keys (of one owner, or all), oldest first.
    pub fn ssh_keys(&self, tenant: &str, owner: Option<&str>) -> Result<Vec<SshKey>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT owner, fingerprint, algorithm, comment, public_key, created_at, template \
             FROM ssh_keys \
             WHERE tenant = ?1 AND (?2 IS NULL OR owner = ?2) ORDER BY created_at, owner",
        )?;
        let rows = stmt.query_map(params![tenant, owner], |r| {
            Ok(SshKey {
                owner: r.get(0)?,
                fingerprint: r.get(1)?,
                algorithm: r.get(2)?,
                comment: r.get(3)?,
                public_key: r.get(4)?,
                created_at: r.get(5)?,
                template: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes a tenant's key (of one owner, or of every owner that has it): how many.
    pub fn remove_ssh_key(
        &self,
        tenant: &str,
        fingerprint: &str,
        owner: Option<&str>,
    ) -> Result<usize, StoreError> {
        Ok(self.run(
            "DELETE FROM ssh_keys WHERE tenant = ?1 AND fingerprint = ?2 \
             AND (?3 IS NULL OR owner = ?3)",
            params![tenant, fingerprint, owner],
        )?)
    }

    /// The tenants in which `owner` has the key `fingerprint`, each with the key's
    /// template.
    pub fn ssh_key_tenants(
        &self,
        owner: &str,
        fingerprint: &str,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT tenant, template FROM ssh_keys WHERE fingerprint = ?1 AND owner = ?2 \
             ORDER BY tenant",
        )?;
        let rows = stmt.query_map(params![fingerprint, owner], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Inserts a new sandbox. A live sandbox with the same (tenant, owner, name) makes
    /// this fail with `NameTaken`, atomically.
    pub fn insert(&self, r: &Record) -> Result<(), StoreError> {
        self.changing(&r.id);
        self.activity.borrow_mut().remove(&r.id);
        let res = self.run(
            &format!(
                "INSERT INTO sandboxes ({COLUMNS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
            ),
            params![
                r.id,
                r.tenant,
                r.owner,
                r.name,
                r.state.as_str(),
                serde_json::to_string(&r.spec)?,
                serde_json::to_string(&r.labels)?,
                serde_json::to_string(&r.metadata)?,
                r.created_at,
                r.last_active_at,
                r.expires_at,
                r.idle_timeout_secs.map(|i| i as i64),
                action_str(r.on_timeout),
                r.access.to_column(),
                r.traffic.as_ref().map(TokenRef::to_column),
                i64::from(r.auto_resume),
                r.request_host,
            ],
        );
        match res {
            Ok(_) => {
                self.written_now(&r.id, r.last_active_at);
                Ok(())
            }
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::NameTaken(r.name.clone().unwrap_or_default()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A sandbox's record by id. Every exec and file call resolves its sandbox here:
    /// the row is read once and kept (reading and decoding it was a seventh of the
    /// daemon's instructions per exec), and the statement is prepared once (parsing it
    /// each time was a third).
    pub fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        if let Some(r) = self.rows.borrow().get(id) {
            return Ok(Some(self.fresh(r.clone())));
        }
        let r = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM sandboxes WHERE id = ?1"))?
            .query_row(params![id], row_to_record)
            .optional()?
            .transpose()?;
        if let Some(r) = &r {
            let mut rows = self.rows.borrow_mut();
            if rows.len() >= ROWS_KEPT {
                rows.clear();
            }
            rows.insert(r.id.clone(), r.clone());
        }
        Ok(r.map(|r| self.fresh(r)))
    }

    /// The live sandbox of that name, if any.
    pub fn by_name(
        &self,
        tenant: &str,
        owner: &str,
        name: &str,
    ) -> Result<Option<Record>, StoreError> {
        let r = self
            .conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM sandboxes WHERE tenant = ?1 AND owner = ?2 \
                     AND name = ?3 AND state != 'terminated'"
                ),
                params![tenant, owner, name],
                row_to_record,
            )
            .optional()?;
        Ok(r.transpose()?.map(|r| self.fresh(r)))
    }

    /// A tenant's sandboxes (not terminated) named `name`, whatever their owner, at
    /// most `limit`.
    pub fn by_bare_name(
        &self,
        tenant: &str,
        name: &str,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM sandboxes WHERE tenant = ?1 AND name = ?2 \
             AND state != 'terminated' ORDER BY owner LIMIT ?3"
        ))?;
        let rows = stmt.query_map(
            params![tenant, name, i64::try_from(limit).unwrap_or(i64::MAX)],
            row_to_record,
        )?;
        self.fresh_all(rows)
    }

    /// Sandboxes not terminated; of one tenant when given.
    pub fn list_live(&self, tenant: Option<&str>) -> Result<Vec<Record>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM sandboxes WHERE state != 'terminated' \
             AND (?1 IS NULL OR tenant = ?1) ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map(params![tenant], row_to_record)?;
        self.fresh_all(rows)
    }

    /// Running sandboxes whose lifetime or idle timeout may have passed at `now`, by
    /// their rows: the reaper's question every pass, which must not decode every
    /// sandbox's record to ask it. Activity kept in memory is newer than the rows, so
    /// this is every sandbox that is due and maybe some that are not (the reaper looks
    /// at each record again).
    pub fn list_due(&self, now: i64) -> Result<Vec<Record>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM sandboxes WHERE state = 'running' \
             AND (expires_at <= ?1 \
                  OR (idle_timeout_secs IS NOT NULL \
                      AND last_active_at + idle_timeout_secs * 1000 <= ?1)) \
             ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map(params![now], row_to_record)?;
        self.fresh_all(rows)
    }

    pub fn set_state(&self, id: &str, state: SandboxState) -> Result<(), StoreError> {
        self.changing(id);
        if state == SandboxState::Terminated {
            // Its row's activity becomes its end, below.
            self.activity.borrow_mut().remove(id);
        }
        // A terminated sandbox gives up its name, so the name can be used again, and
        // its last activity is its end, from which [`Store::prune_terminated`] counts.
        self.run(
            "UPDATE sandboxes SET state = ?2, \
             name = CASE WHEN ?2 = 'terminated' THEN NULL ELSE name END, \
             last_active_at = CASE WHEN ?2 = 'terminated' \
               THEN CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) \
               ELSE last_active_at END \
             WHERE id = ?1",
            params![id, state.as_str()],
        )?;
        Ok(())
    }

    /// Replaces a sandbox's recorded specification (its egress rules change).
    pub fn set_spec(&self, id: &str, spec: &SandboxSpec) -> Result<(), StoreError> {
        self.changing(id);
        self.run(
            "UPDATE sandboxes SET spec = ?2 WHERE id = ?1",
            params![id, serde_json::to_string(spec)?],
        )?;
        Ok(())
    }

    /// Records that `id`'s row was just written with activity `at` (its insert, a
    /// claim): a call in the next second, a new sandbox's first exec, writes nothing.
    fn written_now(&self, id: &str, at: i64) {
        self.activity.borrow_mut().insert(
            id.to_string(),
            Activity {
                written: at,
                latest: at,
            },
        );
    }

    /// Marks a sandbox active at `now`. Written to its row at most once per
    /// [`ACTIVITY_WRITE_MS`]; every record read in between carries it.
    pub fn touch(&self, id: &str, now: i64) -> Result<(), StoreError> {
        let mut activity = self.activity.borrow_mut();
        if let Some(a) = activity.get_mut(id) {
            a.latest = a.latest.max(now);
            if now - a.written < ACTIVITY_WRITE_MS {
                return Ok(());
            }
        }
        // The row holds the time, not the memory: written before it is kept as written.
        self.conn
            .prepare_cached(
                "UPDATE sandboxes SET last_active_at = ?2 WHERE id = ?1 AND last_active_at < ?2",
            )?
            .execute(params![id, now])?;
        let latest = activity.get(id).map_or(now, |a| a.latest.max(now));
        activity.insert(
            id.to_string(),
            Activity {
                written: now,
                latest,
            },
        );
        Ok(())
    }

    pub fn set_timeouts(
        &self,
        id: &str,
        expires_at: Option<i64>,
        idle_timeout_secs: Option<u64>,
        on_timeout: TimeoutAction,
    ) -> Result<(), StoreError> {
        self.changing(id);
        self.run(
            "UPDATE sandboxes SET expires_at = ?2, idle_timeout_secs = ?3, on_timeout = ?4 \
             WHERE id = ?1",
            params![
                id,
                expires_at,
                idle_timeout_secs.map(|i| i as i64),
                action_str(on_timeout)
            ],
        )?;
        Ok(())
    }

    /// Marks a new sandbox as a member of pool `key`.
    pub fn set_pool(&self, id: &str, key: Option<&str>) -> Result<(), StoreError> {
        self.changing(id);
        self.run(
            "UPDATE sandboxes SET pool_key = ?2 WHERE id = ?1",
            params![id, key],
        )?;
        Ok(())
    }

    /// Running members of pool `key`, oldest first: (id, created_at).
    pub fn pool_members(&self, key: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, created_at FROM sandboxes WHERE pool_key = ?1 AND state = 'running' \
             ORDER BY created_at",
        )?;
        let rows = stmt.query_map(params![key], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every running sandbox of `tenant` (the pools' own): (id, pool key, created_at).
    pub fn running_of_tenant(
        &self,
        tenant: &str,
    ) -> Result<Vec<(String, Option<String>, i64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, pool_key, created_at FROM sandboxes WHERE tenant = ?1 \
             AND state = 'running'",
        )?;
        let rows = stmt.query_map(params![tenant], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Takes one running member out of pool `key` and gives it to `claim`'s tenant,
    /// owner, name and settings, in one statement: two claims never get the same member.
    pub fn claim_from_pool(&self, key: &str, claim: &Record) -> Result<Option<Record>, StoreError> {
        // Which row changes is the statement's choice.
        self.changing_many();
        let res = self.conn.query_row(
            "UPDATE sandboxes SET tenant = ?2, owner = ?3, name = ?4, labels = ?5, \
             metadata = ?6, created_at = ?7, last_active_at = ?7, expires_at = ?8, \
             idle_timeout_secs = ?9, on_timeout = ?10, access_token = ?11, pool_key = NULL, \
             traffic_token = ?12, auto_resume = ?13, request_host = ?14 \
             WHERE id = (SELECT id FROM sandboxes WHERE pool_key = ?1 AND state = 'running' \
                         ORDER BY created_at LIMIT 1) \
             RETURNING id",
            params![
                key,
                claim.tenant,
                claim.owner,
                claim.name,
                serde_json::to_string(&claim.labels)?,
                serde_json::to_string(&claim.metadata)?,
                claim.created_at,
                claim.expires_at,
                claim.idle_timeout_secs.map(|i| i as i64),
                action_str(claim.on_timeout),
                claim.access.to_column(),
                claim.traffic.as_ref().map(TokenRef::to_column),
                i64::from(claim.auto_resume),
                claim.request_host,
            ],
            |r| r.get::<_, String>(0),
        );
        let id = match res {
            Ok(id) => {
                // Its activity starts again at the claim.
                self.written_now(&id, claim.created_at);
                id
            }
            Err(rusqlite::Error::QueryReturnedNoRows) => return Ok(None),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(StoreError::NameTaken(
                    claim.name.clone().unwrap_or_default(),
                ))
            }
            Err(e) => return Err(e.into()),
        };
        self.get(&id)
    }

    pub fn put_session(&self, s: &SessionRow) -> Result<(), StoreError> {
        self.run(
            "INSERT OR REPLACE INTO sessions \
             (id, tenant, client, sandbox, state, timeouts, created_at, last_seen_at, since) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                s.id,
                s.tenant,
                s.client,
                s.sandbox,
                s.state,
                serde_json::to_string(&s.timeouts)?,
                s.created_at,
                s.last_seen_at,
                s.since
            ],
        )?;
        Ok(())
    }

    /// Sessions not terminated; of one tenant when given.
    pub fn live_sessions(&self, tenant: Option<&str>) -> Result<Vec<SessionRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, tenant, client, sandbox, state, timeouts, created_at, last_seen_at, \
             since FROM sessions WHERE state != 'terminated' AND (?1 IS NULL OR tenant = ?1) \
             ORDER BY created_at",
        )?;
        let rows = stmt.query_map(params![tenant], |r| {
            Ok((
                SessionRow {
                    id: r.get(0)?,
                    tenant: r.get(1)?,
                    client: r.get(2)?,
                    sandbox: r.get(3)?,
                    state: r.get(4)?,
                    timeouts: Default::default(),
                    created_at: r.get(6)?,
                    last_seen_at: r.get(7)?,
                    since: r.get(8)?,
                },
                r.get::<_, String>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (mut s, t) = row?;
            s.timeouts = serde_json::from_str(&t)?;
            out.push(s);
        }
        Ok(out)
    }

    /// Records an event; a sandbox keeps its last [`EVENTS_KEPT`] (one that pauses and
    /// resumes in a loop must not grow the store without end).
    pub fn add_event(&self, e: &EventRow) -> Result<(), StoreError> {
        self.run(
            "INSERT INTO events (time, sandbox, owner, kind, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![e.time, e.sandbox, e.owner, e.kind, e.message],
        )?;
        self.conn
            .prepare_cached(
                "DELETE FROM events WHERE sandbox = ?1 AND seq <= \
                 (SELECT seq FROM events WHERE sandbox = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
            )?
            .execute(params![e.sandbox, EVENTS_KEPT])?;
        Ok(())
    }

    /// Forgets sandboxes terminated before `before` (ms), with their events, and sessions
    /// that ended before then: a tenant that creates and removes sandboxes in a loop must
    /// not grow the store without end. Returns how many sandboxes went.
    pub fn prune_terminated(&self, before: i64) -> Result<usize, StoreError> {
        self.changing_many();
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "DELETE FROM events WHERE sandbox IN (SELECT id FROM sandboxes \
             WHERE state = 'terminated' AND last_active_at < ?1)",
            params![before],
        )?;
        let n = tx.execute(
            "DELETE FROM sandboxes WHERE state = 'terminated' AND last_active_at < ?1",
            params![before],
        )?;
        tx.execute(
            "DELETE FROM sessions WHERE state = 'terminated' AND since < ?1",
            params![before],
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// The last `limit` events of a sandbox, oldest first.
    pub fn events_of(&self, sandbox: &str, limit: u32) -> Result<Vec<EventRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT time, sandbox, owner, kind, message FROM \
             (SELECT seq, time, sandbox, owner, kind, message FROM events WHERE sandbox = ?1 \
              ORDER BY seq DESC LIMIT ?2) ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![sandbox, limit], |r| {
            Ok(EventRow {
                time: r.get(0)?,
                sandbox: r.get(1)?,
                owner: r.get(2)?,
                kind: r.get(3)?,
                message: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use warren_types::api::WireCode;

    use super::*;

    #[test]
    fn a_store_of_the_earlier_schema_is_brought_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warren.db");
        {
            // The sandboxes table as it was before traffic tokens, and everything later.
            let start = SCHEMA.find(",\n    traffic_token TEXT").unwrap();
            let end = start + SCHEMA[start..].find("\n);").unwrap();
            let old = format!("{}{}", &SCHEMA[..start], &SCHEMA[end..]);
            assert!(!old.contains("auto_resume") && !old.contains("traffic_token"));
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&old).unwrap();
            let cols = &COLUMNS[..COLUMNS.find(", traffic_token").unwrap()];
            conn.execute(
                &format!(
                    "INSERT INTO sandboxes ({cols}) VALUES ('a', 't', 'o', NULL, 'running', \
                     '{{\"id\":\"a\",\"template\":\"host\",\"hostname\":null}}', '{{}}', '{{}}', 1, 1, \
                     NULL, NULL, 'terminate', 'tok')"
                ),
                [],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let r = store.get("a").unwrap().unwrap();
        // Columns added since take their defaults.
        assert!(!r.auto_resume && r.request_host.is_none());
        // The plain token of the old store is kept only as its hash.
        assert_eq!(
            (r.access, r.traffic),
            (TokenRef::Legacy(crate::tokens::sha256_hex("tok")), None)
        );
        let raw: String = store
            .conn
            .query_row(
                "SELECT access_token FROM sandboxes WHERE id = 'a'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            raw,
            format!("legacy-sha256:{}", crate::tokens::sha256_hex("tok"))
        );
        let mut r2 = record("b", None);
        r2.traffic = Some(TokenRef::Derived(3));
        store.insert(&r2).unwrap();
        assert_eq!(
            store.get("b").unwrap().unwrap().traffic,
            Some(TokenRef::Derived(3))
        );
        drop(store);
        // Opening again finds nothing left to do.
        Store::open(&path).unwrap();
    }

    fn event(sandbox: &str, n: usize) -> EventRow {
        EventRow {
            time: n as i64,
            sandbox: sandbox.into(),
            owner: "o".into(),
            kind: "k".into(),
            message: format!("event {n}"),
        }
    }

    #[test]
    fn a_sandbox_keeps_its_last_events_only() {
        let store = Store::in_memory().unwrap();
        for n in 0..EVENTS_KEPT as usize + 50 {
            store.add_event(&event("busy", n)).unwrap();
        }
        store.add_event(&event("quiet", 0)).unwrap();
        let kept = store.events_of("busy", u32::MAX).unwrap();
        assert_eq!(kept.len(), EVENTS_KEPT as usize);
        assert_eq!(kept[0].message, "event 50");
        assert_eq!(store.events_of("quiet", 10).unwrap().len(), 1);
    }

    #[test]
    fn sandboxes_terminated_long_ago_are_forgotten_with_their_events() {
        let store = Store::in_memory().unwrap();
        for id in ["ended", "live"] {
            store.insert(&record(id, None)).unwrap();
            store.add_event(&event(id, 1)).unwrap();
        }
        store.set_state("ended", SandboxState::Terminated).unwrap();
        // Its end is now: nothing before that is forgotten yet.
        let ended_at = store.get("ended").unwrap().unwrap().last_active_at;
        assert!(ended_at > 1_700_000_000_000, "{ended_at}");
        assert_eq!(store.prune_terminated(ended_at - 1000).unwrap(), 0);
        assert_eq!(store.prune_terminated(ended_at + 1).unwrap(), 1);
        assert!(store.get("ended").unwrap().is_none());
        assert!(store.events_of("ended", 10).unwrap().is_empty());
        assert!(store.get("live").unwrap().is_some());
        assert_eq!(store.events_of("live", 10).unwrap().len(), 1);
    }

    #[test]
    fn a_full_disk_is_told_apart() {
        let full = StoreError::Sql(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        ));
        assert!(full.is_disk_full());
        let e = crate::CoreError::from(full);
        assert_eq!(e.code(), WireCode::NoSpace);
        let other = StoreError::Sql(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
            None,
        ));
        assert!(!other.is_disk_full());
        assert_eq!(crate::CoreError::from(other).code(), WireCode::StoreError);
    }

    fn record(id: &str, name: Option<&str>) -> Record {
        Record {
            id: id.into(),
            tenant: "t".into(),
            owner: "alice".into(),
            name: name.map(Into::into),
            state: SandboxState::Creating,
            spec: SandboxSpec {
                id: id.into(),
                template: "host".into(),
                ..Default::default()
            },
            labels: BTreeMap::from([("team".into(), "a".into())]),
            metadata: BTreeMap::new(),
            created_at: 1,
            last_active_at: 1,
            expires_at: Some(10),
            idle_timeout_secs: Some(60),
            on_timeout: TimeoutAction::Pause,
            access: TokenRef::Derived(0),
            traffic: None,
            auto_resume: false,
            request_host: None,
        }
    }

    /// The row as the file has it, past what the store keeps in memory.
    fn on_disk(s: &Store, id: &str) -> Option<Record> {
        s.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM sandboxes WHERE id = ?1"),
                params![id],
                row_to_record,
            )
            .optional()
            .unwrap()
            .transpose()
            .unwrap()
    }

    #[test]
    fn a_kept_row_follows_every_write_to_it() {
        let s = Store::in_memory().unwrap();
        s.insert(&record("a", Some("lab"))).unwrap();
        let same = |s: &Store| {
            let kept = s.get("a").unwrap();
            assert_eq!(kept, on_disk(s, "a"));
            // Asked twice: the second answer is the kept one.
            assert_eq!(s.get("a").unwrap(), kept);
            kept
        };
        same(&s);
        s.set_state("a", SandboxState::Running).unwrap();
        assert_eq!(same(&s).unwrap().state, SandboxState::Running);
        let mut spec = record("a", None).spec;
        spec.template = "other".into();
        s.set_spec("a", &spec).unwrap();
        assert_eq!(same(&s).unwrap().spec.template, "other");
        s.set_timeouts("a", None, Some(5), TimeoutAction::Stop)
            .unwrap();
        assert_eq!(same(&s).unwrap().idle_timeout_secs, Some(5));
        s.set_pool("a", Some("pool")).unwrap();
        same(&s);
        let mut claim = record("ignored", Some("mine"));
        claim.owner = "bob".into();
        claim.created_at = 7;
        assert_eq!(s.claim_from_pool("pool", &claim).unwrap().unwrap().id, "a");
        let claimed = same(&s).unwrap();
        assert_eq!((claimed.owner.as_str(), claimed.created_at), ("bob", 7));
        // The claim wrote its activity: a call within the second writes nothing.
        s.touch("a", 7 + 300).unwrap();
        assert_eq!(on_disk(&s, "a").unwrap().last_active_at, 7);
        s.set_state("a", SandboxState::Terminated).unwrap();
        let end = same(&s).unwrap().last_active_at;
        s.prune_terminated(end + 1).unwrap();
        assert_eq!(same(&s), None);
    }

    #[test]
    fn a_tenants_running_sandboxes_are_listed_with_their_pool_keys() {
        let s = Store::in_memory().unwrap();
        for (id, tenant, state) in [
            ("warm", "@pool", SandboxState::Running),
            ("unmarked", "@pool", SandboxState::Running),
            ("gone", "@pool", SandboxState::Terminated),
            ("someone's", "t", SandboxState::Running),
        ] {
            let mut r = record(id, None);
            r.tenant = tenant.into();
            s.insert(&r).unwrap();
            s.set_state(id, state).unwrap();
        }
        s.set_pool("warm", Some("key")).unwrap();
        let mut listed = s.running_of_tenant("@pool").unwrap();
        listed.sort();
        assert_eq!(
            listed,
            [
                ("unmarked".to_string(), None, 1),
                ("warm".to_string(), Some("key".to_string()), 1)
            ]
        );
    }

    #[test]
    fn a_new_rows_first_second_of_activity_is_not_written_again() {
        let s = Store::in_memory().unwrap();
        let t = 5_000_000;
        let mut r = record("n", None);
        (r.created_at, r.last_active_at) = (t, t);
        s.insert(&r).unwrap();
        s.set_state("n", SandboxState::Running).unwrap();
        // The insert wrote `t`: a call within the second is kept in memory only.
        s.touch("n", t + 300).unwrap();
        assert_eq!(on_disk(&s, "n").unwrap().last_active_at, t);
        assert_eq!(s.get("n").unwrap().unwrap().last_active_at, t + 300);
        s.touch("n", t + ACTIVITY_WRITE_MS).unwrap();
        assert_eq!(
            on_disk(&s, "n").unwrap().last_active_at,
            t + ACTIVITY_WRITE_MS
        );
        // A name refused writes nothing of its own.
        let mut dup = record("m", Some("taken"));
        s.insert(&dup).unwrap();
        dup.id = "o".into();
        assert!(s.insert(&dup).is_err());
        assert!(s.activity.borrow().get("o").is_none());
    }

    #[test]
    fn activity_is_written_once_a_second_and_read_at_once() {
        let s = Store::in_memory().unwrap();
        s.insert(&record("a", None)).unwrap();
        s.set_state("a", SandboxState::Running).unwrap();
        let t = 1_000_000;
        s.touch("a", t).unwrap();
        assert_eq!(on_disk(&s, "a").unwrap().last_active_at, t);
        // Within the second: in memory, and every read carries it.
        s.touch("a", t + 400).unwrap();
        s.touch("a", t + 300).unwrap();
        assert_eq!(on_disk(&s, "a").unwrap().last_active_at, t);
        assert_eq!(s.get("a").unwrap().unwrap().last_active_at, t + 400);
        assert_eq!(s.list_live(None).unwrap()[0].last_active_at, t + 400);
        assert_eq!(s.list_live(Some("t")).unwrap()[0].last_active_at, t + 400);
        // A second after the last write: written.
        s.touch("a", t + ACTIVITY_WRITE_MS).unwrap();
        assert_eq!(
            on_disk(&s, "a").unwrap().last_active_at,
            t + ACTIVITY_WRITE_MS
        );
        // Due by its row (idle 60 s from t), but its activity in memory is newer: the
        // reaper is told of it and finds it not due.
        s.set_timeouts("a", None, Some(60), TimeoutAction::Pause)
            .unwrap();
        let idle_at = t + ACTIVITY_WRITE_MS + 60_000;
        assert!(s.list_due(idle_at - 1).unwrap().is_empty());
        s.touch("a", t + ACTIVITY_WRITE_MS + 10).unwrap();
        let due = s.list_due(idle_at).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].last_active_at, t + ACTIVITY_WRITE_MS + 10);
        // Its lifetime, without an idle timeout: due from `expires_at` on.
        s.set_timeouts("a", Some(idle_at + 5), None, TimeoutAction::Stop)
            .unwrap();
        assert!(s.list_due(idle_at + 4).unwrap().is_empty());
        assert_eq!(s.list_due(idle_at + 5).unwrap().len(), 1);
        // Another sandbox's activity is its own.
        s.insert(&record("b", None)).unwrap();
        assert_eq!(s.get("b").unwrap().unwrap().last_active_at, 1);
        // Its end is its last activity, whatever was kept in memory.
        s.touch("a", i64::MAX / 2).unwrap();
        s.set_state("a", SandboxState::Terminated).unwrap();
        let end = s.get("a").unwrap().unwrap().last_active_at;
        assert_eq!(end, on_disk(&s, "a").unwrap().last_active_at);
        assert!(end < i64::MAX / 2);
    }

    #[test]
    fn records_round_trip() {
        let s = Store::in_memory().unwrap();
        let r = record("a", Some("lab"));
        s.insert(&r).unwrap();
        assert_eq!(s.get("a").unwrap().unwrap(), r);
        assert_eq!(s.by_name("t", "alice", "lab").unwrap().unwrap().id, "a");
    }

    #[test]
    fn names_are_unique_per_owner_until_terminated() {
        let s = Store::in_memory().unwrap();
        s.insert(&record("a", Some("lab"))).unwrap();
        assert!(matches!(
            s.insert(&record("b", Some("lab"))),
            Err(StoreError::NameTaken(_))
        ));
        let mut other = record("c", Some("lab"));
        other.owner = "bob".into();
        s.insert(&other).unwrap();
        s.set_state("a", SandboxState::Terminated).unwrap();
        s.insert(&record("d", Some("lab"))).unwrap();
        assert_eq!(s.list_live(Some("t")).unwrap().len(), 2);
    }

    #[test]
    fn a_corrupt_file_is_refused_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("warren.db");
        std::fs::write(
            &p,
            b"this is not a database, and it is long enough to matter....",
        )
        .unwrap();
        let e = Store::open(&p).unwrap_err();
        assert!(e.to_string().contains("move it aside"), "{e}");
        assert!(std::fs::read(&p).unwrap().starts_with(b"this is not"));
    }

    #[test]
    fn events_are_kept_per_sandbox_in_order() {
        let s = Store::in_memory().unwrap();
        for i in 0..5 {
            s.add_event(&EventRow {
                time: i,
                sandbox: "a".into(),
                owner: "o".into(),
                kind: "k".into(),
                message: format!("m{i}"),
            })
            .unwrap();
        }
        let ev = s.events_of("a", 3).unwrap();
        assert_eq!(
            ev.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            ["m2", "m3", "m4"]
        );
    }
}
