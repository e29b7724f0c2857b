//! Template archives sent over TCP with a tenant's key (`warren --host ... template
//! import`): the template made is that tenant's alone, sandboxes run from it, and an
//! archive over its limit is refused leaving nothing in the data directory. Needs root.

mod common;
mod trust;

use std::path::PathBuf;

use common::{can_run, stderr, stdout};
use sha2::{Digest, Sha256};
use trust::{my_turn, two_tenants, Daemon, Via};

fn sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn append(b: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, mode: u32, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// One layer: the host's /bin/sh and the libraries it loads, and `ballast` bytes in
/// `/ballast`.
fn shell_layer(ballast: usize) -> Vec<u8> {
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    let mut files = vec![("bin/sh".to_string(), sh.clone())];
    let ldd = std::process::Command::new("ldd").arg(&sh).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        if let Some(p) = line.split_whitespace().find(|w| w.starts_with('/')) {
            let inside = p.trim_start_matches('/').to_string();
            files.push((inside, std::fs::canonicalize(p).unwrap()));
        }
    }
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs: Vec<String> = Vec::new();
    for (inside, _) in &files {
        let mut d = PathBuf::from(inside);
        let mut chain = Vec::new();
        while let Some(p) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            chain.push(format!("{}/", p.display()));
            d = p.to_path_buf();
        }
        for c in chain.into_iter().rev() {
            if !dirs.contains(&c) {
                append(&mut b, &c, tar::EntryType::Directory, 0o755, &[]);
                dirs.push(c);
            }
        }
    }
    for d in ["etc/", "tmp/"] {
        append(&mut b, d, tar::EntryType::Directory, 0o777, &[]);
    }
    append(
        &mut b,
        "etc/passwd",
        tar::EntryType::Regular,
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n",
    );
    append(
        &mut b,
        "etc/uploaded",
        tar::EntryType::Regular,
        0o644,
        b"sent over TCP\n",
    );
    for (inside, host) in &files {
        let data = std::fs::read(host).unwrap();
        append(&mut b, inside, tar::EntryType::Regular, 0o755, &data);
    }
    if ballast > 0 {
        let data = vec![7u8; ballast];
        append(&mut b, "ballast", tar::EntryType::Regular, 0o644, &data);
    }
    b.into_inner().unwrap()
}

/// `docker save` of one layer.
fn docker_save(layer: Vec<u8>) -> Vec<u8> {
    let cfg = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha(&layer))]},
    }))
    .unwrap();
    let cfg_name = format!("{}.json", sha(&cfg));
    let manifest = serde_json::json!([
        {"Config": cfg_name, "RepoTags": ["up:latest"], "Layers": ["0/layer.tar"]}
    ]);
    let mut b = tar::Builder::new(Vec::new());
    append(&mut b, &cfg_name, tar::EntryType::Regular, 0o644, &cfg);
    append(
        &mut b,
        "0/layer.tar",
        tar::EntryType::Regular,
        0o644,
        &layer,
    );
    let manifest = serde_json::to_vec(&manifest).unwrap();
    append(
        &mut b,
        "manifest.json",
        tar::EntryType::Regular,
        0o644,
        &manifest,
    );
    b.into_inner().unwrap()
}

#[test]
fn an_archive_sent_over_tcp_is_its_tenants_template() {
    if !can_run("an_archive_sent_over_tcp_is_its_tenants_template") {
        return;
    }
    let _turn = my_turn();
    let (d, key_a, key_b) = two_tenants(None);
    let archive = d.dir().join("image.tar");
    std::fs::write(&archive, docker_save(shell_layer(0))).unwrap();
    let archive = archive.to_str().unwrap();

    let o = d.tcp(Some(&key_a), &["template", "import", archive, "up"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "up\n");
    // Not a terminal: no progress, but the final line.
    assert!(stderr(&o).contains("warren: sent "), "{}", stderr(&o));

    // A sandbox runs from it, with the archive's files.
    let o = d.tcp(Some(&key_a), &["create", "--template", "up"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    d.saw(&id);
    let o = d.tcp(
        Some(&key_a),
        &[
            "exec",
            &id,
            "--",
            "/bin/sh",
            "-c",
            "read l < /etc/uploaded; echo $l",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "sent over TCP\n");
    let o = d.tcp(Some(&key_a), &["rm", &id]);
    assert!(o.status.success(), "{}", stderr(&o));

    // The other tenant neither sees it nor makes sandboxes from it; its own name is free.
    let o = d.tcp(Some(&key_b), &["template", "ls", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains("\"up\""), "{}", stdout(&o));
    let o = d.tcp(Some(&key_b), &["template", "inspect", "up"]);
    assert!(!o.status.success());
    let o = d.tcp(Some(&key_b), &["create", "--template", "up"]);
    assert!(!o.status.success(), "{}", stdout(&o));

    // Over its limit: refused naming it, nothing made, nothing left behind.
    let o = d.tcp(
        Some(&key_a),
        &[
            "template",
            "import",
            archive,
            "--name",
            "small",
            "--max-size",
            "4K",
        ],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("payload_too_large") && err.contains("4 KiB"),
        "{err}"
    );
    let o = d.tcp(Some(&key_a), &["template", "inspect", "small"]);
    assert!(!o.status.success());
    let uploads = d.data_dir().join("uploads");
    let left: Vec<_> = std::fs::read_dir(&uploads)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");

    let o = d.tcp(Some(&key_a), &["template", "rm", "up"]);
    assert!(o.status.success(), "{}", stderr(&o));
    d.finish();
}

#[test]
fn a_shared_template_shows_a_tenant_its_own_users_and_no_host_path() {
    if !can_run("a_shared_template_shows_a_tenant_its_own_users_and_no_host_path") {
        return;
    }
    let _turn = my_turn();
    let (d, key_a, key_b) = two_tenants(None);
    // The host's root imports a template every tenant may use, from a path of the host.
    let archive = d.dir().join("shared-image.tar");
    std::fs::write(&archive, docker_save(shell_layer(0))).unwrap();
    let archive = archive.to_str().unwrap();
    d.ok(&["template", "import", archive, "shared"]);
    let a = d.create_as(&key_a, r#"{"template":"shared"}"#);
    let b = d.create_as(&key_b, r#"{"template":"shared"}"#);
    // Each tenant sees its own sandbox among the users, never the other's id; a tenant
    // other than the one it was imported in (`default`, the unix socket's) sees the
    // archive's name, not where on the host it was.
    for (key, mine, theirs, maker) in [(&key_a, &a, &b, true), (&key_b, &b, &a, false)] {
        let r = d.as_tenant(key, "GET", "/v1/templates/shared", "");
        assert_eq!(r.status, 200, "{}", r.text());
        let t = r.json();
        let users: Vec<&str> = t["used_by"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(users, [mine.as_str()], "{t}");
        let list = d.as_tenant(key, "GET", "/v1/templates", "").text();
        assert!(!list.contains(theirs.as_str()), "{list}");
        if maker {
            assert_eq!(t["source"], archive, "{t}");
        } else {
            assert_eq!(t["source"], "shared-image.tar", "{t}");
            assert!(!list.contains(d.dir().to_str().unwrap()), "{list}");
        }
        // Removing it (its maker only) names the caller's sandbox and counts the other's.
        let r = d.as_tenant(key, "DELETE", "/v1/templates/shared", "");
        assert_eq!(r.status, 409, "{}", r.text());
        assert!(!r.text().contains(theirs.as_str()), "{}", r.text());
        if maker {
            assert!(r.text().contains(mine.as_str()), "{}", r.text());
            assert!(
                r.text().contains("1 sandbox(es) of other tenants"),
                "{}",
                r.text()
            );
        }
    }
    // The operator, on the unix socket, sees both and the whole path.
    let t: serde_json::Value =
        serde_json::from_str(&d.ok(&["template", "inspect", "shared"])).unwrap();
    assert_eq!(t["used_by"].as_array().unwrap().len(), 2, "{t}");
    assert_eq!(t["source"], archive, "{t}");
    for (key, id) in [(&key_a, &a), (&key_b, &b)] {
        let r = d.as_tenant(key, "DELETE", &format!("/v1/sandboxes/{id}"), "");
        assert_eq!(r.status, 204, "{}", r.text());
    }
    d.ok(&["template", "rm", "shared"]);
    d.finish();
}

#[test]
fn an_import_tells_how_far_it_has_come() {
    if !can_run("an_import_tells_how_far_it_has_come") {
        return;
    }
    let _turn = my_turn();
    let d = Daemon::start(false);
    let archive = d.dir().join("big.tar");
    std::fs::write(&archive, docker_save(shell_layer(24 << 20))).unwrap();
    let import = |path: &str, name: &str| {
        let body = serde_json::json!({"archive": archive, "name": name}).to_string();
        d.http(
            Via::Unix,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    // With `progress=true`: NDJSON lines as the layer unpacks, then the result.
    let r = import("/v1/templates/import?progress=true", "big");
    assert_eq!(r.status, 200, "{}", r.text());
    let events: Vec<serde_json::Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (last, progress) = events.split_last().unwrap();
    assert_eq!(last["type"], "done", "{last}");
    assert_eq!(last["result"]["template"]["name"], "big", "{last}");
    assert_eq!(last["result"]["new_layers"], 1, "{last}");
    // The 24 MiB layer is told in steps of at most a few MiB, never going back.
    assert!(progress.len() >= 5, "{events:?}");
    let total = progress[0]["total_bytes"].as_u64().unwrap();
    assert!(total > 24 << 20, "{events:?}");
    let mut seen = 0;
    for p in progress {
        assert_eq!(p["type"], "progress", "{p}");
        assert_eq!(
            (p["layer"].as_u64(), p["layers"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(p["total_bytes"].as_u64(), Some(total), "{p}");
        let bytes = p["bytes"].as_u64().unwrap();
        assert!(bytes >= seen && bytes <= total, "{events:?}");
        seen = bytes;
    }
    assert_eq!(seen, total, "the last progress is the whole");
    // Refused before its first layer (the name is taken): the error's status, no stream.
    let r = import("/v1/templates/import?progress=true", "big");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.code(), "invalid_state", "{}", r.text());
    // Without it, one result, as before.
    let r = import("/v1/templates/import", "plain");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["template"]["name"], "plain");
    // The CLI follows the lines (no bar when stderr is not a terminal).
    let archive = archive.to_str().unwrap();
    let o = d.run(&["template", "import", archive, "cli"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "cli\n");
    for name in ["big", "plain", "cli"] {
        d.ok(&["template", "rm", name]);
    }
    d.finish();
}
