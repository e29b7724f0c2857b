//! The SSH gateway (`warren serve --ssh-listen ADDR`): `ssh OWNER+NAME@host` signs in
//! with a key registered for OWNER (`warren keys ssh add`) and lands in OWNER's sandbox
//! NAME (`default` when the login is OWNER alone), made from the key's template (else the
//! daemon's default) if it does not exist, resumed if paused.
//!
//! A session channel runs one process in the sandbox through its agent, as the API's
//! exec does: a shell or a command, with a terminal when the client asked for one
//! (window changes follow), otherwise with stdout and stderr apart and stdin closed at the
//! client's EOF; its exit status (or signal) is the session's. Local port forwarding
//! (`ssh -L 8888:localhost:8888`) reaches the sandbox's own loopback. Passwords,
//! keyboard-interactive, agent and X11 forwarding and remote forwarding are refused. The
//! `sftp` subsystem (which `sftp` and `scp` use) is Warren's own, over the agent's file
//! operations (`crate::sftp`).
//!
//! The host key is made once (ed25519) and kept in the data directory.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use russh::keys::{HashAlg, PrivateKey};
use russh::server::{
    Auth, ChannelOpenHandle, Handle, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelMsg, ChannelOpenFailure, MethodKind, MethodSet, Sig};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::task::AbortOnDropHandle;
use warren_agent::client::ProcessEvent;
use warren_core::{AgentConn, Caller};
use warren_types::api::CreateSandbox;
use warren_types::proto::{Command, ExecRequest, WinSize};

use crate::error::Error;
use crate::exec::{win_size, Followed, Stdin};
use crate::{shutting_down, AppState};

/// Connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 256;
/// Connections one peer address holds at once.
const MAX_PER_PEER: usize = 32;
/// Channels (sessions and forwards) one connection holds at once.
const MAX_CHANNELS: usize = 16;
/// Time a client has to sign in.
const SIGN_IN_TIME: Duration = Duration::from_secs(60);
/// Environment variables a session takes from the client (`SendEnv`).
const MAX_ENV: usize = 64;
/// Input a client sends before its shell or command starts, kept for it.
const MAX_EARLY_INPUT: usize = 64 << 10;
/// Bytes in flight between an SFTP channel and its server.
const SFTP_PIPE: usize = 256 << 10;
/// The sandbox of a login that names only its owner.
const DEFAULT_NAME: &str = "default";
/// What a shell session runs: the login shell the template has.
const LOGIN_SHELL: &str = "if [ -x /bin/bash ]; then exec /bin/bash -l; else exec /bin/sh -l; fi";

/// Where the gateway listens and keeps its host key.
#[derive(Debug, Clone)]
pub struct SshListener {
    pub addr: SocketAddr,
    /// The host key's file (made on first start, ed25519, mode 0600).
    pub host_key: std::path::PathBuf,
}

/// Reads the host key, or makes it on first start.
pub fn host_key(path: &Path) -> io::Result<PrivateKey> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    match std::fs::read_to_string(path) {
        Ok(pem) => {
            return PrivateKey::from_openssh(pem).map_err(|e| {
                io::Error::other(format!(
                    "the SSH host key {} cannot be read ({e}); restore it, or remove it to \
                     make a new one (clients will then warn that the host key changed)",
                    path.display()
                ))
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let seed: [u8; 32] = warren_types::random::bytes(32)
        .map_err(io::Error::other)?
        .try_into()
        .map_err(|_| io::Error::other("short random read"))?;
    let key = PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
        &seed,
    ));
    let pem = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(io::Error::other)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(key)
}

/// The host key's fingerprint, as `ssh-keygen -l` and clients print it.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

/// Serves the gateway until the daemon shuts down.
pub(crate) async fn serve(
    listener: TcpListener,
    st: AppState,
    key: PrivateKey,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let config = Arc::new(russh::server::Config {
        server_id: russh::SshId::Standard(
            format!("SSH-2.0-Warren_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(300),
        // OpenSSH asks with `none` first, to learn the methods.
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: 6,
        keys: vec![key],
        // A client that goes quiet is asked every 30 s; three unanswered, it is gone.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    });
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_peer: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let stop = shutting_down(shutdown.clone());
    tokio::pin!(stop);
    loop {
        let (socket, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                // Out of descriptors and the like: wait, do not spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => return Ok(()),
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(socket);
            continue;
        };
        let Some(from_peer) = PeerSlot::take(&per_peer, peer.ip()) else {
            drop(socket);
            continue;
        };
        let config = config.clone();
        let (gone_tx, gone) = watch::channel(false);
        let signed_in = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conn = Conn {
            st: st.clone(),
            login: None,
            signed_in: signed_in.clone(),
            gone,
            channels: Arc::new(AtomicUsize::new(0)),
            env_counts: HashMap::new(),
        };
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permits = (permit, from_peer);
            let session = match tokio::time::timeout(
                SIGN_IN_TIME,
                russh::server::run_stream(config, socket, conn),
            )
            .await
            {
                Ok(Ok(s)) => s,
                _ => return,
            };
            let handle = session.handle();
            // A client must sign in within this time, or go.
            let late = async {
                tokio::time::sleep(SIGN_IN_TIME).await;
                if signed_in.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            };
            let why = tokio::select! {
                _ = session => None,
                _ = shutting_down(shutdown) => Some("the Warren daemon is shutting down"),
                _ = late => Some("not signed in in time"),
            };
            if let Some(why) = why {
                let _ = handle
                    .disconnect(russh::Disconnect::ByApplication, why.into(), String::new())
                    .await;
            }
            // Everything the connection started ends with it.
            let _ = gone_tx.send(true);
        });
    }
}

/// One of the connections a peer address holds; given back when dropped.
struct PeerSlot {
    table: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PeerSlot {
    fn take(table: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr) -> Option<Self> {
        let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
        let n = t.entry(ip).or_insert(0);
        if *n >= MAX_PER_PEER {
            return None;
        }
        *n += 1;
        Some(Self {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = t.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

/// One of a connection's open channels; given back when dropped.
struct ChannelSlot(Arc<AtomicUsize>);

impl ChannelSlot {
    fn take(count: &Arc<AtomicUsize>) -> Option<Self> {
        let prev = count.fetch_add(1, Ordering::Relaxed);
        if prev >= MAX_CHANNELS {
            count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Self(count.clone()))
    }
}

impl Drop for ChannelSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves when the connection has ended (or the sender is gone).
async fn ends(gone: &mut watch::Receiver<bool>) {
    let _ = gone.wait_for(|g| *g).await.map(drop);
}

/// Runs `f` unless the connection ends first.
async fn unless_gone<T>(gone: &mut watch::Receiver<bool>, f: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        v = f => Some(v),
        _ = ends(gone) => None,
    }
}

/// Who signed in, and where they go.
#[derive(Debug, Clone)]
struct Login {
    caller: Caller,
    owner: String,
    name: String,
    /// Where the sandbox is made from if it does not exist [default: the daemon's].
    template: Option<String>,
}

impl Login {
    /// `OWNER+NAME` (or `OWNER`) with the key `fingerprint`, if a tenant registered it
    /// for that owner.
    fn of(st: &AppState, user: &str, fingerprint: &str) -> Option<Self> {
        let (owner, name) = match user.split_once('+') {
            Some((o, n)) => (o, n),
            None => (user, DEFAULT_NAME),
        };
        if owner.is_empty() || name.is_empty() {
            return None;
        }
        let (caller, template) = st.mgr.ssh_caller(owner, fingerprint)?;
        Some(Self {
            caller,
            owner: owner.to_string(),
            name: name.to_string(),
            template,
        })
    }

    /// The sandbox, made or brought up as needed: its id.
    async fn sandbox(&self, st: &AppState) -> Result<String, Error> {
        let req = CreateSandbox {
            owner: Some(self.owner.clone()),
            name: Some(self.name.clone()),
            template: self.template.clone(),
            get_or_create: true,
            ..Default::default()
        };
        let (info, _) = st.mgr.create(&self.caller, req).await?;
        Ok(info.id)
    }
}

/// One client connection.
struct Conn {
    st: AppState,
    login: Option<Login>,
    signed_in: Arc<std::sync::atomic::AtomicBool>,
    /// Turns true when the connection has ended: its channels' tasks stop then.
    gone: watch::Receiver<bool>,
    /// Channels open now.
    channels: Arc<AtomicUsize>,
    /// Environment variables taken per session channel.
    env_counts: HashMap<russh::ChannelId, usize>,
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn pty_request(
        &mut self,
        channel: russh::ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: russh::ChannelId,
        variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The same rule as the session's task applies, in the same order.
        let taken = self.env_counts.entry(channel).or_insert(0);
        if *taken < MAX_ENV && env_name(variable_name) {
            *taken += 1;
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn x11_request(
        &mut self,
        channel: russh::ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: russh::ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // sftp is answered by the session's task once the subsystem runs.
        if name == "sftp" {
            return Ok(());
        }
        session.channel_failure(channel)
    }

    async fn channel_close(
        &mut self,
        channel: russh::ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.env_counts.remove(&channel);
        Ok(())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        let fp = offer.public_key.fingerprint(HashAlg::Sha256).to_string();
        Ok(match Login::of(&self.st, user, &fp) {
            Some(_) => Auth::Accept,
            None => Auth::reject(),
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fp = key.public_key.fingerprint(HashAlg::Sha256).to_string();
        Ok(match Login::of(&self.st, user, &fp) {
            Some(login) => {
                self.login = Some(login);
                self.signed_in.store(true, Ordering::Relaxed);
                Auth::Accept
            }
            None => Auth::reject(),
        })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(login), Some(slot)) = (self.login.clone(), ChannelSlot::take(&self.channels))
        else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        reply.accept().await;
        let st = self.st.clone();
        let handle = session.handle();
        let gone = self.gone.clone();
        tokio::spawn(async move {
            let _slot = slot;
            run_session(st, login, channel, handle, gone).await
        });
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The sandbox's own loopback, by any of its names; nothing else.
        let local = matches!(host_to_connect, "localhost" | "127.0.0.1" | "::1" | "[::1]");
        let (Some(login), true, Ok(port), Some(slot)) = (
            self.login.clone(),
            local,
            u16::try_from(port_to_connect),
            ChannelSlot::take(&self.channels),
        ) else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let st = self.st.clone();
        let mut gone = self.gone.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let conn = match login.sandbox(&st).await {
                Ok(id) => st.mgr.connect_port_as(&login.caller, &id, port).await.ok(),
                Err(_) => None,
            };
            let Some(mut conn) = conn else {
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return;
            };
            reply.accept().await;
            let _activity = conn.activity.take();
            let mut stream = channel.into_stream();
            let pump = tokio::io::copy_bidirectional(&mut stream, &mut conn.stream);
            let _ = unless_gone(&mut gone, pump).await;
        });
        Ok(())
    }
}

/// A session channel: its requests until a shell or command starts, then the process.
/// Requests other than shell, exec and the sftp subsystem are answered by the handler as
/// they come (russh matches a reply to the request pending at the time it is sent); this
/// task answers those three once it knows the outcome.
async fn run_session(
    st: AppState,
    login: Login,
    mut ch: Channel<Msg>,
    handle: Handle,
    mut gone: watch::Receiver<bool>,
) {
    let id = ch.id();
    let mut pty: Option<(String, WinSize)> = None;
    let mut env = BTreeMap::new();
    let mut env_taken = 0;
    let mut early = Vec::new();
    let mut early_eof = false;
    let command = loop {
        let Some(Some(msg)) = unless_gone(&mut gone, ch.wait()).await else {
            return;
        };
        match msg {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                ..
            } => {
                // A client with no terminal of its own (`ssh -tt` from a script) asks
                // for 0x0: it gets the classic 80x24.
                let s = size(col_width, row_height).unwrap_or(WinSize { rows: 24, cols: 80 });
                pty = Some((term, s));
            }
            // Taken as the handler judged them (`Conn::env_request`).
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } if env_taken < MAX_ENV && env_name(&variable_name) => {
                env_taken += 1;
                env.insert(variable_name, variable_value);
            }
            ChannelMsg::RequestShell { want_reply } => break (None, want_reply),
            ChannelMsg::Exec {
                want_reply,
                command,
            } => {
                break (
                    Some(String::from_utf8_lossy(&command).into_owned()),
                    want_reply,
                )
            }
            ChannelMsg::RequestSubsystem { want_reply, name } if name == "sftp" => {
                return sftp(st, login, ch, handle, want_reply, gone).await;
            }
            ChannelMsg::Data { data } => {
                if early.len() + data.len() > MAX_EARLY_INPUT {
                    let _ = ch
                        .extended_data_bytes(
                            1,
                            Bytes::from_static(
                                b"warren: more input came before the command than is kept\r\n",
                            ),
                        )
                        .await;
                    let _ = ch.close().await;
                    return;
                }
                early.extend_from_slice(&data);
            }
            ChannelMsg::Eof => early_eof = true,
            ChannelMsg::Close => return,
            _ => {}
        }
    };
    let (command, want_reply) = command;
    let tty = pty.as_ref().map(|(_, s)| *s);
    if let Some((term, _)) = &pty {
        env.insert("TERM".into(), term.clone());
    }
    let started = unless_gone(&mut gone, start(&st, &login, command, tty, env)).await;
    let Some(started) = started else { return };
    let (conn, p) = match started {
        Ok(s) => s,
        Err(e) => {
            reply(&handle, id, want_reply, false).await;
            let message = Bytes::from(format!("warren: {}\r\n", e.body().message));
            let _ = unless_gone(&mut gone, ch.extended_data_bytes(1, message)).await;
            let _ = ch.exit_status(255).await;
            let _ = ch.eof().await;
            let _ = ch.close().await;
            return;
        }
    };
    reply(&handle, id, want_reply, true).await;
    let _activity = conn.hold();
    let (mut rd, wr) = ch.split();
    // Three parts run at once, so that none waits on another: the process's output to
    // the client, the client's input to the process (which waits for the agent's credit
    // while the process is not reading), and the client's messages. russh stops the
    // whole connection while a channel's messages are not taken, the output included,
    // so they are taken as they come; input waiting for the process is held here (see
    // `Backlog`).
    let backlog = Arc::new(Backlog::default());
    let (input, queue) = mpsc::unbounded_channel::<Input>();
    let _writer = p
        .stdin()
        .map(|stdin| AbortOnDropHandle::new(tokio::spawn(feed(stdin, queue, backlog.clone()))));
    let resizer = p.resizer();
    let mut output = AbortOnDropHandle::new(tokio::spawn(send_output(
        conn,
        p,
        wr,
        handle.clone(),
        backlog.clone(),
        gone.clone(),
    )));
    let push = |i: Input| {
        if let Input::Data(d) = &i {
            backlog.add(d.len());
        }
        let _ = input.send(i);
    };
    if !early.is_empty() {
        push(Input::Data(early));
    }
    // A terminal has no end of input: the program reads ^D as the user types it.
    if early_eof && tty.is_none() {
        push(Input::Eof);
    }
    let mut ended = gone.clone();
    loop {
        tokio::select! {
            msg = rd.wait(), if !backlog.full() => match msg {
                Some(ChannelMsg::Data { data }) => push(Input::Data(data.to_vec())),
                Some(ChannelMsg::Eof) => {
                    if tty.is_none() {
                        push(Input::Eof);
                    }
                }
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    if let (Some(s), Some(_)) = (size(col_width, row_height), tty) {
                        let _ = resizer.resize(s).await;
                    }
                }
                Some(
                    ChannelMsg::RequestShell { want_reply } | ChannelMsg::Exec { want_reply, .. },
                ) => reply(&handle, id, want_reply, false).await,
                // The client left: the process goes with the session, as sshd's does.
                Some(ChannelMsg::Close) | None => return,
                Some(_) => {}
            },
            // Input waits: look again once some is taken, or the output may be stuck.
            _ = backlog.changed(), if backlog.full() => {}
            _ = &mut output => return,
            _ = ends(&mut ended) => return,
        }
    }
}

/// The process's output to the client, then its exit status; the channel ends after.
async fn send_output(
    conn: AgentConn,
    mut p: Followed,
    wr: russh::ChannelWriteHalf<Msg>,
    handle: Handle,
    backlog: Arc<Backlog>,
    mut gone: watch::Receiver<bool>,
) {
    let id = wr.id();
    loop {
        let ev = p.next().await;
        let sent = match ev {
            Ok(ProcessEvent::Stdout(d)) => {
                let _sending = backlog.sending();
                unless_gone(&mut gone, wr.data_bytes(Bytes::from(d))).await
            }
            Ok(ProcessEvent::Stderr(d)) => {
                let _sending = backlog.sending();
                unless_gone(&mut gone, wr.extended_data_bytes(1, Bytes::from(d))).await
            }
            Ok(ProcessEvent::Exited(s)) => {
                match (s.code, s.signal) {
                    (Some(code), _) => {
                        let _ = wr.exit_status(code as u32).await;
                    }
                    (None, Some(sig)) => {
                        let oom = conn.exit(&s).oom_killed;
                        let why = if oom { "killed: out of memory" } else { "" };
                        let _ = handle
                            .exit_signal_request(id, signal(sig), false, why.into(), String::new())
                            .await;
                    }
                    (None, None) => {
                        let _ = wr.exit_status(255).await;
                    }
                }
                break;
            }
            Err(e) => {
                let e = Error::from(e);
                let message = Bytes::from(format!("warren: {}\r\n", e.body().message));
                let _ = unless_gone(&mut gone, wr.extended_data_bytes(1, message)).await;
                let _ = wr.exit_status(255).await;
                break;
            }
        };
        if !matches!(sent, Some(Ok(()))) {
            return;
        }
    }
    let _ = wr.eof().await;
    let _ = wr.close().await;
}

/// Writes the client's input to the process's stdin, in order.
async fn feed(stdin: Stdin, mut queue: mpsc::UnboundedReceiver<Input>, backlog: Arc<Backlog>) {
    // Input the process no longer takes is dropped; its output still comes.
    let mut open = true;
    while let Some(i) = queue.recv().await {
        match i {
            Input::Data(d) => {
                if open {
                    open = stdin.write(&d).await.is_ok();
                }
                backlog.taken(d.len());
            }
            Input::Eof => {
                let _ = stdin.close().await;
            }
        }
    }
}

/// Input read from the client that the process has not taken yet.
///
/// The agent's input credit bounds what waits in the sandbox, and keeps a process that
/// does not read its stdin from stalling the agent connection (its output, resizes);
/// it cannot bound what waits here, because russh grants the client's SSH window as
/// data arrives, not as it is consumed: the only brake is to stop taking the channel's
/// messages. So reading from the client stops once [`PAUSE_BACKLOG`] waits (russh then
/// stops reading the connection, and TCP slows the client down), unless the output has
/// been waiting to be sent for [`STUCK`]: russh may then be stopped on this very channel
/// (and so not reading the client's window adjusts for the output), and the output
/// cannot go until its messages are taken; they are, up to [`MAX_BACKLOG`] held.
#[derive(Debug, Default)]
struct Backlog {
    bytes: AtomicUsize,
    /// When the output began waiting to be sent, in ms since `BASE`; 0 when it is not.
    sending_since: std::sync::atomic::AtomicU64,
    changed: tokio::sync::Notify,
}

/// What [`Backlog::sending`] returns: the send it marks ends when it is dropped.
struct Sending<'a>(&'a Backlog);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.sending_since.store(0, Ordering::Release);
    }
}

impl Backlog {
    fn now_ms() -> u64 {
        static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let base = *BASE.get_or_init(std::time::Instant::now);
        u64::try_from(base.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::AcqRel);
    }

    fn taken(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
        self.changed.notify_one();
    }

    fn sending(&self) -> Sending<'_> {
        self.sending_since.store(Self::now_ms(), Ordering::Release);
        self.changed.notify_one();
        Sending(self)
    }

    fn output_stuck(&self) -> bool {
        let since = self.sending_since.load(Ordering::Acquire);
        since != 0 && Self::now_ms().saturating_sub(since) >= STUCK.as_millis() as u64
    }

    /// Whether to stop taking the client's messages for now.
    fn full(&self) -> bool {
        let held = self.bytes.load(Ordering::Acquire);
        held >= MAX_BACKLOG || (held >= PAUSE_BACKLOG && !self.output_stuck())
    }

    /// Resolves when input was taken, or after a while (the output may be stuck by then).
    async fn changed(&self) {
        let _ = tokio::time::timeout(STUCK, self.changed.notified()).await;
    }
}

/// Input held for a process before the client's messages wait.
const PAUSE_BACKLOG: usize = 4 << 20;
/// Most input held for a process whose output is stuck.
const MAX_BACKLOG: usize = 64 << 20;
/// How long output waits to be sent before it counts as stuck.
const STUCK: Duration = Duration::from_millis(50);

/// What the client sends a session's process, in order.
enum Input {
    Data(Vec<u8>),
    Eof,
}

/// Serves the SFTP subsystem on a session channel, in the login's sandbox, as the
/// template's user.
async fn sftp(
    st: AppState,
    login: Login,
    ch: Channel<Msg>,
    handle: Handle,
    want_reply: bool,
    gone: watch::Receiver<bool>,
) {
    let id = ch.id();
    let opened = async {
        let sandbox = login.sandbox(&st).await?;
        let conn = st.mgr.agent(&login.caller, &sandbox).await?;
        let user = st.mgr.default_user(&login.caller, conn.id())?;
        Ok::<_, Error>((conn, user))
    };
    match opened.await {
        Ok((conn, user)) => {
            reply(&handle, id, want_reply, true).await;
            let activity = conn.hold();
            let session = crate::sftp::Sftp::new(conn.into_client(), user, activity);
            // The SFTP server runs on one end of a pipe; two tasks carry the channel to
            // the other, one each way (so that a full channel one way never stops the
            // other), and the session answers with an exit status once the server ends,
            // as sshd does for a subsystem (clients count a missing one as a failure).
            let (mine, theirs) = tokio::io::duplex(SFTP_PIPE);
            russh_sftp::server::run(theirs, session).await;
            pump_sftp(ch, mine, gone).await;
        }
        Err(e) => {
            reply(&handle, id, want_reply, false).await;
            let _ = ch
                .extended_data_bytes(1, Bytes::from(format!("warren: {}\r\n", e.body().message)))
                .await;
            let _ = ch.close().await;
        }
    }
}

/// Carries an SFTP session between its channel and the server's pipe until either ends.
async fn pump_sftp(
    ch: Channel<Msg>,
    pipe: tokio::io::DuplexStream,
    mut gone: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut from_server, mut to_server) = tokio::io::split(pipe);
    let (mut rx, tx) = ch.split();
    let inbound = async move {
        while let Some(msg) = rx.wait().await {
            let data = match msg {
                ChannelMsg::Data { data } => data,
                ChannelMsg::Eof | ChannelMsg::Close => break,
                _ => continue,
            };
            if to_server.write_all(&data).await.is_err() {
                break;
            }
        }
        // The server sees its input end, finishes, and closes its side.
        let _ = to_server.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; SFTP_PIPE];
        loop {
            match from_server.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => {
                    if tx
                        .data_bytes(Bytes::copy_from_slice(&buf[..n]))
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
            }
        }
    };
    let inbound = tokio::spawn(inbound);
    let ended = unless_gone(&mut gone, outbound).await;
    inbound.abort();
    if ended == Some(true) {
        let _ = tx.exit_status(0).await;
        let _ = tx.eof().await;
        let _ = tx.close().await;
    }
}

/// Starts the session's process in the login's sandbox (made or brought up first).
async fn start(
    st: &AppState,
    login: &Login,
    command: Option<String>,
    tty: Option<WinSize>,
    env: BTreeMap<String, String>,
) -> Result<(AgentConn, Followed), Error> {
    let id = login.sandbox(st).await?;
    let conn = st.mgr.agent(&login.caller, &id).await?;
    let req = ExecRequest {
        command: Some(Command::Shell(
            command.unwrap_or_else(|| LOGIN_SHELL.to_string()),
        )),
        env,
        tty,
        stdin: true,
        ..Default::default()
    };
    let p = Followed::exec(conn.client(), req).await?;
    Ok((conn, p))
}

async fn reply(handle: &Handle, id: russh::ChannelId, want_reply: bool, ok: bool) {
    if !want_reply {
        return;
    }
    let _ = if ok {
        handle.channel_success(id).await
    } else {
        handle.channel_failure(id).await
    };
}

fn size(cols: u32, rows: u32) -> Option<WinSize> {
    let (rows, cols) = (u16::try_from(rows).ok()?, u16::try_from(cols).ok()?);
    win_size(rows, cols).ok()
}

/// A name a shell would take for a variable.
fn env_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && n.len() <= 128
}

/// The SSH name of signal `n` (RFC 4254 §6.10 names them without `SIG`).
fn signal(n: i32) -> Sig {
    match n {
        1 => Sig::HUP,
        2 => Sig::INT,
        3 => Sig::QUIT,
        4 => Sig::ILL,
        6 => Sig::ABRT,
        8 => Sig::FPE,
        9 => Sig::KILL,
        10 => Sig::USR1,
        11 => Sig::SEGV,
        13 => Sig::PIPE,
        14 => Sig::ALRM,
        15 => Sig::TERM,
        n => Sig::Custom(format!("SIG{n}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_and_sizes_are_checked() {
        assert!(env_name("LANG") && env_name("LC_ALL") && env_name("_x1"));
        assert!(!env_name("") && !env_name("1A") && !env_name("A=B") && !env_name("A B"));
        assert_eq!(size(80, 24), Some(WinSize { rows: 24, cols: 80 }));
        assert_eq!(size(0, 24), None);
        assert_eq!(size(80, 70_000), None);
        assert!(matches!(signal(9), Sig::KILL));
    }

    #[test]
    fn the_host_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh/host_ed25519_key");
        let a = host_key(&path).unwrap();
        let b = host_key(&path).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "garbage").unwrap();
        assert!(
            host_key(&path).is_err(),
            "a damaged key is not replaced silently"
        );
    }
}
