//! Traffic to a sandbox's ports through the daemon: who may send it (a traffic token, a
//! port link's grant, or anyone where the sandbox was made open), and the connection.

use super::*;

/// Why traffic to a sandbox's port was not let through.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("no such sandbox")]
    NoSandbox,
    #[error("the traffic token is missing or wrong")]
    Token,
    #[error("the sandbox is {}", .0.as_str())]
    NotRunning(SandboxState),
    #[error("nothing accepts connections on that port: {0}")]
    Closed(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a request to a sandbox's port through the daemon carries.
#[derive(Debug, Clone, Copy, Default)]
pub struct PortPass<'a> {
    /// The sandbox's traffic token, when it was made with one.
    pub token: Option<&'a str>,
    /// Port links' grants (what a browser keeps in a cookie, possibly more than one: a
    /// page of another port host may have set one for a parent domain; see
    /// [`PortLink`]): any one for this sandbox and port lets it in.
    pub grants: &'a [String],
    /// A sandbox made without a traffic token takes traffic from whoever names it (the
    /// E2B surface's rule). False on the daemon's own listener, where only a grant or a
    /// traffic token gets in.
    pub open_by_id: bool,
}

/// Longest wait for a sandbox's port to accept a connection.
const PORT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to a port inside a sandbox, for traffic through the daemon.
#[derive(Debug)]
pub struct PortConnection {
    pub stream: tokio::net::TcpStream,
    /// Keeps the sandbox active while the connection is used.
    pub activity: Option<ActivityGuard>,
    /// The `Host` the sandbox asked its ports to see, when it did.
    pub host: Option<String>,
    /// The sandbox's tenant.
    pub tenant: String,
}

impl Manager {
    /// Opens a TCP connection to `port` inside sandbox `id`, for traffic to its ports
    /// through the daemon, if `pass` lets it in: a port link's grant for that port, the
    /// sandbox's traffic token, or, for a sandbox made without one, nothing at all where
    /// `pass.open_by_id` says so. A sandbox that does not exist and a refused pass are
    /// told apart only by the caller's having a pass that works.
    pub async fn connect_port(
        &self,
        id: &str,
        port: u16,
        pass: PortPass<'_>,
    ) -> Result<PortConnection, PortError> {
        let r = self
            .store()
            .get(id)?
            .filter(|r| r.state != SandboxState::Terminated)
            .ok_or(PortError::NoSandbox)?;
        let granted = pass
            .grants
            .iter()
            .any(|g| self.port_granted(g, &r.id, port));
        let tokened = match &r.traffic {
            Some(want) => pass
                .token
                .is_some_and(|t| self.keys.verify(TokenKind::Traffic, &r.id, want, t)),
            None => pass.open_by_id,
        };
        if !granted && !tokened {
            return Err(PortError::Token);
        }
        // A caller let in by the id alone (a sandbox without a traffic token, on the E2B
        // listener) proved nothing: that the sandbox is not running, or that nothing
        // listens on the port, would tell it which ids exist. Only a token or a grant
        // learns why traffic does not get through.
        let credentialed = granted || r.traffic.is_some();
        match self.dial_port(r, port).await {
            Err(PortError::NotRunning(_) | PortError::Closed(_)) if !credentialed => {
                Err(PortError::NoSandbox)
            }
            dialed => dialed,
        }
    }

    /// Opens a TCP connection to `port` inside sandbox `key` of `who`'s, who needs no
    /// traffic token: the sandbox is theirs (the SSH gateway's local forwarding).
    pub async fn connect_port_as(
        &self,
        who: &Caller,
        key: &str,
        port: u16,
    ) -> Result<PortConnection, PortError> {
        let r = self.resolve(who, key).map_err(|_| PortError::NoSandbox)?;
        self.dial_port(r, port).await
    }

    async fn dial_port(&self, r: Record, port: u16) -> Result<PortConnection, PortError> {
        let state = r.state;
        let r = self
            .wake_if_asked(r)
            .await
            .map_err(|_| PortError::NotRunning(state))?;
        if r.state != SandboxState::Running {
            return Err(PortError::NotRunning(r.state));
        }
        let dial = self
            .with_live(&r.id, |l| l.sandbox.port_dialer())
            .map_err(|_| PortError::NotRunning(r.state))?;
        let _ = self.store().touch(&r.id, now_ms());
        let stream = tokio::task::spawn_blocking(move || dial(port, PORT_CONNECT_TIMEOUT))
            .await
            .map_err(|e| PortError::Closed(std::io::Error::other(e.to_string())))?
            .map_err(PortError::Closed)?;
        stream.set_nonblocking(true).map_err(PortError::Closed)?;
        let stream = tokio::net::TcpStream::from_std(stream).map_err(PortError::Closed)?;
        Ok(PortConnection {
            stream,
            activity: self.hold_activity(&r.id),
            host: r
                .request_host
                .map(|h| h.replace("${PORT}", &port.to_string())),
            tenant: r.tenant,
        })
    }
}
