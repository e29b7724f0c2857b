//! The daemon's log: requests and lifecycle changes as JSON lines with the tenant and the
//! sandbox, and never a query string. Needs root (it makes a sandbox).

mod common;
mod trust;

use common::can_run;
use trust::{my_turn, Daemon};

#[test]
fn the_daemon_logs_requests_and_lifecycle_changes_as_json_lines() {
    if !can_run("the_daemon_logs_requests_and_lifecycle_changes_as_json_lines") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start_opts(trust::Options {
        serve_args: vec!["--log-format".into(), "json".into()],
        ..Default::default()
    });
    d.ok(&["create", "--name", "logged"]);
    let id = d
        .ok(&["inspect", "logged", "--format", "{{.id}}"])
        .trim()
        .to_string();
    d.ok(&["exec", "logged", "--", "true"]);
    let copy = tempfile::tempdir().unwrap();
    let to = copy.path().join("hostname");
    d.ok(&["cp", "logged:/etc/hostname", to.to_str().unwrap()]);
    d.ok(&["rm", "logged"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !d.log().contains("\"terminated\"") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let lines: Vec<serde_json::Value> = d
        .log()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let field = |v: &serde_json::Value, k: &str| v["fields"][k].as_str().map(str::to_string);
    let exec = lines.iter().find(|v| {
        v["target"] == "warren::request"
            && field(v, "path").as_deref() == Some("/v1/sandboxes/logged/exec")
    });
    let exec = exec.unwrap_or_else(|| panic!("no exec request logged:\n{}", d.log()));
    assert_eq!(exec["level"], "INFO");
    assert_eq!(field(exec, "method").as_deref(), Some("POST"));
    assert_eq!(field(exec, "tenant").as_deref(), Some("default"));
    // The sandbox as the request named it.
    assert_eq!(field(exec, "sandbox").as_deref(), Some("logged"));
    assert_eq!(exec["fields"]["status"], 200);
    assert!(exec["fields"]["us"].as_u64().is_some(), "{exec}");
    for kind in ["created", "terminated"] {
        assert!(
            lines.iter().any(|v| v["target"] == "warren::lifecycle"
                && field(v, "kind").as_deref() == Some(kind)
                && field(v, "sandbox").as_deref() == Some(id.as_str())),
            "no {kind} line:\n{}",
            d.log()
        );
    }
    // What the engine logs while answering a request carries the request's span: the
    // tenant, and the sandbox as the request named it.
    let terminated = lines
        .iter()
        .find(|v| {
            v["target"] == "warren::lifecycle" && field(v, "kind").as_deref() == Some("terminated")
        })
        .unwrap();
    assert_eq!(terminated["span"]["name"], "request", "{terminated}");
    assert_eq!(terminated["span"]["tenant"], "default", "{terminated}");
    assert_eq!(terminated["span"]["sandbox"], "logged", "{terminated}");
    // The file read went through `?path=`: no line carries a query.
    assert!(
        lines
            .iter()
            .filter_map(|v| field(v, "path"))
            .any(|p| p.ends_with("/files")),
        "the download is not logged:\n{}",
        d.log()
    );
    assert!(
        !d.log().contains("/etc/hostname"),
        "a query string was logged"
    );
}

#[test]
fn the_e2b_listener_logs_routes_with_tenant_and_sandbox_and_no_secret() {
    use trust::Via;
    if !can_run("the_e2b_listener_logs_routes_with_tenant_and_sandbox_and_no_secret") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start_opts(trust::Options {
        e2b: true,
        serve_args: vec!["--log-format".into(), "json".into()],
        ..Default::default()
    });
    let key = d.api_key();
    let r = d.http(
        Via::E2b,
        "POST",
        "/sandboxes",
        &[("X-API-Key", &key), ("Content-Type", "application/json")],
        br#"{"templateID": "base", "timeout": 300}"#,
    );
    assert_eq!(r.status, 201, "create: {}", r.text());
    let id = r.json()["sandboxID"].as_str().unwrap().to_string();
    d.saw(&id);
    let token = r.json()["envdAccessToken"].as_str().unwrap().to_string();
    let envd = [
        ("E2b-Sandbox-Id", id.as_str()),
        ("X-Access-Token", token.as_str()),
        ("Content-Type", "application/octet-stream"),
    ];
    let r = d.http(
        Via::E2b,
        "POST",
        "/files?path=/tmp/path-in-a-query&username=user",
        &envd,
        b"x",
    );
    assert_eq!(r.status, 200, "upload: {}", r.text());
    let r = d.http(
        Via::E2b,
        "DELETE",
        &format!("/sandboxes/{id}"),
        &[("X-API-Key", &key)],
        b"",
    );
    assert_eq!(r.status, 204, "kill: {}", r.text());

    let lines: Vec<serde_json::Value> = d
        .log()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .filter(|v: &serde_json::Value| {
            v["target"] == "warren::request" && v["fields"]["api"] == "e2b"
        })
        .collect();
    let find = |method: &str, route: &str| {
        lines
            .iter()
            .find(|v| v["fields"]["method"] == method && v["fields"]["route"] == route)
            .unwrap_or_else(|| panic!("no {method} {route} line:\n{}", d.log()))
    };
    let create = find("POST", "/sandboxes");
    assert_eq!(create["fields"]["status"], 201);
    assert_eq!(create["fields"]["tenant"], "default");
    for (method, route, status) in [("POST", "/files", 200), ("DELETE", "/sandboxes/{id}", 204)] {
        let line = find(method, route);
        assert_eq!(line["fields"]["status"], status, "{line}");
        assert_eq!(line["fields"]["tenant"], "default", "{line}");
        assert_eq!(line["fields"]["sandbox"], id.as_str(), "{line}");
        assert!(line["fields"]["us"].as_u64().is_some(), "{line}");
    }
    let log = d.log();
    for secret in [key.as_str(), token.as_str(), "path-in-a-query"] {
        assert!(!log.contains(secret), "{secret:?} is in the log:\n{log}");
    }
    d.finish();
}
