//! Resource abuse, contained: a sandbox forks, allocates, fills its disk and inode table,
//! spins, exhausts descriptors, floods its output, and drowns the file API in tiny
//! files. While each runs, a neighbour sandbox keeps answering execs through the API
//! (none fails, none starves past a liveness bound), and the daemon's resident memory
//! stays bounded. How much the neighbour slowed is a figure, not a verdict: each test
//! prints its latencies before, during and after (`cargo test -- --nocapture` shows
//! them; scripts/trust records them in docs/trust.md). Needs root.
//!
//! The suite runs on the backend `WARREN_ISOLATION` names (the namespace backend when
//! unset; scripts/test runs it on each): a backend that is not available here, or that
//! enforces no limit of the kind a case abuses, records that case's skip and why.
//!
//! The abuser has ordinary limits (the containment under test is the kernel's); sizes
//! scale with WARREN_TRUST_FLOOD_BYTES and WARREN_TRUST_TINY_FILES (scripts/trust runs
//! the 10 GB and million-file forms).

mod common;
mod trust;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::can_run;
use trust::{my_turn, rss, Daemon, Options, Via};
use warren_testkit::eventually;

/// The daemon's resident memory must stay under this through every abuse.
const RSS_BOUND: u64 = 256 << 20;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One exec of `true` in `id` through the API, timed.
fn exec_latency(d: &Daemon, id: &str) -> Duration {
    let t = Instant::now();
    let r = d.http(
        Via::Unix,
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        &[("Content-Type", "application/json")],
        br#"{"command":{"argv":["true"]}}"#,
    );
    assert_eq!(r.status, 200, "neighbour exec: {}", r.text());
    t.elapsed()
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// How many quiet exec latencies are taken before an attack, and again after it.
const QUIET_SAMPLES: usize = 15;

/// A neighbour's exec that takes longer than this is starved, not slowed: the machine
/// is shared and noisy, so the bound is about liveness, far above any latency target.
const STARVED: Duration = Duration::from_secs(20);

/// A daemon, a neighbour, and an abuser with limits, both on the suite's backend.
struct Bench {
    d: Daemon,
    neighbour: String,
    abuser: String,
    /// A directory of the abuser's own to fill: its /tmp, or in trust mode (whose /tmp
    /// is the host's) its working directory.
    scratch: String,
    /// The neighbour's latencies before any abuse.
    quiet: Vec<Duration>,
    /// Trust mode's sandboxes' directories, removed last.
    _spaces: Spaces,
}

/// The directory trust-mode sandboxes work in, reachable by the account they run as
/// (the daemon's own directory is private to root).
struct Spaces(std::path::PathBuf);

impl Drop for Spaces {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bench on the suite's backend (`WARREN_ISOLATION`, the namespace backend when
/// unset; scripts/test runs this suite on each), with `limits` on the abuser. `None`,
/// with the skip recorded, when the backend is not available here or does not enforce
/// one of the limits the case is about (`needs`): without it the case shows nothing.
fn bench(test: &str, limits: &str, needs: &[&str]) -> Option<Bench> {
    let isolation = common::isolation();
    let spaces = Spaces(std::path::PathBuf::from(format!(
        "/tmp/wt-abuse-{}",
        std::process::id()
    )));
    let _ = std::fs::remove_dir_all(&spaces.0);
    let d = Daemon::start_opts(Options {
        config: Some(format!(
            "[backends.process]\nuser = \"nobody\"\ndir = \"{}\"\n",
            spaces.0.display()
        )),
        ..Default::default()
    });
    let r = d.http(Via::Unix, "GET", "/v1/backends", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let list = r.json();
    let backend = list
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["name"] == isolation.as_str())
        .unwrap_or_else(|| panic!("no backend {isolation} in {list}"))
        .clone();
    let test = format!("{test} ({isolation})");
    if backend["available"] != true {
        warren_testkit::skip(
            &test,
            backend["reason"].as_str().unwrap_or("not available here"),
        );
        d.finish();
        return None;
    }
    let enforced = &backend["capabilities"]["limits"];
    if let Some(l) = needs
        .iter()
        .find(|l| !enforced.as_array().unwrap().iter().any(|e| e == **l))
    {
        warren_testkit::skip(
            &test,
            &format!(
                "{isolation} enforces no {l} limit (its limits: {enforced}): a sandbox's {l} \
                 is the host's, nothing of the sandbox's own to exhaust"
            ),
        );
        d.finish();
        return None;
    }
    let neighbour = d.create(&["--isolation", &isolation, "--no-home"]);
    let mut args = vec!["--isolation", &isolation, "--no-home"];
    args.extend(limits.split_whitespace());
    let abuser = d.create(&args);
    let scratch = if isolation == "process" {
        spaces.0.join(&abuser).display().to_string()
    } else {
        "/tmp".to_string()
    };
    // Warm up both paths, then sample the quiet latency.
    for _ in 0..3 {
        exec_latency(&d, &neighbour);
    }
    let quiet = (0..QUIET_SAMPLES)
        .map(|_| exec_latency(&d, &neighbour))
        .collect();
    Some(Bench {
        d,
        neighbour,
        abuser,
        scratch,
        quiet,
        _spaces: spaces,
    })
}

impl Bench {
    /// Runs `abuse` on a thread while sampling the neighbour's latency and the daemon's
    /// RSS; asserts both stayed in bounds and returns what `abuse` returned.
    fn during<R: Send>(&self, what: &str, abuse: impl FnOnce(&Daemon, &str) -> R + Send) -> R {
        let done = AtomicBool::new(false);
        let pid = self.d.pid().expect("a running daemon");
        let started = Instant::now();
        let (result, mut samples, peak) = std::thread::scope(|s| {
            let h = s.spawn(|| {
                // Set however the abuse ends: a failed assertion in it must end the
                // sampling too, not leave it waiting.
                let _done = SetOnDrop(&done);
                abuse(&self.d, &self.abuser)
            });
            let mut samples = Vec::new();
            let mut peak = rss(pid);
            // Give the abuse a moment to get going before measuring.
            std::thread::sleep(Duration::from_millis(300));
            while !done.load(Ordering::SeqCst) {
                samples.push(exec_latency(&self.d, &self.neighbour));
                peak = peak.max(rss(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            (h.join().unwrap(), samples, peak)
        });
        let took = started.elapsed();
        assert!(
            samples.len() >= 3,
            "{what}: ended too soon to measure ({} samples in {took:?})",
            samples.len()
        );
        // The quiet value is sampled on both sides of the attack: this machine is shared,
        // and one calm moment before it is not its usual state.
        let mut after: Vec<Duration> = (0..QUIET_SAMPLES)
            .map(|_| exec_latency(&self.d, &self.neighbour))
            .collect();
        let mut quiet: Vec<Duration> = self.quiet.iter().chain(&after).copied().collect();
        let (before, after, quiet) = (
            median(&mut self.quiet.clone()),
            median(&mut after),
            median(&mut quiet),
        );
        let worst = *samples.iter().max().unwrap();
        let during = median(&mut samples);
        println!(
            "ABUSE {what}: {:.1} s; neighbour exec median {:.1} ms (quiet {:.1} ms: {:.1} before, \
             {:.1} after; ratio {:.2}), worst {:.1} ms over {} samples; daemon RSS peak {:.1} MiB",
            took.as_secs_f64(),
            ms(during),
            ms(quiet),
            ms(before),
            ms(after),
            ms(during) / ms(quiet),
            ms(worst),
            samples.len(),
            peak as f64 / (1 << 20) as f64
        );
        assert!(
            worst < STARVED,
            "{what}: the neighbour waited {:.1} s for an exec (quiet median {:.1} ms)",
            worst.as_secs_f64(),
            ms(quiet)
        );
        assert!(
            peak < RSS_BOUND,
            "{what}: the daemon's RSS reached {} MiB",
            peak >> 20
        );
        result
    }

    /// The neighbour and the daemon still answer; the abuser is removed; nothing left.
    fn finish(self) {
        assert_eq!(self.d.exec(&self.neighbour, "echo fine").1, "fine\n");
        self.d.finish();
    }
}

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Whether the sandbox stopped and its events tell of a stop for one of `whys`.
fn stopped_for(d: &Daemon, id: &str, whys: &[&str]) -> bool {
    eventually(60, || d.info(id)["state"] != "running")
        && eventually(15, || {
            let events = d.ok(&["events", id]);
            whys.iter().any(|w| events.contains(w))
        })
}

/// An exec through the API: (status, JSON answer).
fn exec(d: &Daemon, id: &str, script: &str, timeout_ms: u64) -> (u16, serde_json::Value) {
    let body = serde_json::json!({ "command": { "shell": script }, "timeout_ms": timeout_ms });
    let r = d.http(
        Via::Unix,
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    (r.status, r.json())
}

#[test]
fn a_fork_bomb_is_contained() {
    if !can_run("a_fork_bomb_is_contained") {
        return;
    }
    let _turn = my_turn();
    let Some(b) = bench(
        "a_fork_bomb_is_contained",
        "--pids 64 --cpus 1 --memory 256M",
        &["pids"],
    ) else {
        return;
    };
    let v = b.during("fork bomb", |d, id| {
        let started = Instant::now();
        let v = exec(
            d,
            id,
            "python3 -c 'import os\nwhile True:\n try: os.fork()\n except OSError: pass'",
            6000,
        )
        .1;
        // Under gVisor the bomb stops its whole sandbox, at times within half a second:
        // the neighbour is sampled on through the stopped sandbox's teardown, for a
        // second and a half at least.
        std::thread::sleep(Duration::from_millis(1500).saturating_sub(started.elapsed()));
        v
    });
    if common::isolation() == "gvisor" {
        // gVisor's task limit is a cap on its Sentry's host tasks (SECURITY.md, A32),
        // and its memory the Sentry's: past either the whole sandbox stops, and says
        // which (forked Pythons reach 256M before the cap, here).
        assert!(
            stopped_for(&b.d, &b.abuser, &["too many tasks", "out of memory"]),
            "{v}: {}",
            b.d.ok(&["events", &b.abuser])
        );
    } else {
        assert_eq!(v["timed_out"], true, "{v}");
        // The bomb went with its process group at the timeout; the sandbox forks again.
        assert_eq!(b.d.exec(&b.abuser, "sh -c 'echo alive'").1, "alive\n");
    }
    b.finish();
}

#[test]
fn a_memory_bomb_is_contained() {
    if !can_run("a_memory_bomb_is_contained") {
        return;
    }
    let _turn = my_turn();
    let Some(b) = bench(
        "a_memory_bomb_is_contained",
        "--memory 128M --cpus 1",
        &["memory"],
    ) else {
        return;
    };
    let (kills, refused) = b.during("memory bomb", |d, id| {
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut kills, mut refused) = (0, None);
        while Instant::now() < deadline {
            if refused.is_some() {
                // The sandbox is gone; the neighbour is still measured.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            // As argv, not through sh: `oom_killed` is about the command the agent
            // started, and a shell would exit 137 itself (docs/trust.md). Written bytes:
            // a zeroed allocation would be untouched pages.
            let body = serde_json::json!({
                "command": { "argv": ["python3", "-c", "b = []\nwhile True: b.append(b'x' * (16 << 20))"] },
                "timeout_ms": 10_000,
            });
            let r = d.http(
                Via::Unix,
                "POST",
                &format!("/v1/sandboxes/{id}/exec"),
                &[("Content-Type", "application/json")],
                body.to_string().as_bytes(),
            );
            if r.status != 200 {
                refused = Some(format!("{} {}", r.status, r.text()));
            } else if r.json()["oom_killed"] == true {
                kills += 1;
            }
        }
        (kills, refused)
    });
    match refused {
        // gVisor's Sentry is one host process, which the host's OOM killer takes whole:
        // the sandbox stops, and says why.
        Some(why) if common::isolation() == "gvisor" => assert!(
            stopped_for(&b.d, &b.abuser, &["out of memory"]),
            "{why}: {}",
            b.d.ok(&["events", &b.abuser])
        ),
        Some(why) => panic!("an exec past the memory limit: {why}"),
        None => assert!(kills >= 1, "no OOM kill reported"),
    }
    b.finish();
}

#[test]
fn filling_the_disk_is_contained() {
    if !can_run("filling_the_disk_is_contained") {
        return;
    }
    let _turn = my_turn();
    let Some(b) = bench(
        "filling_the_disk_is_contained",
        "--disk 256M --cpus 1",
        &["disk"],
    ) else {
        return;
    };
    let host_before = free_bytes(&b.d.data_dir());
    let v = b.during("disk fill", |d, id| {
        exec(
            d,
            id,
            "dd if=/dev/zero of=/tmp/fill bs=1M 2>&1; sync; sleep 1",
            60_000,
        )
        .1
    });
    assert!(
        v["stdout"].as_str().unwrap_or("").contains("No space left"),
        "{v}"
    );
    // The sandbox's writes went to its own image, not the host's free space.
    let host_after = free_bytes(&b.d.data_dir());
    assert!(
        host_before.saturating_sub(host_after) < 512 << 20,
        "the host lost {} MiB",
        host_before.saturating_sub(host_after) >> 20
    );
    b.finish();
}

fn free_bytes(p: &std::path::Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(p).unwrap();
    s.blocks_available() * s.fragment_size()
}

#[test]
fn exhausting_inodes_is_contained() {
    if !can_run("exhausting_inodes_is_contained") {
        return;
    }
    let _turn = my_turn();
    let Some(b) = bench(
        "exhausting_inodes_is_contained",
        "--disk 64M --cpus 1",
        &["disk"],
    ) else {
        return;
    };
    let v = b.during("inode exhaustion", |d, id| {
        exec(
            d,
            id,
            // Filled, emptied and filled again for 3 s: one fill takes half a second,
            // too short to time the neighbour during it.
            "python3 -c 'import os, shutil, time\nend = time.time() + 3\nfirst = None\nwhile True:\n os.mkdir(\"/tmp/i\")\n n = 0\n try:\n  while True:\n   open(\"/tmp/i/%d\" % n, \"w\").close(); n += 1\n except OSError as e: first = first or (n, e.errno)\n if time.time() > end: break\n shutil.rmtree(\"/tmp/i\")\nprint(*first)'",
            120_000,
        )
        .1
    });
    let out = v["stdout"].as_str().unwrap_or("").trim().to_string();
    let (n, errno) = out.split_once(' ').unwrap_or_else(|| panic!("{v}"));
    println!("ABUSE inode exhaustion: {n} files before errno {errno}");
    assert_eq!(errno, "28", "ENOSPC: {v}");
    // The sandbox still works (removing them frees them).
    assert_eq!(
        b.d.exec(&b.abuser, "rm -rf /tmp/i && echo freed").1,
        "freed\n"
    );
    b.finish();
}

#[test]
fn spinning_cpus_is_contained() {
    if !can_run("spinning_cpus_is_contained") {
        return;
    }
    let _turn = my_turn();
    let Some(b) = bench("spinning_cpus_is_contained", "--cpus 1", &["cpu"]) else {
        return;
    };
    let v = b.during("cpu spin", |d, id| {
        exec(
            d,
            id,
            "for i in 1 2 3 4 5 6 7 8; do (while :; do :; done) & done; sleep 6; kill 0",
            10_000,
        )
        .1
    });
    assert!(v.is_object(), "{v}");
    b.finish();
}

#[test]
fn exhausting_file_descriptors_is_contained() {
    if !can_run("exhausting_file_descriptors_is_contained") {
        return;
    }
    let _turn = my_turn();
    let Some(b) = bench(
        "exhausting_file_descriptors_is_contained",
        "--cpus 1 --memory 512M --pids 64",
        &[],
    ) else {
        return;
    };
    let v = b.during("fd exhaustion", |d, id| {
        exec(
            d,
            id,
            "for i in 1 2 3 4; do python3 -c 'import resource, time\n\
h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n\
resource.setrlimit(resource.RLIMIT_NOFILE, (h, h))\n\
fs = []\n\
try:\n while True: fs.append(open(\"/dev/null\"))\nexcept OSError as e: print(len(fs), e.errno, flush=True)\n\
time.sleep(4)' & done; wait",
            30_000,
        )
        .1
    });
    let out = v["stdout"].as_str().unwrap_or("");
    assert_eq!(out.lines().count(), 4, "{v}");
    for line in out.lines() {
        assert!(line.ends_with(" 24"), "EMFILE expected: {line}");
    }
    println!(
        "ABUSE fd exhaustion: opened per process: {}",
        out.replace('\n', " ")
    );
    // The agent of the abuser is unharmed.
    assert_eq!(b.d.exec(&b.abuser, "echo alive").1, "alive\n");
    b.finish();
}

#[test]
fn an_output_flood_is_streamed_in_bounded_memory() {
    if !can_run("an_output_flood_is_streamed_in_bounded_memory") {
        return;
    }
    let _turn = my_turn();
    let bytes = env_u64("WARREN_TRUST_FLOOD_BYTES", 2 << 30);
    let Some(b) = bench(
        "an_output_flood_is_streamed_in_bounded_memory",
        "--cpus 1",
        &[],
    ) else {
        return;
    };
    let (status, received, tail) = b.during("output flood", |d, id| {
        let body = serde_json::json!({
            "command": { "shell": format!("head -c {bytes} /dev/zero") },
        });
        let mut received = 0u64;
        let mut tail: Vec<u8> = Vec::new();
        let status = d
            .http_stream(
                Via::Unix,
                "POST",
                &format!("/v1/sandboxes/{id}/exec?stream=true"),
                &[("Content-Type", "application/json")],
                body.to_string().as_bytes(),
                &mut |chunk| {
                    received += chunk.len() as u64;
                    tail.extend_from_slice(chunk);
                    if tail.len() > 4096 {
                        tail.drain(..tail.len() - 512);
                    }
                },
            )
            .expect("the stream");
        (
            status,
            received,
            String::from_utf8_lossy(&tail).into_owned(),
        )
    });
    assert_eq!(status, 200);
    // Base64 makes 4 bytes of 3; the NDJSON framing adds a little.
    assert!(received >= bytes / 3 * 4, "{received} bytes for {bytes}");
    let last = tail.lines().last().unwrap_or_default();
    assert!(
        last.contains("\"exit\"") && last.contains("\"exit_code\":0"),
        "{last}"
    );
    println!("ABUSE output flood: {bytes} bytes of output, {received} bytes of NDJSON");
    // Collected (not streamed) output is capped, not held without bound.
    let (status, v) = exec(&b.d, &b.abuser, "head -c 200000000 /dev/zero", 60_000);
    assert_eq!(
        (status, v["code"].as_str()),
        (413, Some("payload_too_large")),
        "{v}"
    );
    let peak = rss(b.d.pid().unwrap());
    assert!(
        peak < RSS_BOUND,
        "RSS {} MiB after a capped exec",
        peak >> 20
    );
    b.finish();
}

#[test]
fn many_tiny_files_through_the_file_api_are_contained() {
    if !can_run("many_tiny_files_through_the_file_api_are_contained") {
        return;
    }
    let _turn = my_turn();
    let n = env_u64("WARREN_TRUST_TINY_FILES", 10_000);
    let Some(b) = bench(
        "many_tiny_files_through_the_file_api_are_contained",
        "--cpus 1",
        &[],
    ) else {
        return;
    };
    let tiny = format!("{}/tiny", b.scratch);
    assert_eq!(b.d.exec(&b.abuser, &format!("mkdir -p {tiny}")).0, 0);
    let tiny = tiny.as_str();
    let written = b.during("tiny files", |d, id| {
        // Four writers at once, as a busy client would.
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..4u64)
                .map(|w| {
                    s.spawn(move || {
                        let mut ok = 0u64;
                        for i in (w..n).step_by(4) {
                            let r = d.http(
                                Via::Unix,
                                "PUT",
                                &format!("/v1/sandboxes/{id}/files?path={tiny}/f{i}"),
                                &[],
                                format!("{i}").as_bytes(),
                            );
                            assert_eq!(r.status, 204, "file {i}: {}", r.text());
                            ok += 1;
                        }
                        ok
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
        })
    });
    assert_eq!(written, n);
    assert_eq!(
        b.d.exec(&b.abuser, &format!("ls {tiny} | wc -l")).1.trim(),
        n.to_string()
    );
    let r = b.d.http(
        Via::Unix,
        "GET",
        &format!("/v1/sandboxes/{}/files?path={tiny}/f{}", b.abuser, n - 1),
        &[],
        b"",
    );
    assert_eq!(r.text(), (n - 1).to_string());
    b.finish();
}
