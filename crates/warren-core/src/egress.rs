//! Egress rules of `nat` sandboxes: checked on create and change, put in place before a
//! sandbox's first packet (see [`warren_runtime::network::set_egress`]), held by the
//! daemon's proxy for domain rules (see [`warren_runtime::egress`]), and removed with
//! the sandbox.

use super::*;
use warren_types::egress::{Egress, EgressRules};
use warren_types::spec::NetworkMode;

impl Manager {
    /// Checks `egress` for a sandbox on `network`; the parsed rules, or what to change.
    pub(crate) fn check_egress(
        &self,
        network: NetworkMode,
        egress: &Egress,
    ) -> Result<EgressRules> {
        let rules = egress.parse().map_err(CoreError::Invalid)?;
        if egress.is_open() {
            return Ok(rules);
        }
        if network != NetworkMode::Nat {
            return Err(CoreError::Invalid(format!(
                "egress rules are for sandboxes on the `nat` network; this one has `{}`",
                network.as_str()
            )));
        }
        if rules.has_domains() && self.egress.is_none() {
            return Err(CoreError::Invalid(
                "domain rules need the daemon's egress proxy, which could not start here \
                 (see the daemon's log); allow addresses or CIDR blocks instead"
                    .into(),
            ));
        }
        Ok(rules)
    }

    /// Puts the egress rules of `spec` in place (before its sandbox runs, or again after
    /// the daemon restarted); nothing for a sandbox without any. Blocking.
    pub(crate) fn apply_egress(&self, spec: &SandboxSpec) -> warren_runtime::Result<()> {
        if spec.egress.is_open() || spec.network != NetworkMode::Nat {
            return Ok(());
        }
        let rules = spec
            .egress
            .parse()
            .map_err(|why| warren_runtime::Error::Invalid {
                what: "egress rules",
                why,
            })?;
        let port = self.egress.as_ref().map_or(0, |p| p.port());
        warren_runtime::network::set_egress(&spec.id, &rules, port)
            .map_err(|e| warren_runtime::Error::Setup(format!("egress rules: {e}")))?;
        if let Some(p) = &self.egress {
            p.set(&spec.id, rules);
        }
        Ok(())
    }

    /// Removes the egress rules of `spec`'s sandbox, if it had any. Blocking.
    pub(crate) fn clear_egress(&self, spec: &SandboxSpec) {
        if spec.egress.is_open() {
            return;
        }
        warren_runtime::network::clear_egress(&spec.id);
        if let Some(p) = &self.egress {
            p.remove(&spec.id);
        }
    }

    /// Replaces a sandbox's egress rules; a running or paused sandbox is under the new
    /// ones at once (its open connections included), a stopped one from its next start.
    pub async fn set_egress(&self, who: &Caller, key: &str, egress: Egress) -> Result<SandboxInfo> {
        let r = self.resolve(who, key)?;
        let lock = self.lock_for(&r.id);
        let _g = lock.lock().await;
        let mut r = self.resolve(who, &r.id)?;
        if matches!(r.state, SandboxState::Creating | SandboxState::Stopping) {
            return Err(Self::invalid(&r, "change the egress rules of"));
        }
        self.check_egress(r.spec.network, &egress)?;
        let before = r.spec.clone();
        r.spec.egress = egress;
        self.store().set_spec(&r.id, &r.spec)?;
        if matches!(r.state, SandboxState::Running | SandboxState::Paused) {
            // A few netfilter commands, under the sandbox's own lock.
            let applied = if r.spec.egress.is_open() {
                self.clear_egress(&before);
                Ok(())
            } else {
                self.apply_egress(&r.spec)
            };
            if let Err(e) = applied {
                // The store keeps what the host enforces.
                let _ = self.store().set_spec(&r.id, &before);
                return Err(e.into());
            }
        }
        self.event(&r, "egress", describe(&r.spec.egress));
        Ok(self.info(&r))
    }
}

/// A line for the sandbox's events.
fn describe(e: &Egress) -> String {
    if e.is_open() {
        return "egress open".into();
    }
    let mut parts = Vec::new();
    if !e.allow.is_empty() {
        parts.push(format!("allow {}", e.allow.join(", ")));
    }
    if !e.deny.is_empty() {
        parts.push(format!("deny {}", e.deny.join(", ")));
    }
    if let Some(d) = &e.dns {
        parts.push(format!("dns {}", d.join(", ")));
    }
    format!("egress: {}", parts.join("; "))
}
