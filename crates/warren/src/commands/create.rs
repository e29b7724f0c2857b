//! `warren create`: a sandbox that stays, made by the daemon; prints its id.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use hyper::Method;
use warren_types::api::{CreateSandbox, ResourceRequest, SandboxInfo, TimeoutAction};
use warren_types::spec::{NetworkMode, PortMap};

use crate::client::{block_on, out, Client, ClientArgs};
use crate::parse::{parse_env, parse_pair, parse_publish};
use crate::size::{parse_duration, parse_size};

/// Create a sandbox on the daemon and print its id.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Who the sandbox is for [default: the tenant's name].
    #[arg(long)]
    owner: Option<String>,
    /// A name, unique per owner; the sandbox can then be named instead of its id.
    #[arg(long)]
    name: Option<String>,
    /// With --name: return the owner's sandbox of that name if it exists (resuming or
    /// starting it), instead of failing.
    #[arg(long, requires = "name")]
    get_or_create: bool,
    /// Template to build the root filesystem from [default: host].
    #[arg(long)]
    template: Option<String>,
    /// Memory limit, e.g. 256M or 2G.
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// CPU limit in cores, e.g. 0.5.
    #[arg(long)]
    cpus: Option<f64>,
    /// Most processes and threads at once.
    #[arg(long)]
    pids: Option<u32>,
    /// Size of the writable layer, e.g. 1G.
    #[arg(long, value_parser = parse_size)]
    disk: Option<u64>,
    /// Network: none (loopback only) or nat (outbound through the host).
    #[arg(long, value_enum, default_value_t = Network::None)]
    network: Network,
    /// Forward 127.0.0.1:HOSTPORT on the host to PORT in the sandbox.
    #[arg(short, long = "publish", value_name = "HOSTPORT:PORT", value_parser = parse_publish)]
    publish: Vec<PortMap>,
    /// An environment variable of every process in the sandbox (NAME=VALUE).
    #[arg(short, long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// A label to find the sandbox by (KEY=VALUE; `ls --label` filters on it).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_pair)]
    labels: Vec<(String, String)>,
    /// Free-form metadata kept with the sandbox (KEY=VALUE).
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_pair)]
    metadata: Vec<(String, String)>,
    /// How long the sandbox may live, e.g. 1h; then --on-timeout applies.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// How long it may sit idle (no calls, no client, no CPU use), e.g. 10m.
    #[arg(long, value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// What a timeout does [default: terminate].
    #[arg(long, value_enum)]
    on_timeout: Option<OnTimeout>,
    /// Do not mount the owner's persistent volume at /home/user.
    #[arg(long)]
    no_home: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Network {
    None,
    Nat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnTimeout {
    Pause,
    Stop,
    Terminate,
}

/// Whole seconds, at least one: the API counts in seconds.
fn secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

pub fn run(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let cpu_millis = match args.cpus {
        Some(c) if !(c.is_finite() && c > 0.0) => {
            anyhow::bail!("--cpus {c} must be a positive number of cores, e.g. 0.5")
        }
        Some(c) => Some((c * 1000.0).round().max(1.0) as u32),
        None => None,
    };
    let body = CreateSandbox {
        owner: args.owner,
        name: args.name,
        get_or_create: args.get_or_create,
        template: args.template,
        resources: ResourceRequest {
            memory: args.memory,
            cpu_millis,
            pids: args.pids,
            disk: args.disk,
        },
        network: match args.network {
            Network::None => NetworkMode::None,
            Network::Nat => NetworkMode::Nat,
        },
        publish: args.publish,
        env: args.env.into_iter().collect(),
        labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
        metadata: args.metadata.into_iter().collect(),
        timeout_secs: args.timeout.map(secs),
        idle_timeout_secs: args.idle_timeout.map(secs),
        on_timeout: args.on_timeout.map(|a| match a {
            OnTimeout::Pause => TimeoutAction::Pause,
            OnTimeout::Stop => TimeoutAction::Stop,
            OnTimeout::Terminate => TimeoutAction::Terminate,
        }),
        home_volume: args.no_home.then_some(false),
        traffic_token: false,
    };
    let client = Client::new(&args.client)?;
    let info: SandboxInfo = block_on(client.call(Method::POST, "/v1/sandboxes", Some(&body)))??;
    out(format!("{}\n", info.id))?;
    Ok(ExitCode::SUCCESS)
}
