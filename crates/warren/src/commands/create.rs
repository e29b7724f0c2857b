//! `warren create`: a sandbox that stays, made by the daemon; prints its id.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use hyper::Method;
use warren_types::api::{CreateSandbox, HostMount, SandboxInfo, TimeoutAction};

use super::flags::SandboxFlags;
use crate::client::{block_on, connect, out, ClientArgs};
use crate::parse::{parse_env, parse_host_mount, parse_pair};
use warren_types::size::{parse_duration, parse_size};

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
    #[command(flatten)]
    sandbox: SandboxFlags,
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
    /// When paused, resume by itself on the next exec, file call, terminal or port
    /// request.
    #[arg(long)]
    auto_resume: bool,
    #[command(flatten)]
    egress: EgressFlags,
    /// Do not mount the owner's persistent volume at /home/user.
    #[arg(long)]
    no_home: bool,
    /// Size of the owner's home volume when this makes it, e.g. 10G [default: the
    /// daemon's]. An existing volume keeps its size.
    #[arg(long, value_parser = parse_size, conflicts_with = "no_home")]
    home_size: Option<u64>,
    /// Mount a directory of the daemon's host: /HOST/DIR:/PATH, or /HOST/DIR:/PATH:ro
    /// read-only. Repeat for more. Only on the daemon's unix socket (the host's root).
    #[arg(short = 'v', long = "volume", value_name = "/HOST/DIR:/PATH[:ro]", value_parser = parse_host_mount)]
    mounts: Vec<HostMount>,
    #[command(flatten)]
    client: ClientArgs,
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
    let sandbox = args.sandbox.settings()?;
    let body = CreateSandbox {
        owner: args.owner,
        name: args.name,
        get_or_create: args.get_or_create,
        template: args.template,
        resources: sandbox.resource_request(),
        network: if args.egress.is_open() {
            sandbox.network
        } else {
            // Rules are for a network: asking for them asks for `nat`.
            warren_types::spec::NetworkMode::Nat
        },
        egress: args.egress.into_egress(),
        publish: sandbox.publish,
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
        auto_resume: args.auto_resume.then_some(true),
        request_host: None,
        home_volume: args.no_home.then_some(false),
        home_size: args.home_size,
        traffic_token: false,
        isolation: sandbox.isolation,
        requires: sandbox.requires,
        mounts: args.mounts,
    };
    let client = connect(&args.client)?;
    let info: SandboxInfo = block_on(client.call(Method::POST, "/v1/sandboxes", Some(&body)))??;
    out(format!("{}\n", info.id))?;
    Ok(ExitCode::SUCCESS)
}

/// Egress rules of a `nat` sandbox (also `warren egress`).
#[derive(Debug, Clone, Args)]
pub struct EgressFlags {
    /// Reachable even where --deny-out covers it: an IPv4 address, a CIDR block, or a
    /// domain name (example.com, *.example.com; matched on HTTP and TLS connections to
    /// ports 80 and 443). Repeat for more.
    #[arg(long = "allow-out", value_name = "ADDR|CIDR|DOMAIN")]
    pub allow_out: Vec<String>,
    /// Not reachable: an IPv4 address or a CIDR block (0.0.0.0/0: everything not
    /// allowed). Repeat for more.
    #[arg(long = "deny-out", value_name = "ADDR|CIDR")]
    pub deny_out: Vec<String>,
    /// A DNS server that stays reachable when --allow-out names a domain [default: the
    /// sandbox's own resolvers]. Repeat for more.
    #[arg(long = "dns", value_name = "ADDR")]
    pub dns: Vec<String>,
}

impl EgressFlags {
    pub fn is_open(&self) -> bool {
        self.allow_out.is_empty() && self.deny_out.is_empty() && self.dns.is_empty()
    }

    pub fn into_egress(self) -> warren_types::egress::Egress {
        warren_types::egress::Egress {
            allow: self.allow_out,
            deny: self.deny_out,
            dns: (!self.dns.is_empty()).then_some(self.dns),
        }
    }
}
