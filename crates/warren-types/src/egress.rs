//! Egress rules: where a `nat` sandbox may open connections to.
//!
//! A sandbox's rules are two lists and a set of resolvers. `allow` holds IPv4
//! addresses, CIDR blocks and domain names (`pypi.org`, `*.example.com`); `deny` holds
//! addresses and blocks only. A destination named in `allow` is reachable even when
//! `deny` covers it; one `deny` covers is not; everything else is. Domain names are
//! matched on the name a connection itself carries (TLS SNI on port 443, the HTTP
//! `Host` header on port 80), which only the host side can look at; other ports are
//! matched by address alone. When `allow` names a domain, the DNS servers in `dns`
//! (by default the ones the sandbox's `resolv.conf` names) stay reachable, so the names
//! can be resolved.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Most entries over `allow`, `deny` and `dns` together.
pub const MAX_ENTRIES: usize = 256;

/// The rules as a request gives them and the API shows them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Egress {
    /// Addresses, CIDR blocks and domain names always reachable (they win over `deny`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Addresses and CIDR blocks not reachable (`0.0.0.0/0`: all traffic).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// DNS servers reachable when `allow` names a domain; by default the sandbox's own
    /// resolvers. Has no effect without a domain in `allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<String>>,
}

impl Egress {
    /// No rule at all: every destination is reachable.
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty() && self.dns.is_none()
    }

    /// Everything denied (what `allow_internet_access: false` means).
    pub fn deny_all() -> Self {
        Self {
            deny: vec!["0.0.0.0/0".into()],
            ..Self::default()
        }
    }

    /// Parses and checks every entry; the error names the bad one and says what fits.
    pub fn parse(&self) -> Result<EgressRules, String> {
        let total = self.allow.len() + self.deny.len() + self.dns.as_ref().map_or(0, Vec::len);
        if total > MAX_ENTRIES {
            return Err(format!(
                "egress: {total} entries; at most {MAX_ENTRIES} over allow, deny and dns"
            ));
        }
        let mut rules = EgressRules::default();
        for a in &self.allow {
            match Net::parse(a) {
                Some(n) => rules.allow_nets.push(n),
                None => rules.allow_domains.push(Domain::parse(a).ok_or_else(|| {
                    format!(
                        "egress allow {a:?}: use an IPv4 address, a CIDR block (10.0.0.0/8) \
                         or a domain name (example.com, *.example.com)"
                    )
                })?),
            }
        }
        for d in &self.deny {
            rules.deny_nets.push(Net::parse(d).ok_or_else(|| {
                format!(
                    "egress deny {d:?}: use an IPv4 address or a CIDR block (0.0.0.0/0 denies \
                     all traffic); domain names can only be allowed"
                )
            })?);
        }
        if let Some(dns) = &self.dns {
            for s in dns {
                let ip: Ipv4Addr = s
                    .parse()
                    .map_err(|_| format!("egress dns {s:?}: use an IPv4 address"))?;
                rules.dns.push(ip);
            }
        }
        rules.dns_given = self.dns.is_some();
        Ok(rules)
    }
}

/// An IPv4 block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Net {
    /// `1.2.3.4` or `1.2.3.0/24`; the address is masked to the block.
    pub fn parse(s: &str) -> Option<Self> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().ok().filter(|p| *p <= 32)?),
            None => (s, 32),
        };
        let addr: Ipv4Addr = a.parse().ok()?;
        Some(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(p)),
            prefix: p,
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// A domain name, or `*.` and a name for every name below it (not the name itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Domain {
    /// Lower case, without a trailing dot.
    pub name: String,
    pub wildcard: bool,
}

impl Domain {
    pub fn parse(s: &str) -> Option<Self> {
        let (wildcard, rest) = match s.strip_prefix("*.") {
            Some(r) => (true, r),
            None => (false, s),
        };
        let name = rest.strip_suffix('.').unwrap_or(rest).to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(label_ok)
            // A bare number is an address written badly, not a name.
            && !name.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()));
        ok.then_some(Self { name, wildcard })
    }

    /// Whether `host` (as a connection names it) is this domain.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if self.wildcard {
            host.len() > self.name.len() + 1
                && host.ends_with(&self.name)
                && host.as_bytes()[host.len() - self.name.len() - 1] == b'.'
        } else {
            host == self.name
        }
    }
}

impl std::fmt::Display for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.name)
    }
}

/// Parsed rules, as the host enforces them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressRules {
    pub allow_nets: Vec<Net>,
    pub allow_domains: Vec<Domain>,
    pub deny_nets: Vec<Net>,
    pub dns: Vec<Ipv4Addr>,
    /// Whether `dns` was given (else the sandbox's own resolvers are meant).
    pub dns_given: bool,
}

impl EgressRules {
    /// Whether connections on ports 80 and 443 need a look at the name they carry.
    pub fn has_domains(&self) -> bool {
        !self.allow_domains.is_empty()
    }

    /// Whether a connection to `ip` that carries the name `host` (if any) may go out.
    pub fn allows(&self, ip: Ipv4Addr, host: Option<&str>) -> bool {
        if host.is_some_and(|h| self.allow_domains.iter().any(|d| d.matches(h))) {
            return true;
        }
        if self.allow_nets.iter().any(|n| n.contains(ip)) {
            return true;
        }
        !self.deny_nets.iter().any(|n| n.contains(ip))
    }

    /// Whether `host` is allowed by name (the connection then goes to what the name
    /// resolves to, never to an address the sandbox chose).
    pub fn allows_name(&self, host: &str) -> bool {
        self.allow_domains.iter().any(|d| d.matches(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(allow: &[&str], deny: &[&str]) -> Egress {
        Egress {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            dns: None,
        }
    }

    fn e(allow: &[&str], deny: &[&str]) -> EgressRules {
        egress(allow, deny).parse().unwrap()
    }

    #[test]
    fn allow_wins_over_deny_and_the_rest_is_open() {
        let r = e(&["1.1.1.1", "8.8.8.0/24"], &["0.0.0.0/0"]);
        assert!(r.allows("1.1.1.1".parse().unwrap(), None));
        assert!(r.allows("8.8.8.200".parse().unwrap(), None));
        assert!(!r.allows("1.1.1.2".parse().unwrap(), None));
        let r = e(&[], &["10.0.0.0/8"]);
        assert!(!r.allows("10.9.9.9".parse().unwrap(), None));
        assert!(r.allows("11.0.0.1".parse().unwrap(), None));
    }

    #[test]
    fn domains_match_exactly_or_below_a_wildcard() {
        let r = e(&["pypi.org", "*.example.com"], &["0.0.0.0/0"]);
        let ip = "93.184.216.34".parse().unwrap();
        assert!(r.allows(ip, Some("pypi.org")));
        assert!(r.allows(ip, Some("PyPI.org.")));
        assert!(!r.allows(ip, Some("files.pypi.org")));
        assert!(r.allows(ip, Some("a.b.example.com")));
        assert!(!r.allows(ip, Some("example.com")));
        assert!(!r.allows(ip, Some("badexample.com")));
        assert!(!r.allows(ip, None));
    }

    #[test]
    fn bad_entries_are_named() {
        let bad = |allow: &[&str], deny: &[&str]| egress(allow, deny).parse().unwrap_err();
        assert!(bad(&[], &["example.com"]).contains("domain names can only be allowed"));
        assert!(bad(&["1.2.3.4/33"], &[]).contains("1.2.3.4/33"));
        assert!(bad(&["exa mple.com"], &[]).contains("exa mple.com"));
        assert!(bad(&["999.1.1.1"], &[]).contains("999.1.1.1"));
        assert!(bad(&["::1"], &[]).contains("::1"));
        let many: Vec<String> = (0..300)
            .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
            .collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(bad(&refs, &[]).contains("at most 256"));
    }

    #[test]
    fn blocks_are_masked() {
        let n = Net::parse("10.1.2.3/8").unwrap();
        assert_eq!(n.to_string(), "10.0.0.0/8");
        assert_eq!(Net::parse("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert!(Net::parse("0.0.0.0/0")
            .unwrap()
            .contains("255.1.2.3".parse().unwrap()));
    }
}
