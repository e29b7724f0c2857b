//! `warren template`: import an image archive, build from a base template, list, inspect,
//! remove, collect unused layers, and show disk use. The daemon does the work; a build's
//! steps stream their output here under a progress line.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use hyper::Method;
use indicatif::{ProgressBar, ProgressStyle};
use warren_core::{
    BuildEvent, BuildTemplate, DiskUsage, ImportEvent, ImportResult, ImportTemplate, LayerGcResult,
    TemplateInfo,
};

use crate::client::{block_on, connect, enc, out, Client, ClientArgs, Lines};
use crate::format::{parse_format, Format, ListOutput};
use crate::parse::parse_env;
use warren_types::size::{parse_duration, parse_size};

/// Manage templates: the root filesystems sandboxes are made from.
#[derive(Debug, Args)]
pub struct TemplateArgs {
    #[command(subcommand)]
    command: TemplateCommand,
}

#[derive(Debug, Subcommand)]
enum TemplateCommand {
    Import(ImportArgs),
    Base(BaseArgs),
    /// Build E2B's `code-interpreter-v1` template from `base`: Jupyter kernels for Python
    /// (ipykernel, with numpy, pandas and matplotlib) and bash (bash_kernel) from PyPI, and
    /// Warren's server of E2B's code-interpreter protocol on port 49999, so
    /// `e2b_code_interpreter.Sandbox.create()` and `run_code` work. The build needs PyPI.
    CodeInterpreter(RecipeArgs),
    /// Build a `jupyterlab` template from `base`: JupyterLab and a Python kernel from PyPI,
    /// its server started with each sandbox as `user` in /home/user, on port 8888 of the
    /// sandbox's loopback. Open it in a browser from the web console (the sandbox's Ports
    /// tab, "Open a port in the browser", 8888), or ask for a link with `POST
    /// /v1/sandboxes/{key}/ports/8888/link`. The server asks for no password of its own: the
    /// daemon's port link (or the sandbox's traffic token) is what lets a browser in. The
    /// build needs PyPI.
    Jupyterlab(RecipeArgs),
    Build(BuildArgs),
    Ls(LsArgs),
    /// Show a template as JSON: its layers, size, commands and backend.
    Inspect(InspectArgs),
    /// Remove a template (refused while a sandbox uses it); its layers go with `gc`.
    Rm(NameArgs),
    Gc(GcArgs),
    Du(DuArgs),
}

/// Import a `docker save` or OCI layout archive (.tar, optionally gzip or zstd). On the
/// daemon's host the daemon reads the file; with `--host` it is sent to the daemon, and
/// the template is the API key's tenant's own.
#[derive(Debug, Args)]
struct ImportArgs {
    /// The archive.
    archive: std::path::PathBuf,
    /// The template's name (or `--name`).
    #[arg(
        value_name = "NAME",
        required_unless_present = "name",
        conflicts_with = "name"
    )]
    name_arg: Option<String>,
    /// The template's name (or as the second argument).
    #[arg(long)]
    name: Option<String>,
    /// Run in the background whenever a sandbox of this template starts.
    #[arg(long)]
    start_cmd: Option<String>,
    /// Polled until it exits 0 before the sandbox counts as running.
    #[arg(long)]
    ready_cmd: Option<String>,
    /// How long the ready command may take to succeed [default: 60s].
    #[arg(long, value_parser = parse_duration)]
    ready_timeout: Option<Duration>,
    /// Most bytes the image may unpack to, e.g. 20G [default: 32G].
    #[arg(long, value_parser = parse_size)]
    max_size: Option<u64>,
    /// Isolation backend of its sandboxes when a request names none (namespace, gvisor,
    /// runc, crun or process); an E2B create names none.
    #[arg(long, value_name = "BACKEND")]
    isolation: Option<warren_types::spec::Isolation>,
    /// Keep the image's setuid programs working inside its sandboxes, so its `sudo`
    /// raises a process to the sandbox's root (no further): only for an image you
    /// trust, such as one built from your distribution's packages (see SECURITY.md).
    #[arg(long)]
    setuid: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// Build E2B's `base` template on this host from Debian's packages (debootstrap): python
/// and python3 with pip that installs, git, curl, build tools, and a `user` with
/// passwordless sudo that raises to the sandbox's root and no further. Needs root,
/// debootstrap and the Debian mirror; replaces a template of the same name that no
/// sandbox uses.
#[derive(Debug, Args)]
struct BaseArgs {
    /// The template's name.
    #[arg(long, default_value = "base")]
    name: String,
    /// The Debian release.
    #[arg(long, default_value = "bookworm")]
    suite: String,
    /// The Debian mirror debootstrap fetches from.
    #[arg(long, default_value = "http://deb.debian.org/debian")]
    mirror: String,
    /// More packages, comma-separated.
    #[arg(long, value_name = "PKG,...")]
    include: Option<String>,
    /// Also keep the image archive here (to import it elsewhere, or again, with
    /// `warren template import FILE --name base --setuid`).
    #[arg(long, value_name = "FILE")]
    save: Option<std::path::PathBuf>,
    #[command(flatten)]
    client: ClientArgs,
}

/// Removes template `name` if there is one (a sandbox using it makes this fail).
fn remove_old(client: &Client, name: &str) -> anyhow::Result<()> {
    let path = format!("/v1/templates/{}", enc(name));
    match block_on(client.call_raw(Method::DELETE, &path, None::<&()>))? {
        Ok(_) => eprintln!("warren: the old {name} template is removed"),
        Err(e) if e.code() == Some("not_found") => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// The script that makes `base`'s root filesystem and archive.
const BASE_SCRIPT: &str = include_str!("base-template.sh");

fn base(a: BaseArgs) -> anyhow::Result<ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("warren-base-")
        .tempdir_in("/var/tmp")
        .map_err(|e| anyhow::anyhow!("make a working directory in /var/tmp: {e}"))?;
    let archive = match &a.save {
        Some(p) => std::path::absolute(p)?,
        None => dir.path().join("base.tar"),
    };
    let script = dir.path().join("base-template.sh");
    std::fs::write(&script, BASE_SCRIPT)?;
    let status = std::process::Command::new("bash")
        .arg(&script)
        .env("OUT", &archive)
        .env("SUITE", &a.suite)
        .env("MIRROR", &a.mirror)
        .env("INCLUDE", a.include.as_deref().unwrap_or(""))
        .env("TMPDIR", dir.path())
        .status()
        .map_err(|e| anyhow::anyhow!("run bash: {e}"))?;
    if !status.success() {
        anyhow::bail!("building the {} template's files failed ({status})", a.name);
    }
    // The new one replaces the old only once it is made: remove the old, then import.
    remove_old(&connect(&a.client)?, &a.name)?;
    import(ImportArgs {
        archive,
        name_arg: None,
        name: Some(a.name),
        start_cmd: None,
        ready_cmd: None,
        ready_timeout: None,
        max_size: None,
        isolation: None,
        setuid: true,
        client: a.client,
    })
}

/// How a template of a server recipe (`code-interpreter`, `jupyterlab`) is built.
#[derive(Debug, Args)]
struct RecipeArgs {
    /// The template's name (by default the recipe's: `code-interpreter-v1`, `jupyterlab`).
    #[arg(long)]
    name: Option<String>,
    /// The template it is built on (one with python3 and pip: `warren template base`).
    #[arg(long, default_value = "base")]
    from: String,
    /// Plain output (no progress line) even on a terminal.
    #[arg(long)]
    quiet_progress: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// Warren's code-interpreter server, installed in the template.
const CODE_INTERPRETER: &str = include_str!("code-interpreter.py");

/// The Python packages of the code interpreter, pinned.
const CODE_INTERPRETER_PACKAGES: &str = "ipykernel==6.29.5 jupyter_client==8.6.3 \
     numpy==2.1.3 pandas==2.2.3 matplotlib==3.9.2 bash_kernel==0.10.0";

fn code_interpreter(a: RecipeArgs) -> anyhow::Result<ExitCode> {
    const END: &str = "WARREN_CODE_INTERPRETER_EOF";
    if CODE_INTERPRETER.contains(END) {
        anyhow::bail!("the embedded server holds its own end marker");
    }
    let server = "/opt/warren/code-interpreter.py";
    build_server(
        ServerRecipe {
            steps: vec![
                format!("mkdir -p /opt/warren && cat > {server} <<'{END}'\n{CODE_INTERPRETER}{END}"),
                format!("pip install --no-cache-dir --disable-pip-version-check -q {CODE_INTERPRETER_PACKAGES}"),
                "python3 -m bash_kernel.install --prefix /usr/local >/dev/null".into(),
                // Matplotlib's font cache, made now rather than on the first plot.
                "runuser -u user -- env HOME=/home/user python3 -c 'import matplotlib.pyplot'".into(),
            ],
            start_cmd: format!("python3 {server}"),
            ready_cmd: "curl -sf http://127.0.0.1:49999/health >/dev/null".into(),
            name: "code-interpreter-v1",
        },
        a,
    )
}

/// JupyterLab's packages, pinned.
const JUPYTERLAB_PACKAGES: &str = "jupyterlab==4.2.5 ipykernel==6.29.5";

/// The port JupyterLab listens on inside its sandboxes.
pub const JUPYTERLAB_PORT: u16 = 8888;

fn jupyterlab(a: RecipeArgs) -> anyhow::Result<ExitCode> {
    let port = JUPYTERLAB_PORT;
    build_server(
        ServerRecipe {
            steps: vec![
                format!("pip install --no-cache-dir --disable-pip-version-check -q {JUPYTERLAB_PACKAGES}"),
                // Its configuration: the loopback only, any Host (the daemon's port host
                // names it), no token or password of its own (see the command's help).
                "mkdir -p /etc/jupyter && printf '%s\\n' \
                 \"c.ServerApp.ip = '127.0.0.1'\" \
                 \"c.ServerApp.open_browser = False\" \
                 \"c.ServerApp.allow_remote_access = True\" \
                 \"c.ServerApp.root_dir = '/home/user'\" \
                 \"c.IdentityProvider.token = ''\" \
                 \"c.PasswordIdentityProvider.hashed_password = ''\" \
                 > /etc/jupyter/jupyter_server_config.py"
                    .into(),
            ],
            start_cmd: format!("cd /home/user && SHELL=/bin/bash jupyter lab --port={port}"),
            ready_cmd: format!("curl -sf http://127.0.0.1:{port}/api >/dev/null"),
            name: "jupyterlab",
        },
        a,
    )
}

/// A template that runs a server of its own: the steps that install it, how it starts
/// with each sandbox, how to tell it answers, and the template's name unless the user
/// gives one.
#[derive(Debug)]
struct ServerRecipe {
    steps: Vec<String>,
    start_cmd: String,
    ready_cmd: String,
    name: &'static str,
}

/// Builds `recipe` as template `a.name` (or the recipe's) on `a.from` (network on for the
/// steps), replacing an older one of that name. Its processes, the server among them,
/// run as the base template's `user` in /home/user.
fn build_server(recipe: ServerRecipe, a: RecipeArgs) -> anyhow::Result<ExitCode> {
    let name = a.name.unwrap_or_else(|| recipe.name.to_string());
    remove_old(&connect(&a.client)?, &name)?;
    build(BuildArgs {
        name,
        from: a.from,
        steps: recipe.steps,
        file: None,
        env: Vec::new(),
        workdir: None,
        user: Some("user".into()),
        network: true,
        start_cmd: Some(recipe.start_cmd),
        ready_cmd: Some(recipe.ready_cmd),
        ready_timeout: Some(Duration::from_secs(60)),
        step_timeout: None,
        isolation: None,
        quiet_progress: a.quiet_progress,
        client: a.client,
    })
}

/// Build a template: run steps in a sandbox of a base template and keep the result.
#[derive(Debug, Args)]
struct BuildArgs {
    /// The new template's name (a template of that name is replaced).
    #[arg(long)]
    name: String,
    /// The base template.
    #[arg(long, default_value = "host")]
    from: String,
    /// A shell command to run as root (repeat for several steps, run in order).
    #[arg(long = "run", value_name = "COMMAND")]
    steps: Vec<String>,
    /// A recipe: a text file of steps, one shell command a line, blank lines and lines
    /// starting with `#` skipped (the web console reads the same). Its steps run before
    /// those of `--run`.
    #[arg(long, value_name = "FILE")]
    file: Option<std::path::PathBuf>,
    /// An environment variable of the steps and of the template (NAME=VALUE).
    #[arg(short, long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Working directory of the steps and of the template's processes.
    #[arg(short, long)]
    workdir: Option<String>,
    /// Who the template's processes run as when they name nobody, in their home: a
    /// name, a uid or uid:gid [default: the base template's, else root]. The steps run as
    /// root; a name must exist once they have run (`--run 'useradd -m NAME'`).
    #[arg(short, long)]
    user: Option<String>,
    /// Give the steps outbound network (NAT).
    #[arg(long)]
    network: bool,
    /// Run in the background whenever a sandbox of this template starts.
    #[arg(long)]
    start_cmd: Option<String>,
    /// Polled until it exits 0 before the sandbox counts as running.
    #[arg(long)]
    ready_cmd: Option<String>,
    /// How long the ready command may take to succeed [default: 60s].
    #[arg(long, value_parser = parse_duration)]
    ready_timeout: Option<Duration>,
    /// Most time one step may take [default: 1h].
    #[arg(long, value_parser = parse_duration)]
    step_timeout: Option<Duration>,
    /// Isolation backend of its sandboxes when a request names none (namespace, gvisor,
    /// runc, crun or process); an E2B create names none.
    #[arg(long, value_name = "BACKEND")]
    isolation: Option<warren_types::spec::Isolation>,
    /// Plain output (no progress line) even on a terminal.
    #[arg(long)]
    quiet_progress: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// List templates.
#[derive(Debug, Args)]
struct LsArgs {
    #[command(flatten)]
    output: ListOutput,
    #[command(flatten)]
    client: ClientArgs,
}

/// The disk templates and your sandboxes use.
#[derive(Debug, Args)]
struct DuArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Print one line from a template of its JSON fields, e.g. '{{.layers_bytes}}' (see
    /// README, "--format").
    #[arg(long, value_name = "TEMPLATE", value_parser = parse_format, conflicts_with = "json")]
    format: Option<Format>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// The template's name.
    name: String,
    /// Print one line from a template of its JSON fields, e.g. '{{json .cmd}}' (see
    /// README, "--format").
    #[arg(long, value_name = "TEMPLATE", value_parser = parse_format)]
    format: Option<Format>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct NameArgs {
    /// The template's name.
    name: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// Remove layers no template uses.
#[derive(Debug, Args)]
struct GcArgs {
    /// Only list what would be removed.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    client: ClientArgs,
}

fn secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

/// 1234567 → "1.2M".
pub(crate) fn human(bytes: u64) -> String {
    let units = ["B", "K", "M", "G", "T"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", units[i])
    }
}

fn json_out<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    out(format!("{}\n", serde_json::to_string_pretty(v)?))?;
    Ok(())
}

pub fn run(args: TemplateArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TemplateCommand::Import(a) => import(a),
        TemplateCommand::Base(a) => base(a),
        TemplateCommand::CodeInterpreter(a) => code_interpreter(a),
        TemplateCommand::Jupyterlab(a) => jupyterlab(a),
        TemplateCommand::Build(a) => build(a),
        TemplateCommand::Ls(a) => ls(a),
        TemplateCommand::Inspect(a) => {
            let client = connect(&a.client)?;
            let path = format!("/v1/templates/{}", enc(&a.name));
            let t: TemplateInfo = block_on(client.call(Method::GET, &path, None::<&()>))??;
            match &a.format {
                Some(f) => out(f.render(&serde_json::to_value(&t)?))?,
                None => json_out(&t)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        TemplateCommand::Rm(a) => {
            let client = connect(&a.client)?;
            let path = format!("/v1/templates/{}", enc(&a.name));
            block_on(client.call_raw(Method::DELETE, &path, None::<&()>))??;
            out(format!("{}\n", a.name))?;
            Ok(ExitCode::SUCCESS)
        }
        TemplateCommand::Gc(a) => {
            let client = connect(&a.client)?;
            let body = serde_json::json!({ "dry_run": a.dry_run });
            let r: LayerGcResult =
                block_on(client.call(Method::POST, "/v1/templates/gc", Some(&body)))??;
            for l in &r.layers {
                out(format!("{l}\n"))?;
            }
            let verb = if a.dry_run { "would free" } else { "freed" };
            eprintln!(
                "warren: {} layer(s), {verb} {}",
                r.layers.len(),
                human(r.bytes)
            );
            Ok(ExitCode::SUCCESS)
        }
        TemplateCommand::Du(a) => {
            let client = connect(&a.client)?;
            let u: DiskUsage = block_on(client.call(Method::GET, "/v1/disk", None::<&()>))??;
            if let Some(f) = &a.format {
                out(f.render(&serde_json::to_value(&u)?))?;
                return Ok(ExitCode::SUCCESS);
            }
            if a.json {
                json_out(&u)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut text = String::from("KIND      NAME                              SIZE\n");
            for r in &u.templates {
                text.push_str(&format!("template  {:<32}  {}\n", r.name, human(r.bytes)));
            }
            for r in &u.sandboxes {
                text.push_str(&format!("sandbox   {:<32}  {}\n", r.name, human(r.bytes)));
            }
            text.push_str(&format!(
                "layers, each counted once: {}\n",
                human(u.layers_bytes)
            ));
            out(text)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn import(a: ImportArgs) -> anyhow::Result<ExitCode> {
    let name = a
        .name_arg
        .clone()
        .or_else(|| a.name.clone())
        .ok_or_else(|| {
            crate::client::Error::invalid(
                "give the template a name: ARCHIVE NAME, or --name NAME".into(),
            )
        })?;
    let client = connect(&a.client)?;
    let r = if client.over_tcp() {
        upload(&client, &a, &name)?
    } else {
        // The daemon reads the file: give it a path that means the same there.
        let archive = std::fs::canonicalize(&a.archive)
            .map_err(|e| anyhow::anyhow!("cannot find the archive {}: {e}", a.archive.display()))?;
        let body = ImportTemplate {
            archive,
            name: name.clone(),
            start_cmd: a.start_cmd,
            ready_cmd: a.ready_cmd,
            ready_timeout_secs: a.ready_timeout.map(secs),
            max_bytes: a.max_size,
            isolation: a.isolation,
            setuid: a.setuid,
        };
        let bar = import_bar(&name);
        let r = block_on(async {
            let lines = client
                .lines(
                    Method::POST,
                    "/v1/templates/import?progress=true",
                    Some(&body),
                )
                .await?;
            follow_import(lines, &bar).await
        });
        bar.finish_and_clear();
        r??
    };
    for w in &r.warnings {
        eprintln!("warren: {w}");
    }
    eprintln!(
        "warren: {} layer(s) stored, {} shared with other templates, {}",
        r.new_layers,
        r.shared_layers,
        human(r.template.size_bytes)
    );
    out(format!("{}\n", r.template.meta.name))?;
    Ok(ExitCode::SUCCESS)
}

/// Sends the archive to the daemon (`POST /v1/templates/upload`) as it is read, with
/// the bytes sent and their share on stderr when it is a terminal.
fn upload(client: &Client, a: &ImportArgs, name: &str) -> anyhow::Result<ImportResult> {
    use anyhow::Context;
    let file = std::fs::File::open(&a.archive)
        .with_context(|| format!("cannot open the archive {}", a.archive.display()))?;
    let len = file.metadata()?.len();
    let mut query = vec![format!("name={}", enc(name))];
    let mut param = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            query.push(format!("{k}={}", enc(&v)));
        }
    };
    param("start_cmd", a.start_cmd.clone());
    param("ready_cmd", a.ready_cmd.clone());
    param(
        "ready_timeout_secs",
        a.ready_timeout.map(|d| secs(d).to_string()),
    );
    param("max_bytes", a.max_size.map(|m| m.to_string()));
    param(
        "isolation",
        a.isolation
            .and_then(|i| serde_json::to_value(i).ok())
            .and_then(|v| v.as_str().map(str::to_string)),
    );
    param("setuid", a.setuid.then(|| "true".to_string()));
    param("progress", Some("true".to_string()));
    let path = format!("/v1/templates/upload?{}", query.join("&"));
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let pb = ProgressBar::new(len);
        pb.set_style(
            ProgressStyle::with_template(
                "sending {msg} {bytes}/{total_bytes} ({percent}%) [{wide_bar}] {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.set_message(name.to_string());
        pb
    } else {
        ProgressBar::hidden()
    };
    let sent = bar.clone();
    let unpacking = import_bar(name);
    let r = block_on(async {
        let file = tokio::fs::File::from_std(file);
        let chunks = futures_util::stream::unfold(file, move |mut f| {
            let sent = sent.clone();
            async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 256 << 10];
                match f.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        sent.inc(n as u64);
                        Some((Ok(hyper::body::Frame::data(bytes::Bytes::from(buf))), f))
                    }
                    Err(e) => Some((Err(e), f)),
                }
            }
        });
        let body = Declared {
            inner: http_body_util::StreamBody::new(Box::pin(chunks)),
            len,
        };
        let resp = client
            .send_body(Method::POST, &path, Some("application/octet-stream"), body)
            .await?;
        bar.finish_and_clear();
        eprintln!("warren: sent {} ({len} bytes)", human(len));
        follow_import(Lines::new(resp), &unpacking).await
    });
    bar.finish_and_clear();
    unpacking.finish_and_clear();
    Ok(r??)
}

/// The bar of an import's unpacking on stderr when it is a terminal: the layers' bytes
/// read and their share.
fn import_bar(name: &str) -> ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    // No length until the daemon says how many bytes the layers are.
    let pb = ProgressBar::no_length();
    pb.set_style(
        ProgressStyle::with_template(
            "importing {prefix} {msg} {bytes}/{total_bytes} ({percent}%) [{wide_bar}] {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(name.to_string());
    pb
}

/// Reads an import's NDJSON [`ImportEvent`]s into `bar` until its result.
async fn follow_import(
    mut lines: Lines,
    bar: &ProgressBar,
) -> Result<ImportResult, crate::client::Error> {
    while let Some(ev) = lines.next::<ImportEvent>().await? {
        match ev {
            ImportEvent::Progress(at) => {
                bar.set_length(at.total_bytes);
                bar.set_position(at.bytes);
                bar.set_message(format!("layer {}/{}", at.layer, at.layers));
            }
            ImportEvent::Done { result } => return Ok(*result),
            ImportEvent::Error { code, message } => {
                return Err(crate::client::Error::api(code, message))
            }
        }
    }
    Err(crate::client::Error::protocol(
        "the import's stream ended without a result".into(),
    ))
}

/// A body whose length is known before it is read: sent with `Content-Length`, so the
/// daemon can refuse one over its limit before it arrives.
struct Declared<B> {
    inner: B,
    len: u64,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Declared<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.len)
    }
}

/// The steps of a recipe: one command a line, blank lines and `#` comments skipped.
fn recipe_steps(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn build(mut a: BuildArgs) -> anyhow::Result<ExitCode> {
    if let Some(file) = &a.file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("cannot read the recipe {}: {e}", file.display()))?;
        let mut steps = recipe_steps(&text);
        steps.append(&mut a.steps);
        a.steps = steps;
    }
    if a.steps.is_empty() {
        return Err(crate::client::Error::invalid(
            "give at least one step with --run 'COMMAND' or --file RECIPE".into(),
        )
        .into());
    }
    let client = connect(&a.client)?;
    let count = a.steps.len() as u64;
    let body = BuildTemplate {
        name: a.name.clone(),
        from: Some(a.from),
        steps: a.steps,
        env: a.env.into_iter().collect::<BTreeMap<_, _>>(),
        network: a.network,
        workdir: a.workdir,
        user: a.user,
        start_cmd: a.start_cmd,
        ready_cmd: a.ready_cmd,
        ready_timeout_secs: a.ready_timeout.map(secs),
        step_timeout_secs: a.step_timeout.map(secs),
        isolation: a.isolation,
    };
    let bar = if a.quiet_progress || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::hidden()
    } else {
        let pb = ProgressBar::new(count);
        pb.set_style(
            ProgressStyle::with_template("{spinner} [{pos}/{len}] {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.enable_steady_tick(Duration::from_millis(100));
        pb
    };
    let done = block_on(async {
        let mut lines = client
            .lines(Method::POST, "/v1/templates/build", Some(&body))
            .await?;
        let mut partial = String::new();
        while let Some(ev) = lines.next::<BuildEvent>().await? {
            match ev {
                BuildEvent::Step {
                    index,
                    count,
                    command,
                } => {
                    bar.set_position(index as u64 - 1);
                    bar.set_message(crate::term::clean_line(&command));
                    if bar.is_hidden() {
                        eprintln!(
                            "step {index}/{count}: {}",
                            crate::term::clean_line(&command)
                        );
                    }
                }
                BuildEvent::Output { data, .. } => {
                    // Whole lines above the progress line; a partial one waits.
                    partial.push_str(&data);
                    while let Some(i) = partial.find('\n') {
                        let line: String = partial.drain(..=i).collect();
                        bar.suspend(|| eprint!("{line}"));
                    }
                }
                BuildEvent::Capturing => {
                    bar.set_position(count);
                    bar.set_message("capturing the files");
                }
                BuildEvent::Done { template } => {
                    if !partial.is_empty() {
                        bar.suspend(|| eprintln!("{partial}"));
                    }
                    return Ok(Ok(*template));
                }
                BuildEvent::Error { code, message } => {
                    if !partial.is_empty() {
                        bar.suspend(|| eprintln!("{partial}"));
                    }
                    return Ok(Err(crate::client::Error::api(code, message)));
                }
            }
        }
        Ok::<_, crate::client::Error>(Err(crate::client::Error::protocol(
            "the build stream ended without a result".into(),
        )))
    })?;
    bar.finish_and_clear();
    let template = done??;
    eprintln!(
        "warren: built {} ({}), build log in the template's directory",
        template.meta.name,
        human(template.size_bytes)
    );
    out(format!("{}\n", template.meta.name))?;
    Ok(ExitCode::SUCCESS)
}

fn ls(a: LsArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&a.client)?;
    let list = block_on(client.call(Method::GET, "/v1/templates", None::<&()>))??;
    a.output.print(
        list,
        |t: &TemplateInfo| t.meta.name.clone(),
        |list| {
            let mut text = format!(
                "{:<24}  {:<8}  {:>6}  {:>8}  {:>4}  SOURCE\n",
                "NAME", "KIND", "LAYERS", "SIZE", "USED"
            );
            for t in list {
                let kind = serde_json::to_value(t.meta.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default();
                text.push_str(&format!(
                    "{:<24}  {:<8}  {:>6}  {:>8}  {:>4}  {}\n",
                    t.meta.name,
                    kind,
                    t.meta.layers.len(),
                    human(t.size_bytes),
                    t.used_by.len(),
                    crate::term::clean_line(&t.meta.source)
                ));
            }
            text
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::{human, recipe_steps};

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(512), "512B");
        assert_eq!(human(1536), "1.5K");
        assert_eq!(human(100 << 20), "100.0M");
    }

    #[test]
    fn a_recipe_is_one_step_a_line() {
        let text =
            "#!/bin/sh\r\n# the tools\r\napt-get install -y git\r\n\n  echo '#' > /x  \nmake\n";
        assert_eq!(
            recipe_steps(text),
            ["apt-get install -y git", "echo '#' > /x", "make"]
        );
    }
}
