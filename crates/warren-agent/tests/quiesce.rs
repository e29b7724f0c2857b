//! An agent whose sandbox's memory is saved closes its socket and every connection on
//! SIGUSR1, keeping its processes, and listens again on SIGUSR2. Alone in this test
//! binary: the signals go to the whole process.

mod common;

use std::time::{Duration, Instant};

use common::*;
use warren_types::proto::{Request, Response};

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} did not happen in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn sigusr1_closes_every_connection_and_keeps_the_processes_and_sigusr2_reopens() {
    let agent = TestAgent::start_quiescable();
    // A connection with a channel still at work: it follows a running process.
    let mut a = agent.connect().await;
    let mut req = sh("exec sleep 100");
    req.background = true;
    let (_, pid) = a.exec(req).await;
    let mut idle = agent.connect().await;

    nix::sys::signal::raise(nix::sys::signal::Signal::SIGUSR1).unwrap();
    until("the socket's removal", || {
        agent.socket.symlink_metadata().is_err()
    })
    .await;
    // Closed, both: the work of a channel does not hold its connection open (a host
    // socket left open cannot be saved).
    while a.next_frame().await.is_some() {}
    assert!(idle.next_frame().await.is_none());

    nix::sys::signal::raise(nix::sys::signal::Signal::SIGUSR2).unwrap();
    until("the socket's return", || {
        std::os::unix::net::UnixStream::connect(&agent.socket).is_ok()
    })
    .await;
    let mut c = agent.connect().await;
    match c.request(&Request::ListProcesses).await {
        Response::Processes { list } => {
            let p = list.iter().find(|p| p.pid == pid).expect("kept across");
            assert!(p.exit.is_none(), "still running: {p:?}");
        }
        other => panic!("{other:?}"),
    }
}
