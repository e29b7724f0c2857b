//! File operations and watches over the protocol.

mod common;

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::time::{Duration, Instant};

use common::{sh, Client, TestAgent};
use warren_types::proto::{
    frame_credit, ErrorCode, FileType, Frame, FrameKind, Request, Response, WatchKind, CHUNK,
    INPUT_WINDOW,
};

/// A deterministic byte stream and a checksum of it, so 100 MB never sits in memory.
struct Pattern(u64);

impl Pattern {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

fn checksum(sum: u64, data: &[u8]) -> u64 {
    data.iter()
        .fold(sum, |s, b| s.rotate_left(5) ^ u64::from(*b))
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn write_file(c: &mut Client, path: &str, chunks: impl Iterator<Item = Vec<u8>>) -> Response {
    let ch = c
        .open(&Request::WriteFile {
            path: path.into(),
            mode: None,
            append: false,
            in_place: false,
            metadata: Default::default(),
            user: None,
        })
        .await;
    for chunk in chunks {
        c.send_input(ch, FrameKind::Data, chunk).await;
    }
    c.send(ch, &Request::End).await;
    c.control(ch).await
}

/// Reads a whole file, returning its info, length and checksum.
async fn read_file(c: &mut Client, path: &str) -> Result<(u64, u64, u64), ErrorCode> {
    let ch = c
        .open(&Request::ReadFile {
            path: path.into(),
            special: false,
            user: None,
        })
        .await;
    let size = match c.control(ch).await {
        Response::FileInfo { info } => info.size,
        Response::Error { code, .. } => return Err(code),
        other => panic!("{other:?}"),
    };
    let (mut len, mut sum) = (0u64, 0u64);
    loop {
        let f = c.frame(ch).await;
        match f.kind {
            FrameKind::Data => {
                assert!(f.payload.len() <= CHUNK);
                len += f.payload.len() as u64;
                sum = checksum(sum, &f.payload);
                c.grant(ch, frame_credit(f.payload.len()) as u32).await;
            }
            FrameKind::Control => {
                assert_eq!(f.parse::<Response>().unwrap(), Response::End);
                return Ok((size, len, sum));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn hundred_megabytes_round_trip_in_bounded_memory() {
    const SIZE: usize = 100 << 20;
    let agent = TestAgent::start();
    let dir = agent.scratch();
    let path = dir.join("deep/er/big.bin");
    let path = path.to_str().unwrap();
    let mut c = agent.connect().await;
    let rss_before = rss_kib();

    let mut pattern = Pattern(0x9e37_79b9_7f4a_7c15);
    let mut sum = 0u64;
    let chunks = (0..SIZE / CHUNK).map(|_| {
        let mut buf = vec![0u8; CHUNK];
        pattern.fill(&mut buf);
        sum = checksum(sum, &buf);
        buf
    });
    let written = write_file(&mut c, path, chunks).await;
    assert_eq!(written, Response::Written { bytes: SIZE as u64 });
    assert_eq!(std::fs::metadata(path).unwrap().len(), SIZE as u64);

    let (size, len, read_sum) = read_file(&mut c, path).await.unwrap();
    assert_eq!((size, len), (SIZE as u64, SIZE as u64));
    assert_eq!(read_sum, sum);
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 64 * 1024,
        "test process grew by {grown} KiB moving 100 MB"
    );
}

#[tokio::test]
async fn an_upload_that_cannot_be_written_holds_up_only_its_channel() {
    let agent = TestAgent::start();
    let dir = agent.scratch();
    // Appending to a FIFO nobody reads: the agent's open waits for a reader.
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut c = agent.connect().await;
    let ch = c
        .open(&Request::WriteFile {
            path: fifo.to_str().unwrap().into(),
            mode: None,
            append: true,
            in_place: false,
            metadata: Default::default(),
            user: None,
        })
        .await;
    // The window's worth is held for the upload; the connection still answers.
    for _ in 0..INPUT_WINDOW as usize / CHUNK {
        c.send_input(ch, FrameKind::Data, vec![1; CHUNK]).await;
    }
    let started = Instant::now();
    let stat = Request::Stat {
        path: dir.to_str().unwrap().into(),
        user: None,
    };
    assert!(matches!(c.request(&stat).await, Response::FileInfo { .. }));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(c.input_left(ch), 0, "credit came back for unwritten data");
    // A frame past the credit abandons the upload, answered on its channel alone.
    c.send_frame(&Frame::new(ch, FrameKind::Data, vec![1; CHUNK]))
        .await;
    match c.control(ch).await {
        Response::Error {
            code: ErrorCode::BadRequest,
            message,
        } => assert!(message.contains("credit"), "{message}"),
        other => panic!("overrun answered {other:?}"),
    }
    // Let the agent's open through: it appends what it took, then sees the upload
    // abandoned and closes the FIFO.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&reader),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )
    .unwrap();
    let drained = tokio::task::spawn_blocking(move || {
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut got).map(|_| got.len())
    });
    let drained = tokio::time::timeout(common::WAIT, drained).await;
    assert_eq!(drained.unwrap().unwrap().unwrap(), INPUT_WINDOW as usize);
}

#[tokio::test]
async fn in_place_writes_keep_the_inode_and_its_links() {
    use std::os::unix::fs::MetadataExt;
    let agent = TestAgent::start();
    let dir = agent.scratch();
    let path = dir.join("f.txt");
    let link = dir.join("hard");
    std::fs::write(&path, "old contents\n").unwrap();
    std::fs::hard_link(&path, &link).unwrap();
    let inode = std::fs::metadata(&path).unwrap().ino();
    let mut c = agent.connect().await;
    let ch = c
        .open(&Request::WriteFile {
            path: path.to_str().unwrap().into(),
            mode: None,
            append: false,
            in_place: true,
            metadata: Default::default(),
            user: None,
        })
        .await;
    c.send_frame(&Frame::new(ch, FrameKind::Data, b"new\n".to_vec()))
        .await;
    c.send(ch, &Request::End).await;
    assert!(matches!(
        c.control(ch).await,
        Response::Written { bytes: 4 }
    ));
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
    assert_eq!(std::fs::read_to_string(&link).unwrap(), "new\n");
}

#[tokio::test]
async fn writes_replace_atomically_keep_modes_and_append() {
    let agent = TestAgent::start();
    let dir = agent.scratch();
    let path = dir.join("f.txt");
    let p = path.to_str().unwrap();
    let mut c = agent.connect().await;
    let ch = c
        .open(&Request::WriteFile {
            path: p.into(),
            mode: Some(0o600),
            append: false,
            in_place: false,
            metadata: Default::default(),
            user: None,
        })
        .await;
    c.send_frame(&Frame::new(ch, FrameKind::Data, b"one\n".to_vec()))
        .await;
    c.send(ch, &Request::End).await;
    assert_eq!(c.control(ch).await, Response::Written { bytes: 4 });
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Replacing keeps the mode; appending adds.
    assert_eq!(
        write_file(&mut c, p, [b"two\n".to_vec()].into_iter()).await,
        Response::Written { bytes: 4 }
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let ch = c
        .open(&Request::WriteFile {
            path: p.into(),
            mode: None,
            append: true,
            in_place: false,
            metadata: Default::default(),
            user: None,
        })
        .await;
    c.send_frame(&Frame::new(ch, FrameKind::Data, b"three\n".to_vec()))
        .await;
    c.send(ch, &Request::End).await;
    assert_eq!(c.control(ch).await, Response::Written { bytes: 6 });
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\nthree\n");

    // An abandoned upload leaves neither the target changed nor a temporary file.
    let ch = c
        .open(&Request::WriteFile {
            path: p.into(),
            mode: None,
            append: false,
            in_place: false,
            metadata: Default::default(),
            user: None,
        })
        .await;
    c.send_frame(&Frame::new(ch, FrameKind::Data, b"partial".to_vec()))
        .await;
    c.send(ch, &Request::Cancel).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\nthree\n");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

    // Writing over a directory, and reading one, are errors.
    let d = dir.to_str().unwrap();
    assert!(matches!(
        write_file(&mut c, d, std::iter::empty()).await,
        Response::Error {
            code: ErrorCode::IsADirectory,
            ..
        }
    ));
    assert_eq!(read_file(&mut c, d).await, Err(ErrorCode::IsADirectory));
    assert_eq!(
        read_file(&mut c, "/no/such/file").await,
        Err(ErrorCode::NotFound)
    );
}

#[tokio::test]
async fn directories_stat_mkdir_remove_rename() {
    let agent = TestAgent::start();
    let dir = agent.scratch();
    let d = dir.to_str().unwrap().to_string();
    std::fs::create_dir_all(dir.join("a/b/c")).unwrap();
    std::fs::write(dir.join("a/file"), "12345").unwrap();
    std::fs::write(dir.join("a/b/inner"), "").unwrap();
    std::os::unix::fs::symlink("file", dir.join("a/link")).unwrap();
    let mut c = agent.connect().await;

    let Response::DirEntries { entries } = c
        .request(&Request::ListDir {
            path: format!("{d}/a").into(),
            depth: 2,
            user: None,
        })
        .await
    else {
        panic!("no listing")
    };
    let paths: Vec<String> = entries
        .iter()
        .map(|e| e.path.strip_prefix(&d).unwrap().to_string())
        .collect();
    assert_eq!(
        paths,
        ["/a/b", "/a/b/c", "/a/b/inner", "/a/file", "/a/link"]
    );
    let link = entries.iter().find(|e| e.name == "link").unwrap();
    assert_eq!(
        (link.file_type, link.symlink_target.as_deref()),
        (FileType::Symlink, Some("file"))
    );
    let Response::DirEntries { entries } = c
        .request(&Request::ListDir {
            path: format!("{d}/a").into(),
            depth: 1,
            user: None,
        })
        .await
    else {
        panic!("no listing")
    };
    assert_eq!(entries.len(), 3);

    match c
        .request(&Request::Stat {
            path: format!("{d}/a/file").into(),
            user: None,
        })
        .await
    {
        Response::FileInfo { info } => {
            assert_eq!(
                (info.file_type, info.size, info.name.as_str()),
                (FileType::File, 5, "file")
            );
        }
        other => panic!("{other:?}"),
    }
    let code = |r: Response| match r {
        Response::Error { code, .. } => Some(code),
        _ => None,
    };
    assert_eq!(
        code(
            c.request(&Request::Stat {
                path: format!("{d}/nope").into(),
                user: None
            })
            .await
        ),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        code(
            c.request(&Request::ListDir {
                path: format!("{d}/a/file").into(),
                depth: 1,
                user: None
            })
            .await
        ),
        Some(ErrorCode::NotADirectory)
    );

    let new = format!("{d}/x/y/z");
    assert_eq!(
        c.request(&Request::MakeDir {
            path: new.clone().into(),
            mode: None,
            user: None
        })
        .await,
        Response::Ok
    );
    assert!(dir.join("x/y/z").is_dir());
    assert_eq!(
        code(
            c.request(&Request::MakeDir {
                path: new.into(),
                mode: None,
                user: None
            })
            .await
        ),
        Some(ErrorCode::AlreadyExists)
    );

    let from = format!("{d}/a/file");
    let to = format!("{d}/x/moved");
    assert_eq!(
        c.request(&Request::Rename {
            from: from.into(),
            to: to.into(),
            user: None
        })
        .await,
        Response::Ok
    );
    assert!(dir.join("x/moved").is_file());

    assert_eq!(
        code(
            c.request(&Request::Remove {
                path: format!("{d}/a").into(),
                recursive: false,
                user: None
            })
            .await
        ),
        Some(ErrorCode::NotEmpty)
    );
    assert_eq!(
        c.request(&Request::Remove {
            path: format!("{d}/a").into(),
            recursive: true,
            user: None
        })
        .await,
        Response::Ok
    );
    assert!(!dir.join("a").exists());
    assert_eq!(
        code(
            c.request(&Request::Remove {
                path: format!("{d}/a").into(),
                recursive: true,
                user: None
            })
            .await
        ),
        Some(ErrorCode::NotFound)
    );
}

#[tokio::test]
async fn watch_reports_changes_below_the_path() {
    let agent = TestAgent::start();
    let dir = agent.scratch();
    let d = dir.to_str().unwrap().to_string();
    let mut c = agent.connect().await;
    let ch = c
        .open(&Request::Watch {
            path: d.clone().into(),
            recursive: true,
            user: None,
        })
        .await;
    assert_eq!(c.control(ch).await, Response::Ok);

    // Changes made by a sandboxed process, as in real use.
    let script = format!(
        "cd {d} && echo a > f && echo b >> f && chmod 600 f && mv f g && mkdir -p sub/deeper && \
         sleep 0.2 && echo c > sub/deeper/h && rm g"
    );
    assert_eq!(c.run(sh(&script)).await.status.code, Some(0));

    let want = [
        (WatchKind::Create, format!("{d}/f")),
        (WatchKind::Write, format!("{d}/f")),
        (WatchKind::Chmod, format!("{d}/f")),
        (WatchKind::Rename, format!("{d}/f")),
        (WatchKind::Rename, format!("{d}/g")),
        (WatchKind::Create, format!("{d}/sub")),
        (WatchKind::Create, format!("{d}/sub/deeper")),
        (WatchKind::Create, format!("{d}/sub/deeper/h")),
        (WatchKind::Remove, format!("{d}/g")),
    ];
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !want.iter().all(|w| seen.contains(w)) {
        assert!(Instant::now() < deadline, "saw only {seen:?}");
        match c.control(ch).await {
            Response::WatchEvent { kind, path, .. } => seen.push((kind, path)),
            other => panic!("{other:?}"),
        }
    }
    c.send(ch, &Request::Cancel).await;

    // A watch on a missing path is an error, not a stream.
    let ch = c
        .open(&Request::Watch {
            path: format!("{d}/missing").into(),
            recursive: false,
            user: None,
        })
        .await;
    assert!(matches!(
        c.control(ch).await,
        Response::Error {
            code: ErrorCode::NotFound,
            ..
        }
    ));
}

#[tokio::test]
async fn names_that_are_not_utf8_are_reported_and_addressed_exactly() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    use warren_types::proto::WirePath;

    let agent = TestAgent::start();
    let dir = agent.scratch();
    let mut c = agent.connect().await;
    let raw = |name: &[u8]| dir.join(OsStr::from_bytes(name));
    // Two names that display alike, a symlink to one of them, through a raw directory.
    std::fs::create_dir(raw(b"d\xe9")).unwrap();
    std::fs::write(raw(b"d\xe9/a\xff"), "ff").unwrap();
    std::fs::write(raw(b"d\xe9/a\xfe"), "fe").unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"a\xff"), raw(b"d\xe9/l")).unwrap();
    let d = WirePath::from(raw(b"d\xe9"));

    let Response::DirEntries { entries } = c
        .request(&Request::ListDir {
            path: d.clone(),
            depth: 1,
            user: None,
        })
        .await
    else {
        panic!("no listing")
    };
    let names: Vec<(String, Option<String>)> = entries
        .iter()
        .map(|e| (e.name.clone(), e.name_b64.clone()))
        .collect();
    assert_eq!(
        names,
        [
            ("a\u{fffd}".to_string(), Some("Yf4=".to_string())),
            ("a\u{fffd}".to_string(), Some("Yf8=".to_string())),
            ("l".to_string(), None),
        ]
    );
    assert!(entries.iter().all(|e| e.path_b64.is_some()));
    let link = &entries[2];
    assert_eq!(link.symlink_target_b64.as_deref(), Some("Yf8="));
    assert_eq!(
        link.raw_symlink_target().unwrap().unwrap().as_bytes(),
        b"a\xff"
    );

    // Each entry is addressed by its exact bytes.
    for (entry, contents) in entries.iter().zip(["fe", "ff"]) {
        let path = entry.raw_path().unwrap();
        assert_eq!(
            path.as_bytes(),
            raw(&[b"d\xe9/", entry.raw_name().unwrap().as_bytes()].concat())
                .as_os_str()
                .as_bytes()
        );
        let ch = c
            .open(&Request::ReadFile {
                path,
                special: false,
                user: None,
            })
            .await;
        assert!(matches!(c.control(ch).await, Response::FileInfo { .. }));
        let data = c.frame(ch).await;
        assert_eq!(data.payload, contents.as_bytes());
        assert_eq!(c.control(ch).await, Response::End);
    }
    let from = WirePath::from(raw(b"d\xe9/a\xff"));
    let to = WirePath::from(raw(b"d\xe9/b\x80"));
    assert_eq!(
        c.request(&Request::Rename {
            from,
            to: to.clone(),
            user: None
        })
        .await,
        Response::Ok
    );
    match c
        .request(&Request::Stat {
            path: to.clone(),
            user: None,
        })
        .await
    {
        Response::FileInfo { info } => {
            assert_eq!(info.raw_path().unwrap(), to);
            assert_eq!(info.raw_name().unwrap().as_bytes(), b"b\x80");
        }
        other => panic!("{other:?}"),
    }

    // Watch events carry the exact bytes too.
    let ch = c
        .open(&Request::Watch {
            path: d.clone(),
            recursive: false,
            user: None,
        })
        .await;
    assert_eq!(c.control(ch).await, Response::Ok);
    std::fs::write(raw(b"d\xe9/new\xc3"), "").unwrap();
    loop {
        match c.control(ch).await {
            Response::WatchEvent {
                kind: WatchKind::Create,
                path,
                path_b64,
            } => {
                let exact = WirePath::from_shown(&path, path_b64.as_deref()).unwrap();
                assert_eq!(exact, WirePath::from(raw(b"d\xe9/new\xc3")));
                break;
            }
            Response::WatchEvent { .. } => continue,
            other => panic!("{other:?}"),
        }
    }
    c.send(ch, &Request::Cancel).await;
    assert_eq!(
        c.request(&Request::Remove {
            path: d,
            recursive: true,
            user: None
        })
        .await,
        Response::Ok
    );
    assert!(!raw(b"d\xe9").exists());
}

#[tokio::test]
async fn special_files_are_read_only_when_asked() {
    use warren_types::proto::INITIAL_WINDOW;

    let agent = TestAgent::start();
    let dir = agent.scratch();
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let fifo_path = fifo.to_str().unwrap().to_string();
    let mut c = agent.connect().await;
    let read = |path: &str, special: bool| Request::ReadFile {
        path: path.into(),
        special,
        user: None,
    };

    // Refused at once, without waiting for a writer, and saying why.
    for (path, what) in [
        (fifo_path.as_str(), "a FIFO"),
        ("/dev/null", "a character device"),
        ("/dev/zero", "a character device"),
    ] {
        match c.request(&read(path, false)).await {
            Response::Error {
                code: ErrorCode::NotAFile,
                message,
            } => {
                assert!(message.contains(what), "{message}");
                assert!(message.contains("special"), "{message}");
            }
            other => panic!("{path}: {other:?}"),
        }
    }

    // Asked for, a FIFO streams what its writer writes, to the writer's end.
    let writer = std::thread::spawn(move || std::fs::write(fifo, "hello fifo"));
    let ch = c.open(&read(&fifo_path, true)).await;
    match c.control(ch).await {
        Response::FileInfo { info } => assert_eq!(info.file_type, FileType::Other),
        other => panic!("{other:?}"),
    }
    let mut got = Vec::new();
    loop {
        let f = c.frame(ch).await;
        match f.kind {
            FrameKind::Data => got.extend_from_slice(&f.payload),
            FrameKind::Control => {
                assert_eq!(f.parse::<Response>().unwrap(), Response::End);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, b"hello fifo");
    writer.join().unwrap().unwrap();

    // An endless device streams only as far as the client grants.
    let ch = c.open(&read("/dev/zero", true)).await;
    assert!(matches!(c.control(ch).await, Response::FileInfo { .. }));
    let mut total = 0usize;
    while total < INITIAL_WINDOW as usize {
        let f = c.frame(ch).await;
        assert_eq!(f.kind, FrameKind::Data);
        total += f.payload.len();
    }
    assert_eq!(total, INITIAL_WINDOW as usize);
    let more = tokio::time::timeout(Duration::from_millis(300), c.frame(ch)).await;
    assert!(more.is_err(), "sent past the window: {more:?}");
    c.send(ch, &Request::Cancel).await;
    // The connection still serves.
    assert!(matches!(
        c.request(&Request::Stat {
            path: "/".into(),
            user: None
        })
        .await,
        Response::FileInfo { .. }
    ));
}

/// Answers of a watch request: `Ok` or the error's code and message.
async fn start_watch(c: &mut Client, path: &std::path::Path) -> (u32, Result<(), String>) {
    let ch = c
        .open(&Request::Watch {
            path: path.into(),
            recursive: true,
            user: None,
        })
        .await;
    match c.control(ch).await {
        Response::Ok => (ch, Ok(())),
        Response::Error { message, .. } => (ch, Err(message)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn recursive_watches_cover_a_bounded_number_of_directories() {
    let agent = TestAgent::start();
    let tree = agent.scratch().join("tree");
    // 64 directories holding 8127: with the root, exactly the limit.
    for i in 0..8127 {
        std::fs::create_dir_all(tree.join(format!("d{}/e{i}", i % 64))).unwrap();
    }
    let mut c = agent.connect().await;
    let (ch, started) = start_watch(&mut c, &tree).await;
    assert_eq!(started, Ok(()));
    std::fs::write(tree.join("d0/e0/file"), "").unwrap();
    assert!(matches!(
        c.control(ch).await,
        Response::WatchEvent {
            kind: WatchKind::Create,
            ..
        }
    ));
    // One directory more ends the watch, with a reason, rather than leaving it blind.
    std::fs::create_dir(tree.join("d0/one-more")).unwrap();
    match c.control(ch).await {
        Response::Error { message, .. } => {
            assert!(
                message.contains("8192") && message.contains("ended"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    // A tree already past the limit is refused up front.
    let (_, started) = start_watch(&mut c, &tree).await;
    let message = started.unwrap_err();
    assert!(message.contains("more than 8192 directories"), "{message}");
    // Not recursively, it is one directory.
    let ch = c
        .open(&Request::Watch {
            path: tree.clone().into(),
            recursive: false,
            user: None,
        })
        .await;
    assert_eq!(c.control(ch).await, Response::Ok);
}

#[tokio::test]
async fn recursive_watches_stay_on_the_watched_filesystem() {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};

    /// Unmounts on drop, also when the test fails.
    struct Mounted(std::path::PathBuf);
    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }

    if !warren_testkit::needs_root(
        "recursive_watches_stay_on_the_watched_filesystem",
        "mounting a tmpfs",
    ) {
        return;
    }
    let agent = TestAgent::start();
    let dir = agent.scratch();
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    if let Err(e) = mount(
        Some("tmpfs"),
        &mnt,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    ) {
        println!(
            "SKIPPED: recursive_watches_stay_on_the_watched_filesystem: mounting a tmpfs: {e}"
        );
        return;
    }
    let _mounted = Mounted(mnt.clone());
    // More directories than a watch may cover, all on the other filesystem.
    for i in 0..8200 {
        std::fs::create_dir_all(mnt.join(format!("d{}/e{i}", i % 64))).unwrap();
    }
    let mut c = agent.connect().await;
    let (ch, started) = start_watch(&mut c, &dir).await;
    assert_eq!(started, Ok(()), "the walk crossed into the tmpfs");
    std::fs::write(mnt.join("d0/inside"), "").unwrap();
    std::fs::write(mnt.join("inside"), "").unwrap();
    std::fs::write(dir.join("marker"), "").unwrap();
    match c.control(ch).await {
        Response::WatchEvent { kind, path, .. } => {
            assert_eq!(kind, WatchKind::Create);
            assert!(path.ends_with("/marker"), "{path}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn file_operations_as_a_user_have_the_users_rights() {
    use std::os::unix::fs::MetadataExt;

    use warren_types::proto::{User, WirePath};

    if !warren_testkit::needs_root(
        "file_operations_as_a_user_have_the_users_rights",
        "switching users",
    ) {
        return;
    }
    let agent = TestAgent::start();
    let dir = agent.scratch();
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    mode(dir.parent().unwrap(), 0o755);
    mode(&dir, 0o777);
    let private = dir.join("private");
    std::fs::create_dir(&private).unwrap();
    mode(&private, 0o700);
    std::fs::write(private.join("inner"), "root's").unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, "root only").unwrap();
    mode(&secret, 0o600);
    std::os::unix::fs::symlink(&secret, dir.join("to-secret")).unwrap();
    let owner = |p: &std::path::Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.uid(), m.gid())
    };
    let user = || {
        Some(User::Id {
            uid: 1000,
            gid: None,
        })
    };
    let p = |path: &std::path::Path| -> WirePath { path.into() };
    let code = |r: Response| match r {
        Response::Error { code, .. } => Some(code),
        _ => None,
    };
    let mut c = agent.connect().await;

    // Reads: root's rights do not apply, also through a symlink or a private directory.
    for path in [&secret, &dir.join("to-secret"), &private.join("inner")] {
        let r = c
            .request(&Request::ReadFile {
                path: p(path),
                special: false,
                user: user(),
            })
            .await;
        assert_eq!(code(r), Some(ErrorCode::PermissionDenied), "{path:?}");
    }
    let r = c
        .request(&Request::ReadFile {
            path: p(&secret),
            special: false,
            user: None,
        })
        .await;
    assert!(matches!(r, Response::FileInfo { .. }), "{r:?}");
    let denied = [
        Request::Stat {
            path: p(&private.join("inner")),
            user: user(),
        },
        Request::ListDir {
            path: p(&private),
            depth: 1,
            user: user(),
        },
        Request::Remove {
            path: p(&private.join("inner")),
            recursive: false,
            user: user(),
        },
        Request::Rename {
            from: p(&secret),
            to: p(&private.join("moved")),
            user: user(),
        },
        Request::MakeDir {
            path: p(&private.join("sub")),
            mode: None,
            user: user(),
        },
        Request::Watch {
            path: p(&private),
            recursive: false,
            user: user(),
        },
    ];
    for request in denied {
        let r = c.request(&request).await;
        assert_eq!(code(r), Some(ErrorCode::PermissionDenied), "{request:?}");
    }

    // What a user creates is theirs, parents included.
    let ch = c
        .open(&Request::WriteFile {
            path: p(&dir.join("made/by/user")),
            mode: None,
            append: false,
            in_place: false,
            metadata: Default::default(),
            user: user(),
        })
        .await;
    c.send_frame(&Frame::new(ch, FrameKind::Data, b"mine".to_vec()))
        .await;
    c.send(ch, &Request::End).await;
    assert_eq!(c.control(ch).await, Response::Written { bytes: 4 });
    for made in ["made", "made/by", "made/by/user"] {
        assert_eq!(owner(&dir.join(made)), (1000, 1000), "{made}");
    }
    let r = c
        .request(&Request::MakeDir {
            path: p(&dir.join("mk/dirs")),
            mode: None,
            user: user(),
        })
        .await;
    assert_eq!(r, Response::Ok);
    assert_eq!(owner(&dir.join("mk")), (1000, 1000));
    assert_eq!(owner(&dir.join("mk/dirs")), (1000, 1000));
    // Writing into root's private directory is refused, and leaves nothing behind.
    let ch = c
        .open(&Request::WriteFile {
            path: p(&private.join("planted")),
            mode: None,
            append: false,
            in_place: false,
            metadata: Default::default(),
            user: user(),
        })
        .await;
    c.send(ch, &Request::End).await;
    assert_eq!(code(c.control(ch).await), Some(ErrorCode::PermissionDenied));
    assert_eq!(std::fs::read_dir(&private).unwrap().count(), 1);

    // The user's own files are theirs to list, watch, rename and remove.
    let r = c
        .request(&Request::Rename {
            from: p(&dir.join("made/by/user")),
            to: p(&dir.join("made/renamed")),
            user: user(),
        })
        .await;
    assert_eq!(r, Response::Ok);
    let r = c
        .request(&Request::ListDir {
            path: p(&dir.join("made")),
            depth: 2,
            user: user(),
        })
        .await;
    assert!(
        matches!(r, Response::DirEntries { ref entries } if entries.len() == 2),
        "{r:?}"
    );
    let ch = c
        .open(&Request::Watch {
            path: p(&dir.join("made")),
            recursive: true,
            user: user(),
        })
        .await;
    assert_eq!(c.control(ch).await, Response::Ok);
    c.send(ch, &Request::Cancel).await;
    let r = c
        .request(&Request::Remove {
            path: p(&dir.join("made")),
            recursive: true,
            user: user(),
        })
        .await;
    assert_eq!(r, Response::Ok);

    // A user the sandbox does not know is a bad request, not root's rights.
    let r = c
        .request(&Request::Stat {
            path: p(&secret),
            user: Some(User::Name("no-such-user-here".into())),
        })
        .await;
    assert_eq!(code(r), Some(ErrorCode::BadRequest));
}
