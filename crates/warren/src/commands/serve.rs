//! `warren serve`: the daemon. Opens the engine (re-adopting sandboxes a previous daemon
//! left running), makes sure the default tenant has an API key, and serves the REST API
//! on a unix socket and optionally on TCP until SIGINT or SIGTERM. Sandboxes outlive it.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use warren_core::{Config, Manager};
use warren_runtime::Paths;
use warren_server::e2b::E2bOptions;
use warren_server::Limits;

/// Run the daemon: the REST API on a unix socket (and optionally TCP).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Unix socket to serve on [default: $WARREN_RUN_DIR/warren.sock]
    #[arg(long, value_name = "PATH", env = "WARREN_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Also serve on this TCP address (API key or sandbox token required), e.g. 127.0.0.1:7070
    #[arg(long, value_name = "ADDR", env = "WARREN_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Also serve the E2B API (control plane and envd) on this TCP address, e.g. 127.0.0.1:3001
    #[arg(long, value_name = "ADDR", env = "WARREN_E2B_LISTEN")]
    pub e2b_listen: Option<SocketAddr>,
    /// Serve the E2B API over TLS with this certificate chain (PEM; for DOMAIN and
    /// *.DOMAIN, the `E2B_DOMAIN` of its clients). Needs --e2b-tls-key.
    #[arg(long, value_name = "PEM", requires_all = ["e2b_listen", "e2b_tls_key"])]
    pub e2b_tls_cert: Option<PathBuf>,
    /// The private key of --e2b-tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "e2b_tls_cert")]
    pub e2b_tls_key: Option<PathBuf>,
    /// Serve the E2B API over TLS with a self-signed certificate for DOMAIN and
    /// *.DOMAIN, made once and kept in the data directory (`e2b-tls/cert.pem` is what
    /// clients trust), for trying it out.
    #[arg(
        long,
        value_name = "DOMAIN",
        requires = "e2b_listen",
        conflicts_with = "e2b_tls_cert"
    )]
    pub e2b_tls_self_signed: Option<String>,
    /// Also serve the SSH gateway on this TCP address, e.g. 0.0.0.0:2222: `ssh -p 2222
    /// OWNER+SANDBOX@host` with a key registered by `warren keys ssh add`. The host key is
    /// made on first start and kept in the data directory (`ssh/host_ed25519_key`).
    #[arg(long, value_name = "ADDR", env = "WARREN_SSH_LISTEN")]
    pub ssh_listen: Option<SocketAddr>,
    /// A TOML file of limits: defaults, maxima, per-tenant quotas, publishable host ports
    /// (see docs/api.md, "Limits and quotas"), TCP connections ("Connections on TCP")
    /// [default: /etc/warren/warren.toml, when it exists]
    #[arg(long, value_name = "PATH", env = "WARREN_CONFIG")]
    pub config: Option<PathBuf>,
    /// How the log (stderr) is written: `text` for people, `json` (one object a line)
    /// for log shippers. Which lines: `WARREN_LOG`, else `RUST_LOG` (e.g. `info`,
    /// `warren::request=off`, `debug`) [default: info]
    #[arg(long, value_name = "FORMAT", env = "WARREN_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Check the configuration (--config, else the default file; every key and value, the
    /// TLS files it names) and exit: 0 when the daemon would start with it, 1 with the
    /// key at fault otherwise.
    #[arg(long)]
    pub check_config: bool,
    /// Start from a backup (`warren backup FILE`) instead of the store in the data
    /// directory, which is kept beside it (`warren.db.before-restore-TIME`). Sandboxes the
    /// backup knows and that still run are adopted; the others are marked stopped.
    #[arg(long, value_name = "FILE")]
    pub restore: Option<PathBuf>,
}

/// The log's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Starts the log: requests (`warren::request`) and lifecycle changes
/// (`warren::lifecycle`) at info, filtered by `WARREN_LOG` (else `RUST_LOG`, as other
/// Rust daemons read it).
fn start_log(format: LogFormat) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let set = ["WARREN_LOG", "RUST_LOG"]
        .into_iter()
        .find_map(|var| std::env::var(var).ok().map(|f| (var, f)));
    let filter = match set {
        Some((var, f)) => EnvFilter::try_new(&f)
            .with_context(|| format!("{var}={f:?}: use a level (info) or target=level pairs"))?,
        None => EnvFilter::new("info"),
    };
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let started = match format {
        LogFormat::Text => log.with_ansi(false).try_init(),
        LogFormat::Json => log.json().try_init(),
    };
    started.map_err(|e| anyhow::anyhow!("cannot start the log: {e}"))
}

/// What a `--config` file holds.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeConfig {
    #[serde(default)]
    limits: warren_core::policy::PolicyConfig,
    /// How often the disk each sandbox takes is measured, in seconds.
    #[serde(default)]
    disk_measure_secs: Option<u64>,
    #[serde(default)]
    connections: ConnectionsConfig,
    #[serde(default)]
    backends: BackendsConfig,
    #[serde(default)]
    e2b: E2bConfig,
    #[serde(default)]
    serve: ServeTable,
}

/// The `[serve]` table: the listeners and the log, as the flags of the same names
/// (which win over it).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeTable {
    socket: Option<PathBuf>,
    listen: Option<SocketAddr>,
    e2b_listen: Option<SocketAddr>,
    ssh_listen: Option<SocketAddr>,
    log_format: Option<LogFormat>,
}

/// The `[e2b]` table: choices E2B leaves to the operator.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct E2bConfig {
    /// Whether an E2B create that does not say `allow_internet_access` gets outbound
    /// network (`nat`), as on E2B [default: true].
    internet_access: Option<bool>,
    /// TLS on the E2B listener: a certificate chain and its key (PEM files).
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// The `[backends]` table: which isolation a request that names none gets, and the
/// settings of the backends that need the operator's word.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendsConfig {
    /// `namespace` unless set.
    default: Option<warren_types::spec::Isolation>,
    /// Trust mode, off unless this table is present.
    process: Option<ProcessBackendConfig>,
    /// Which runsc, and its platform.
    gvisor: Option<warren_runtime::gvisor::GvisorConfig>,
    /// Which runc, and its global flags.
    runc: Option<warren_runtime::runc::RuncConfig>,
    /// Which crun, and its global flags (`binary` may name another runc-compatible
    /// runtime; see docs/design.md).
    crun: Option<warren_runtime::runc::RuncConfig>,
}

/// `[backends.process]`: the host user and directory of trust-mode sandboxes, and the
/// tenants besides the operator that may ask for them.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessBackendConfig {
    user: String,
    dir: PathBuf,
    #[serde(default)]
    tenants: Vec<String>,
}

/// The `[connections]` table: how the TCP listeners' connections are bounded. Each
/// value left out keeps its default.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionsConfig {
    header_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    max_per_peer: Option<usize>,
}

impl ConnectionsConfig {
    fn limits(&self) -> anyhow::Result<Limits> {
        let counts = [
            ("header_timeout_secs", self.header_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("max_connections", self.max_connections.map(|n| n as u64)),
            ("max_per_peer", self.max_per_peer.map(|n| n as u64)),
        ];
        for (name, v) in counts {
            anyhow::ensure!(v != Some(0), "connections.{name} must be at least 1");
        }
        let d = Limits::default();
        let secs = std::time::Duration::from_secs;
        Ok(Limits {
            header_timeout: self.header_timeout_secs.map_or(d.header_timeout, secs),
            idle_timeout: self.idle_timeout_secs.map_or(d.idle_timeout, secs),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_per_peer: self.max_per_peer.unwrap_or(d.max_per_peer),
        })
    }
}

/// The configuration read when neither `--config` nor `WARREN_CONFIG` names one, if it
/// exists.
pub const DEFAULT_CONFIG: &str = "/etc/warren/warren.toml";

/// The file the daemon reads: the one named, else `default` when it exists. A file named
/// must exist; the default may not.
fn config_file(named: Option<&Path>, default: &Path) -> Option<PathBuf> {
    match named {
        Some(p) => Some(p.to_path_buf()),
        None => default.exists().then(|| default.to_path_buf()),
    }
}

/// The daemon's configuration, its connection limits, and the E2B surface's options and
/// TLS files (certificate, key) when the file names them.
type Loaded = (
    Config,
    Limits,
    E2bOptions,
    Option<(PathBuf, PathBuf)>,
    ServeTable,
);

/// The prefix of a variable that sets one key of the configuration: `WARREN__` then the
/// key's path with `__` between tables, e.g. `WARREN__LIMITS__DEFAULTS__MEMORY=2G` for
/// `[limits.defaults] memory` (keys hold single underscores, so the double one is never
/// ambiguous).
pub const ENV_PREFIX: &str = "WARREN__";

/// Sets in `table` each key a variable of `vars` (from [`override_vars`]) names, over the
/// file's value; the value is read as TOML (`8`, `true`, `["a"]`), else taken as a
/// string.
fn env_overrides(table: &mut toml::Table, vars: &[(String, String)]) -> anyhow::Result<()> {
    for (var, value) in vars {
        let keys: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        anyhow::ensure!(
            keys.iter().all(|k| !k.is_empty()),
            "{var}: name a key, as WARREN__TABLE__KEY (tables and key joined by `__`)"
        );
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let (last, tables) = keys.split_last().expect("at least one key");
        let mut at = &mut *table;
        for (i, k) in tables.iter().enumerate() {
            let entry = at
                .entry(k.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            at = entry.as_table_mut().ok_or_else(|| {
                anyhow::anyhow!("{var}: {} is a value, not a table", keys[..=i].join("."))
            })?;
        }
        at.insert(last.clone(), parsed);
    }
    Ok(())
}

/// The `WARREN__...` variables of `env` (this process's: `std::env::vars_os()`),
/// sorted; one that is not UTF-8 is an error naming it.
fn override_vars(
    env: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut vars = Vec::new();
    for (k, v) in env {
        if !k.as_encoded_bytes().starts_with(ENV_PREFIX.as_bytes()) {
            continue;
        }
        match (k.into_string(), v.into_string()) {
            (Ok(k), Ok(v)) => vars.push((k, v)),
            (k, _) => anyhow::bail!("{k:?}: a configuration variable must be UTF-8"),
        }
    }
    vars.sort();
    Ok(vars)
}

/// The names of this process's `WARREN__...` variables, sorted.
fn override_names() -> anyhow::Result<Vec<String>> {
    Ok(override_vars(std::env::vars_os())?
        .into_iter()
        .map(|(k, _)| k)
        .collect())
}

/// Where the configuration came from, as errors name it.
fn config_source(path: Option<&Path>, vars: &[String]) -> String {
    match (path, vars) {
        (Some(p), []) => format!("configuration {}", p.display()),
        (Some(p), v) => format!("configuration {} with {}", p.display(), v.join(", ")),
        (None, v) => format!("configuration from {}", v.join(", ")),
    }
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Loaded> {
    let paths = Paths::from_env();
    let exe = std::env::current_exe().context("cannot find the warren binary")?;
    let mut config = Config::new(paths, exe);
    let mut table = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the configuration {}", path.display()))?;
            text.parse::<toml::Table>()
                .with_context(|| format!("configuration {}", path.display()))?
        }
        None => toml::Table::new(),
    };
    let overrides = override_vars(std::env::vars_os())?;
    env_overrides(&mut table, &overrides)?;
    let vars: Vec<String> = overrides.into_iter().map(|(k, _)| k).collect();
    if path.is_none() && vars.is_empty() {
        return Ok((
            config,
            Limits::default(),
            E2bOptions::default(),
            None,
            ServeTable::default(),
        ));
    }
    let source = config_source(path, &vars);
    let file: ServeConfig = serde::Deserialize::deserialize(toml::Value::Table(table))
        .with_context(|| source.clone())?;
    config.policy =
        warren_core::policy::Policy::from_config(&file.limits).with_context(|| source.clone())?;
    if let Some(s) = file.disk_measure_secs {
        anyhow::ensure!(s > 0, "{source}: disk_measure_secs must be at least 1");
        config.disk_interval = std::time::Duration::from_secs(s);
    }
    let limits = file.connections.limits().with_context(|| source.clone())?;
    if let Some(d) = file.backends.default {
        config.isolation = d;
    }
    config.gvisor = file.backends.gvisor;
    config.runc = file.backends.runc;
    config.crun = file.backends.crun;
    if let Some(p) = file.backends.process {
        anyhow::ensure!(
            p.dir.is_absolute(),
            "{source}: backends.process.dir must be an absolute path"
        );
        config.process = Some(warren_runtime::process::ProcessConfig {
            user: p.user,
            dir: p.dir,
        });
        config.process_tenants = p.tenants;
    }
    let e2b = E2bOptions {
        internet_by_default: file.e2b.internet_access.unwrap_or(true),
    };
    let tls = match (file.e2b.tls_cert, file.e2b.tls_key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => anyhow::bail!("{source}: e2b.tls_cert and e2b.tls_key go together"),
    };
    Ok((config, limits, e2b, tls, file.serve))
}

/// `--check-config`: 0 when the daemon would start with the configuration at `path` (and
/// the TLS files of the flags), 1 naming what is at fault, as docs/api.md says.
fn check(args: &ServeArgs, path: Option<&Path>) -> ExitCode {
    let checked = load_config(path).and_then(|(_, _, _, tls_files, _)| {
        let tls_files = match (&args.e2b_tls_cert, &args.e2b_tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            _ => tls_files,
        };
        if let Some((cert, key)) = &tls_files {
            warren_server::tls::server_config(cert, key).context("e2b.tls_cert / e2b.tls_key")?;
        }
        Ok(())
    });
    if let Err(e) = checked {
        eprintln!("warren: {}", crate::term::clean(&format!("{e:#}")));
        return ExitCode::from(1);
    }
    let vars = override_names().unwrap_or_default();
    match (path, vars.is_empty()) {
        (None, true) => println!(
            "no configuration: neither --config nor WARREN_CONFIG names a file, and \
             {DEFAULT_CONFIG} does not exist; the daemon starts with its defaults"
        ),
        _ => println!("{}: ok", config_source(path, &vars)),
    }
    ExitCode::SUCCESS
}

/// The tenant whose key is made on first start.
const DEFAULT_TENANT: &str = "default";

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config_path = config_file(args.config.as_deref(), Path::new(DEFAULT_CONFIG));
    if args.check_config {
        return Ok(check(&args, config_path.as_deref()));
    }
    let (config, limits, e2b, tls_files, file) = load_config(config_path.as_deref())?;
    let tls_files = match (args.e2b_tls_cert, args.e2b_tls_key) {
        (Some(c), Some(k)) => Some((c, k)),
        _ => tls_files,
    };
    // A flag wins over the file's `[serve]` table.
    let args = ServeArgs {
        socket: args.socket.or(file.socket),
        listen: args.listen.or(file.listen),
        e2b_listen: args.e2b_listen.or(file.e2b_listen),
        ssh_listen: args.ssh_listen.or(file.ssh_listen),
        log_format: args.log_format.or(file.log_format),
        e2b_tls_cert: None,
        e2b_tls_key: None,
        ..args
    };
    start_log(args.log_format.unwrap_or(LogFormat::Text))?;
    // The default file is read unasked: the log says which file, if any, was.
    let vars = override_names()?;
    match &config_path {
        Some(p) => tracing::info!(path = %p.display(), variables = ?vars, "configuration read"),
        None if vars.is_empty() => tracing::info!("no configuration file: the defaults"),
        None => {
            tracing::info!(variables = ?vars, "no configuration file: the defaults and the variables")
        }
    }
    let paths = config.paths.clone();
    let socket = args.socket.unwrap_or_else(|| paths.run.join("warren.sock"));
    if let Some(backup) = &args.restore {
        // The store must not be open: a daemon answering on the socket still has it.
        anyhow::ensure!(
            std::os::unix::net::UnixStream::connect(&socket).is_err(),
            "a daemon is running on {}: stop it before restoring its store",
            socket.display()
        );
        std::fs::create_dir_all(&paths.data)
            .with_context(|| format!("cannot create {}", paths.data.display()))?;
        let store = paths.data.join("warren.db");
        let kept = warren_core::Store::restore(backup, &store)
            .with_context(|| format!("cannot restore {}", backup.display()))?;
        match kept {
            Some(old) => eprintln!(
                "warren: store restored from {}; the one it replaced is {}",
                backup.display(),
                old.display()
            ),
            None => eprintln!("warren: store restored from {}", backup.display()),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Before the engine opens and any helper is forked (they must see the mount); undone
    // as the daemon stops, below.
    use warren_runtime::rundir::{self, Placed};
    paths.secure().context("cannot use the state directories")?;
    match rundir::keep_in_memory(&paths) {
        Ok(Placed::Mounted) => tracing::info!("sandboxes' run directories on a tmpfs of their own"),
        Ok(Placed::OnDisk(why)) => {
            tracing::info!("sandboxes' run directories stay on the disk: {why}")
        }
        Ok(Placed::InMemory) => {}
        Err(e) => tracing::warn!("sandboxes' run directories stay on the disk: {e}"),
    }
    let run_paths = paths.clone();
    let served = rt.block_on(async move {
        let mgr = Manager::open(config)
            .await
            .context("cannot open the engine")?;
        ensure_default_key(&mgr, &paths.data.join("api-key"))?;
        let tls = match (&args.e2b_tls_self_signed, tls_files) {
            (Some(domain), _) => {
                let (cert, key) =
                    warren_server::tls::self_signed(&paths.data.join("e2b-tls"), domain)
                        .context("cannot make the self-signed certificate")?;
                eprintln!(
                    "warren: E2B TLS with a self-signed certificate for {domain} and *.{domain}; \
                     clients trust {}",
                    cert.display()
                );
                Some(warren_server::tls::server_config(&cert, &key)?)
            }
            (None, Some((cert, key))) => Some(warren_server::tls::server_config(&cert, &key)?),
            (None, None) => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (listen, e2b_addr, shown) = (args.listen, args.e2b_listen, socket.clone());
        let ssh = args.ssh_listen.map(|addr| warren_server::ssh::SshListener {
            addr,
            host_key: paths.data.join("ssh/host_ed25519_key"),
        });
        let ssh_shown = ssh.clone();
        let ready = move || {
            eprintln!("warren: serving on {}", shown.display());
            if let Some(addr) = listen {
                eprintln!("warren: serving on http://{addr} (API key required)");
            }
            if let Some(addr) = e2b_addr {
                eprintln!("warren: serving the E2B API on {scheme}://{addr}");
            }
            if let Some(l) = ssh_shown {
                let key = warren_server::ssh::host_key(&l.host_key)
                    .map(|k| warren_server::ssh::fingerprint(&k))
                    .unwrap_or_default();
                eprintln!("warren: serving SSH on {} (host key {key})", l.addr);
            }
            if let Err(e) = notify_ready() {
                eprintln!("warren: cannot tell the service manager it is ready: {e}");
            }
        };
        let e2b_listen = args.e2b_listen.map(|addr| warren_server::E2bListener {
            addr,
            options: e2b,
            tls,
        });
        warren_server::serve_with(mgr, socket, args.listen, e2b_listen, ssh, limits, ready)
            .await
            .context("cannot serve")
    });
    // However it ended, the engine failing to open included.
    if let Err(e) = rundir::release(&run_paths) {
        tracing::warn!("cannot unmount the sandboxes' run directories: {e}");
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Tells the service manager that started it (systemd's `Type=notify`, through
/// `$NOTIFY_SOCKET`) that every listener is bound. Nothing without one.
fn notify_ready() -> std::io::Result<()> {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(at) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    // What it starts inherits the variable; systemd takes notifications from the main
    // process only (NotifyAccess=main), so theirs change nothing.
    let at = at.to_string_lossy().into_owned();
    let addr = match at.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(&at)?,
    };
    let msg = format!("READY=1\nMAINPID={}\nSTATUS=serving\n", std::process::id());
    UnixDatagram::unbound()?.send_to_addr(msg.as_bytes(), &addr)?;
    Ok(())
}

/// On first start, mints the default tenant's key and leaves it where only root reads it.
fn ensure_default_key(mgr: &Manager, path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let key = mgr
        .create_api_key(DEFAULT_TENANT, false)
        .context("cannot create the default API key")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(key.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "API key for tenant {DEFAULT_TENANT} written to {}",
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connections(text: &str) -> anyhow::Result<Limits> {
        let file: ServeConfig = toml::from_str(text)?;
        file.connections.limits()
    }

    #[test]
    fn the_file_named_wins_and_the_default_is_read_only_when_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("warren.toml");
        let named = Path::new("/elsewhere/warren.toml");
        assert_eq!(config_file(None, &default), None);
        assert_eq!(config_file(Some(named), &default).as_deref(), Some(named));
        std::fs::write(&default, "").unwrap();
        assert_eq!(config_file(None, &default), Some(default.clone()));
        assert_eq!(config_file(Some(named), &default).as_deref(), Some(named));
    }

    #[test]
    fn connections_keep_the_defaults_they_do_not_name() {
        assert_eq!(connections("").unwrap(), Limits::default());
        let l = connections("[connections]\nidle_timeout_secs = 5\nmax_per_peer = 8").unwrap();
        assert_eq!(l.idle_timeout, std::time::Duration::from_secs(5));
        assert_eq!(l.max_per_peer, 8);
        assert_eq!(l.header_timeout, Limits::default().header_timeout);
        assert_eq!(l.max_connections, Limits::default().max_connections);
        let zero = connections("[connections]\nmax_connections = 0").unwrap_err();
        assert!(zero.to_string().contains("max_connections"), "{zero}");
        assert!(connections("[connections]\nmax_conections = 5").is_err());
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    /// Applies `pairs` as this process's variables would be.
    fn apply(t: &mut toml::Table, pairs: &[(&str, &str)]) -> anyhow::Result<()> {
        env_overrides(t, &override_vars(vars(pairs))?)
    }

    #[test]
    fn a_variable_sets_one_key_over_the_file() {
        let mut t: toml::Table = "[connections]\nmax_per_peer = 8\nmax_connections = 100\n"
            .parse()
            .unwrap();
        let used = override_vars(vars(&[
            ("WARREN__CONNECTIONS__MAX_PER_PEER", "16"),
            ("WARREN__LIMITS__DEFAULTS__MEMORY", "2G"),
            ("WARREN__SERVE__LISTEN", "127.0.0.1:7070"),
            ("WARREN__BACKENDS__PROCESS__TENANTS", "[\"alice\"]"),
            ("WARREN_LISTEN", "not a key"),
            ("HOME", "/root"),
        ]))
        .unwrap();
        assert_eq!(used.len(), 4, "{used:?}");
        assert_eq!(
            used[0].0, "WARREN__BACKENDS__PROCESS__TENANTS",
            "sorted: {used:?}"
        );
        env_overrides(&mut t, &used).unwrap();
        assert_eq!(t["connections"]["max_per_peer"].as_integer(), Some(16));
        assert_eq!(t["connections"]["max_connections"].as_integer(), Some(100));
        assert_eq!(t["limits"]["defaults"]["memory"].as_str(), Some("2G"));
        assert_eq!(t["serve"]["listen"].as_str(), Some("127.0.0.1:7070"));
        assert_eq!(
            t["backends"]["process"]["tenants"].as_array().map(Vec::len),
            Some(1)
        );
        let file: ServeConfig = serde::Deserialize::deserialize(toml::Value::Table(
            t.into_iter().filter(|(k, _)| k != "backends").collect(),
        ))
        .unwrap();
        assert_eq!(file.connections.max_per_peer, Some(16));
    }

    #[test]
    fn a_variable_naming_no_key_or_a_value_as_a_table_is_refused() {
        let mut t: toml::Table = "disk_measure_secs = 5\n".parse().unwrap();
        let e = apply(&mut t, &[("WARREN__", "1")]).unwrap_err();
        assert!(e.to_string().contains("WARREN__:"), "{e}");
        let e = apply(&mut t, &[("WARREN__LIMITS____MEMORY", "1")]).unwrap_err();
        assert!(e.to_string().contains("name a key"), "{e}");
        let e = apply(&mut t, &[("WARREN__DISK_MEASURE_SECS__X", "1")]).unwrap_err();
        assert!(
            e.to_string().contains("disk_measure_secs is a value"),
            "{e}"
        );
        assert_eq!(
            config_source(Some(Path::new("/etc/w.toml")), &["WARREN__A".into()]),
            "configuration /etc/w.toml with WARREN__A"
        );
    }
}
