//! Values of command-line options shared by several verbs: ports, `NAME=VALUE` pairs,
//! users and host directory mounts.

use warren_types::proto::User;
use warren_types::spec::{HostMount, PortMap};

/// `HOSTPORT:PORT`, both in 1-65535; `PORT` alone (or `0:PORT`) leaves the host port to
/// the daemon, which gives the first free one of its range (`warren port` shows it).
pub fn parse_publish(s: &str) -> Result<PortMap, String> {
    let (h, p) = s.split_once(':').unwrap_or(("0", s));
    let port = |x: &str| {
        x.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
            format!("{x:?} is not a port (1-65535); write HOSTPORT:PORT, e.g. 8080:80")
        })
    };
    Ok(PortMap {
        host: if h == "0" { 0 } else { port(h)? },
        sandbox: port(p)?,
    })
}

/// An environment variable, `NAME=VALUE`.
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: write NAME=VALUE"))?;
    if k.is_empty() || k.contains('\0') || v.contains('\0') {
        return Err(format!("{s:?}: the name must be non-empty, with no NUL"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// A label or metadata pair, `KEY=VALUE`.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: write KEY=VALUE")),
    }
}

/// A user inside the sandbox: a name, a uid, or `uid:gid`.
pub fn parse_user(s: &str) -> Result<User, String> {
    User::parse(s)
}

/// A host directory to mount, as `docker run -v` writes it: `/HOST/DIR:/PATH`, then
/// `:ro` for read-only (`:rw`, the default, may be written too).
pub fn parse_host_mount(s: &str) -> Result<HostMount, String> {
    let mut parts = s.split(':');
    let (Some(source), Some(target)) = (parts.next(), parts.next()) else {
        return Err(format!(
            "{s:?}: write /HOST/DIR:/PATH[:ro], e.g. /srv/data:/data:ro"
        ));
    };
    if !source.starts_with('/') {
        return Err(format!(
            "{s:?}: a host directory is an absolute path (/HOST/DIR:/PATH[:ro])"
        ));
    }
    let read_only = match parts.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(o) => return Err(format!("{s:?}: the mode {o:?} is not ro or rw")),
    };
    if parts.next().is_some() {
        return Err(format!(
            "{s:?}: write /HOST/DIR:/PATH[:ro]; a path holds no ':'"
        ));
    }
    Ok(HostMount {
        source: source.into(),
        target: target.into(),
        read_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_mounts() {
        let m = parse_host_mount("/srv/data:/data:ro").unwrap();
        assert_eq!(
            (m.source.as_str(), m.target.as_str(), m.read_only),
            ("/srv/data", "/data", true)
        );
        assert!(!parse_host_mount("/srv:/srv").unwrap().read_only);
        assert!(!parse_host_mount("/srv:/srv:rw").unwrap().read_only);
        for bad in ["/srv", "srv:/srv", "/srv:/srv:rx", "/a:/b:ro:x", ""] {
            assert!(parse_host_mount(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn publish() {
        assert_eq!(
            parse_publish("8080:80").unwrap(),
            PortMap {
                host: 8080,
                sandbox: 80
            }
        );
        for given in ["80", "0:80"] {
            assert_eq!(
                parse_publish(given).unwrap(),
                PortMap {
                    host: 0,
                    sandbox: 80
                }
            );
        }
        for bad in ["80:0", ":80", "80:70000", "a:b", "70000"] {
            assert!(parse_publish(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pairs() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("A").is_err());
        assert_eq!(parse_pair("team=ml").unwrap(), ("team".into(), "ml".into()));
        assert_eq!(
            parse_pair("empty=").unwrap(),
            ("empty".into(), String::new())
        );
        assert!(parse_pair("=x").is_err());
    }

    #[test]
    fn users() {
        assert_eq!(
            parse_user("1000").unwrap(),
            User::Id {
                uid: 1000,
                gid: None
            }
        );
        assert_eq!(
            parse_user("1000:100").unwrap(),
            User::Id {
                uid: 1000,
                gid: Some(100)
            }
        );
        assert_eq!(parse_user("user").unwrap(), User::Name("user".into()));
        assert!(parse_user("a:b").is_err());
    }
}
