//! `warren port`: a sandbox's published ports and the host address each is reached at,
//! as `docker port` prints them.
//!
//! The daemon forwards 127.0.0.1:HOSTPORT on its host to the port on the sandbox's own
//! loopback (TCP only), so every address printed is a loopback one of the daemon's host.

use std::process::ExitCode;

use clap::Args;
use hyper::Method;
use warren_types::api::SandboxInfo;
use warren_types::spec::PortMap;

use crate::client::{block_on, connect, out, sandbox_path, ClientArgs, Error};

/// List a sandbox's published ports, or the host address of one of them.
#[derive(Debug, Args)]
pub struct PortArgs {
    /// The sandbox: its id, name, or owner/name.
    key: String,
    /// Only this port inside the sandbox: PORT or PORT/tcp.
    #[arg(value_parser = parse_port)]
    port: Option<u16>,
    #[command(flatten)]
    client: ClientArgs,
}

/// `80` or `80/tcp`: published ports are TCP only.
fn parse_port(s: &str) -> Result<u16, String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    if !proto.eq_ignore_ascii_case("tcp") {
        return Err(format!(
            "{s:?}: only TCP ports are published; write PORT or PORT/tcp"
        ));
    }
    port.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{port:?} is not a port (1-65535)"))
}

pub fn run(args: PortArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.client)?;
    let path = sandbox_path(&args.key, "");
    let info: SandboxInfo = block_on(client.call(Method::GET, &path, None::<&()>))??;
    out(render(&info.publish, args.port).map_err(|port| {
        Error::not_found(format!(
            "{} publishes no port {port}/tcp; `warren port {}` lists what it publishes",
            args.key, args.key
        ))
    })?)?;
    Ok(ExitCode::SUCCESS)
}

/// Every mapping as `80/tcp -> 127.0.0.1:20000`, or, for one port, its host addresses
/// alone (`Err(port)` when it is not published).
fn render(publish: &[PortMap], only: Option<u16>) -> Result<String, u16> {
    let mut maps = publish.to_vec();
    maps.sort_by_key(|p| (p.sandbox, p.host));
    let text: String = match only {
        None => maps
            .iter()
            .map(|p| format!("{}/tcp -> 127.0.0.1:{}\n", p.sandbox, p.host))
            .collect(),
        Some(port) => maps
            .iter()
            .filter(|p| p.sandbox == port)
            .map(|p| format!("127.0.0.1:{}\n", p.host))
            .collect(),
    };
    match only {
        Some(port) if text.is_empty() => Err(port),
        _ => Ok(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_print_as_docker_prints_them() {
        let maps = [
            PortMap {
                host: 20001,
                sandbox: 8888,
            },
            PortMap {
                host: 20000,
                sandbox: 80,
            },
        ];
        assert_eq!(
            render(&maps, None).unwrap(),
            "80/tcp -> 127.0.0.1:20000\n8888/tcp -> 127.0.0.1:20001\n"
        );
        assert_eq!(render(&maps, Some(8888)).unwrap(), "127.0.0.1:20001\n");
        assert_eq!(render(&maps, Some(81)), Err(81));
        assert_eq!(render(&[], None).unwrap(), "");
    }

    #[test]
    fn a_port_is_tcp() {
        assert_eq!(parse_port("80"), Ok(80));
        assert_eq!(parse_port("80/tcp"), Ok(80));
        assert!(parse_port("53/udp").unwrap_err().contains("only TCP"));
        assert!(parse_port("0").is_err());
        assert!(parse_port("x").is_err());
    }
}
