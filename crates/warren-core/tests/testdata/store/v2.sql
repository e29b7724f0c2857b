-- A store as schema 2 made it (commit bc2cf76), which added warm pools
-- (sandboxes.pool_key).
-- Its CREATE statements as that version ran them, then rows such as it wrote them;
-- it recorded no schema version (PRAGMA user_version is 0).

CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    hash TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(name),
    created_at INTEGER NOT NULL
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
    pool_key TEXT
);
CREATE INDEX IF NOT EXISTS sandbox_pools ON sandboxes(pool_key, state) WHERE pool_key IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS sandbox_names ON sandboxes(tenant, owner, name)
    WHERE name IS NOT NULL AND state != 'terminated';
CREATE INDEX IF NOT EXISTS sandbox_states ON sandboxes(state);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time INTEGER NOT NULL,
    sandbox TEXT NOT NULL,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_sandbox ON events(sandbox, seq);

INSERT INTO tenants (name, created_at) VALUES ('default', 1764000000000), ('acme', 1764000000001);
INSERT INTO api_keys (hash, tenant, created_at) VALUES
    ('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'default', 1764000000000),
    ('bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 'acme', 1764000000005);
INSERT INTO sandboxes (id, tenant, owner, name, state, spec, labels, metadata, created_at, last_active_at, expires_at, idle_timeout_secs, on_timeout, access_token, pool_key) VALUES
    ('sb-live', 'default', 'alice', 'lab', 'running', '{"id":"sb-live","template":"python","hostname":"lab","resources":{"memory":536870912,"cpu_millis":500,"pids":256,"disk":null},"network":"nat","publish":[{"host":8080,"sandbox":80}],"volumes":[{"name":"data","target":"/data","size":1073741824}],"env":{"LANG":"C.UTF-8"}}', '{"team":"a"}', '{"purpose":"ci"}', 1764000000010, 1764000000020, 1764003600000, 600, 'pause', '5f1c0a9e7b3d4c2a8e6f1b0d9c7a5e3f2b4d6c8a0e1f3b5d', NULL),
    ('sb-paused', 'acme', 'bob', NULL, 'paused', '{"id":"sb-paused","template":"base","hostname":null,"resources":{"memory":null,"cpu_millis":null,"pids":null,"disk":null},"network":"none","publish":[],"volumes":[],"env":{}}', '{}', '{}', 1764000000030, 1764000000040, NULL, NULL, 'terminate', 'c3e5a7b9d1f2e4c6a8b0d2f4e6c8a0b2d4f6e8c0a2b4d6f8', NULL),
    ('sb-gone', 'default', 'alice', NULL, 'terminated', '{"id":"sb-gone","template":"base","hostname":null,"resources":{"memory":null,"cpu_millis":null,"pids":null,"disk":null},"network":"none","publish":[],"volumes":[],"env":{}}', '{}', '{}', 1764000000050, 1764000000060, NULL, 300, 'stop', '0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f', NULL),
    ('sb-stopped', 'default', 'alice', 'old', 'stopped', '{"id":"sb-stopped","template":"base","hostname":null,"resources":{"memory":null,"cpu_millis":null,"pids":null,"disk":null},"network":"none","publish":[],"volumes":[],"env":{}}', '{"keep":"yes"}', '{}', 1764000000070, 1764000000080, NULL, NULL, 'stop', '9f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c6b5a49382', NULL),
    ('sb-warm', '@pool', '@pool', NULL, 'running', '{"id":"sb-warm","template":"base","hostname":null,"resources":{"memory":null,"cpu_millis":null,"pids":null,"disk":null},"network":"none","publish":[],"volumes":[],"env":{}}', '{}', '{}', 1764000000090, 1764000000090, NULL, NULL, 'terminate', '1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e', '{"template":"base","resources":{"memory":268435456,"cpu_millis":null,"pids":null,"disk":null},"network":"none"}');
INSERT INTO events (time, sandbox, owner, kind, message) VALUES
    (1764000000010, 'sb-live', 'alice', 'created', 'created from python'),
    (1764000000015, 'sb-live', 'alice', 'paused', 'idle for 600s'),
    (1764000000016, 'sb-live', 'alice', 'resumed', 'exec'),
    (1764000000060, 'sb-gone', 'alice', 'terminated', 'removed');
