//! An agent whose sandbox's memory is saved closes its socket on request and keeps its
//! processes; told to (SIGUSR2), it listens again. Alone in this test binary: the signal
//! goes to the whole process.

mod common;

use std::time::{Duration, Instant};

use common::*;
use warren_types::proto::{ErrorCode, Request, Response};

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} did not happen in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_quiesce_request_closes_the_socket_keeps_the_processes_and_sigusr2_reopens_it() {
    let agent = TestAgent::start_quiescable();
    let mut a = agent.connect().await;
    let mut req = sh("exec sleep 100");
    req.background = true;
    let (_, pid) = a.exec(req).await;

    let mut b = agent.connect().await;
    assert!(matches!(b.request(&Request::Quiesce).await, Response::Ok));
    until("the socket's removal", || {
        agent.socket.symlink_metadata().is_err()
    })
    .await;
    // Every connection is closed, not only the one that asked.
    while a.next_frame().await.is_some() {}
    assert!(b.next_frame().await.is_none());

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

#[tokio::test]
async fn an_agent_not_made_to_be_saved_refuses_to_quiesce_and_serves_on() {
    let agent = TestAgent::start();
    let mut a = agent.connect().await;
    match a.request(&Request::Quiesce).await {
        Response::Error { code, .. } => assert_eq!(code, ErrorCode::BadRequest),
        other => panic!("{other:?}"),
    }
    assert!(agent.socket.exists());
    assert!(matches!(
        a.request(&Request::ListProcesses).await,
        Response::Processes { .. }
    ));
}
