//! Values of command-line options shared by several verbs: ports, `NAME=VALUE` pairs and
//! users.

use warren_types::proto::User;
use warren_types::spec::PortMap;

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
    if let Some((u, g)) = s.split_once(':') {
        let uid = u.parse().map_err(|_| format!("{u:?} is not a uid"))?;
        let gid = g.parse().map_err(|_| format!("{g:?} is not a gid"))?;
        return Ok(User::Id {
            uid,
            gid: Some(gid),
        });
    }
    Ok(match s.parse::<u32>() {
        Ok(uid) => User::Id { uid, gid: None },
        Err(_) => User::Name(s.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
