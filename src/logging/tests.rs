//! Tests of the log destinations (docs/tsp-wire.md §9).

use std::fs;
use std::os::unix::fs::DirBuilderExt as _;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU32, Ordering};

use tracing::Level;

use super::file::*;
use super::filter::*;
use super::format::*;
use super::localtime::*;
use super::syslog::*;
use super::*;

fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "nm-tsp-log-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::DirBuilder::new().mode(0o700).create(&dir).expect("temp dir");
    dir
}

fn levels(stderr: u8, file: u8, syslog: u8) -> LogLevels {
    LogLevels {
        console: 0,
        stderr,
        file,
        syslog,
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    v.sort();
    v
}

#[test]
fn rank_map() {
    assert!(rank_filter(0).is_none());
    let one = rank_filter(1).expect("level 1");
    assert!(one.would_enable("tsp_client::net", &Level::INFO));
    assert!(!one.would_enable("tsp_client::net", &Level::DEBUG));
    assert!(one.would_enable("tspc", &Level::INFO));
    assert!(one.would_enable("zbus", &Level::WARN));
    assert!(!one.would_enable("zbus", &Level::INFO));
    let two = rank_filter(2).expect("level 2");
    assert!(two.would_enable("nm_tsp", &Level::DEBUG));
    assert!(!two.would_enable("nm_tsp", &Level::TRACE));
    assert!(two.would_enable("zbus", &Level::INFO));
    let three = rank_filter(3).expect("level 3");
    assert!(three.would_enable("tsp_broker", &Level::TRACE));
    assert!(!three.would_enable("zbus", &Level::DEBUG));
    let four = rank_filter(4).expect("level 4");
    assert!(four.would_enable("zbus", &Level::TRACE));
}

#[test]
fn file_rotates_and_keeps_old_content() {
    let dir = temp_dir("rot");
    let path = dir.join("gogoc.log");
    let (dispatch, guard) = build(
        &levels(0, 3, 0),
        0,
        Some(FileLog {
            path: path.clone(),
            rotate_at: Some(16 * 1024),
            delete_rotated: false,
        }),
        SyslogFacility::User,
        "gogoc",
        &dir.join("no-syslog"),
    )
    .expect("build");
    assert_eq!(guard.file_path(), Some(path.clone()));
    let filler = "x".repeat(100);
    tracing::dispatcher::with_default(&dispatch, || {
        for i in 0..200 {
            tracing::info!("line {i} {filler}");
        }
    });
    let names = files_in(&dir);
    assert!(names.contains(&"gogoc.log".to_owned()), "{names:?}");
    let rotated: Vec<&String> = names.iter().filter(|n| *n != "gogoc.log").collect();
    assert!(!rotated.is_empty(), "{names:?}");
    for name in &rotated {
        // gogoc.<14 digits>[-n].log
        let middle = name
            .strip_prefix("gogoc.")
            .and_then(|s| s.strip_suffix(".log"))
            .expect("backup name");
        assert!(
            middle.len() >= 14 && middle[..14].bytes().all(|b| b.is_ascii_digit()),
            "{name}"
        );
    }
    let mut total_lines = 0;
    for name in &names {
        let text = fs::read_to_string(dir.join(name)).expect("read");
        assert!(text.len() <= 16 * 1024, "{name} has {} bytes", text.len());
        total_lines += text.lines().count();
    }
    // Nothing lost across rotations.
    assert_eq!(total_lines, 200);
    let current = fs::read_to_string(&path).expect("read");
    assert!(current.contains("line 199"));
    let first = current.lines().next().expect("a line");
    // YYYY/MM/DD HH:MM:SS I gogoc: line …
    assert_eq!(&first[4..5], "/");
    assert_eq!(&first[19..29], " I gogoc: ");
    drop(guard);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn file_rotation_delete_mode() {
    let dir = temp_dir("del");
    let path = dir.join("tspc.log");
    let (dispatch, guard) = build(
        &levels(0, 1, 0),
        0,
        Some(FileLog {
            path: path.clone(),
            rotate_at: Some(16 * 1024),
            delete_rotated: true,
        }),
        SyslogFacility::User,
        "tspc",
        &dir.join("no-syslog"),
    )
    .expect("build");
    let filler = "y".repeat(200);
    tracing::dispatcher::with_default(&dispatch, || {
        for i in 0..300 {
            tracing::warn!("entry {i} {filler}");
        }
    });
    drop(guard);
    assert_eq!(files_in(&dir), vec!["tspc.log".to_owned()]);
    let text = fs::read_to_string(&path).expect("read");
    assert!(text.len() <= 16 * 1024);
    assert!(text.contains("entry 299"));
    assert!(!text.contains("entry 0 "));
    assert!(text.lines().all(|l| l.contains(" W tspc: entry ")));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn existing_oversized_file_rotates_on_first_write_and_no_rotation_grows() {
    let dir = temp_dir("pre");
    let path = dir.join("big");
    fs::write(&path, vec![b'z'; 20 * 1024]).expect("write");
    let mut f = RotatingFile::open(FileLog {
        path: path.clone(),
        rotate_at: Some(16 * 1024),
        delete_rotated: false,
    })
    .expect("open");
    f.write_record(b"fresh\n");
    assert_eq!(fs::read(&path).expect("read"), b"fresh\n");
    let names = files_in(&dir);
    assert_eq!(names.len(), 2, "{names:?}");
    // No extension: big.<stamp>
    assert!(names.iter().any(|n| n.starts_with("big.") && n.len() >= 18));

    let path2 = dir.join("norot.log");
    let mut g = RotatingFile::open(FileLog {
        path: path2.clone(),
        rotate_at: None,
        delete_rotated: false,
    })
    .expect("open");
    for _ in 0..100 {
        g.write_record(&[b'a'; 1000]);
    }
    assert_eq!(fs::metadata(&path2).expect("meta").len(), 100_000);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn backup_names_do_not_collide() {
    let dir = temp_dir("names");
    let t = LocalTime {
        year: 2024,
        month: 1,
        day: 2,
        hour: 3,
        minute: 4,
        second: 5,
    };
    let p = dir.join("gogoc.log");
    let first = backup_name(&p, t);
    assert_eq!(first, dir.join("gogoc.20240102030405.log"));
    fs::write(&first, "").expect("write");
    assert_eq!(backup_name(&p, t), dir.join("gogoc.20240102030405-1.log"));
    assert_eq!(backup_name(&dir.join(".hidden"), t), dir.join(".hidden.20240102030405"));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn per_destination_levels() {
    let dir = temp_dir("lvl");
    let sock_path = dir.join("log.sock");
    let server = UnixDatagram::bind(&sock_path).expect("bind");
    server.set_nonblocking(true).expect("nonblocking");
    let path = dir.join("f.log");
    let (dispatch, guard) = build(
        &levels(0, 1, 3),
        0,
        Some(FileLog {
            path: path.clone(),
            rotate_at: None,
            delete_rotated: false,
        }),
        SyslogFacility::Local3,
        "tspc",
        &sock_path,
    )
    .expect("build");
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::error!("an error");
        tracing::info!("some info");
        tracing::debug!("a debug line");
        tracing::trace!("a trace line");
        tracing::info!(target: "other_crate", "foreign info");
        tracing::warn!(target: "other_crate", "foreign warning");
        tracing::info!("two\nlines");
    });
    drop(guard);
    let file = fs::read_to_string(&path).expect("read");
    assert!(file.contains(" E tspc: an error"));
    assert!(file.contains(" I tspc: some info"));
    assert!(!file.contains("debug line"));
    assert!(!file.contains("trace line"));
    assert!(!file.contains("foreign info"));
    assert!(file.contains(" W tspc: foreign warning"));
    // No forged lines: the newline is escaped.
    assert!(file.contains("two\\nlines"));
    assert_eq!(file.lines().count(), 4);

    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = server.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let pid = std::process::id();
    let tag = format!(" tspc[{pid}]: ");
    assert!(got.iter().all(|m| m.contains(&tag)), "{got:?}");
    let with = |pri: &str, text: &str| {
        got.iter()
            .any(|m| m.starts_with(&format!("<{pri}>")) && m.ends_with(&format!("]: {text}")))
    };
    // local3 = 19: 19*8 + severity.
    assert!(with("155", "an error"), "{got:?}");
    assert!(with("158", "some info"), "{got:?}");
    assert!(with("159", "a debug line"), "{got:?}");
    assert!(with("159", "a trace line"), "{got:?}");
    assert!(with("156", "foreign warning"), "{got:?}");
    assert!(with("158", "foreign info"), "{got:?}");
    assert_eq!(got.len(), 7, "{got:?}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn syslog_without_daemon_does_not_fail() {
    let dir = temp_dir("nosys");
    let (dispatch, guard) = build(
        &levels(0, 0, 3),
        0,
        None,
        SyslogFacility::User,
        "tspc",
        &dir.join("absent.sock"),
    )
    .expect("build");
    assert_eq!(guard.file_path(), None);
    tracing::dispatcher::with_default(&dispatch, || tracing::error!("nobody listens"));
    // A daemon appearing later is found.
    let server = UnixDatagram::bind(dir.join("absent.sock")).expect("bind");
    server.set_nonblocking(true).expect("nonblocking");
    tracing::dispatcher::with_default(&dispatch, || tracing::error!("now someone does"));
    let mut buf = [0u8; 1024];
    let n = server.recv(&mut buf).expect("a datagram");
    assert!(String::from_utf8_lossy(&buf[..n]).ends_with("]: now someone does"));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn global_init_once() {
    // All off, so the global subscriber stays silent for the other tests of this binary.
    let off = LogLevels {
        console: 0,
        stderr: 0,
        file: 0,
        syslog: 0,
    };
    let first = init_gogoc(&off, 0, None, SyslogFacility::User, "tspc");
    let second = init_gogoc(&off, 0, None, SyslogFacility::User, "tspc");
    // Another test binary (or harness) may have installed one before: then both refuse.
    assert!(first.is_ok() || matches!(first, Err(LogError::AlreadySet)));
    assert!(matches!(second, Err(LogError::AlreadySet)));
}

#[test]
fn unwritable_log_file_is_an_error() {
    let dir = temp_dir("bad");
    let r = build(
        &levels(0, 1, 0),
        0,
        Some(FileLog {
            path: dir.join("missing-dir").join("x.log"),
            rotate_at: None,
            delete_rotated: false,
        }),
        SyslogFacility::User,
        "tspc",
        &dir.join("no-syslog"),
    );
    assert!(matches!(r, Err(LogError::OpenFile { .. })));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn syslog_format() {
    let t = LocalTime {
        year: 2024,
        month: 3,
        day: 5,
        hour: 7,
        minute: 8,
        second: 9,
    };
    assert_eq!(
        format_syslog(SyslogFacility::User, Level::ERROR, "tspc", 42, t, "boom"),
        "<11>Mar  5 07:08:09 tspc[42]: boom"
    );
    let t2 = LocalTime {
        day: 25,
        month: 12,
        ..t
    };
    assert_eq!(
        format_syslog(SyslogFacility::Local7, Level::DEBUG, "gogoc", 1, t2, "x"),
        "<191>Dec 25 07:08:09 gogoc[1]: x"
    );
    assert_eq!(
        format_syslog(SyslogFacility::Local0, Level::WARN, "a", 1, t, "")
            .split('>')
            .next(),
        Some("<132")
    );
    let long = "é".repeat(MAX_SYSLOG_TEXT);
    let m = format_syslog(SyslogFacility::User, Level::INFO, "a", 1, t, &long);
    assert!(m.len() <= MAX_SYSLOG_TEXT + 40);
    assert!(m.ends_with('é'));
}

#[test]
fn one_line_escapes_controls() {
    assert_eq!(one_line(b"a\nb\rc\x1b[31m\td\n"), "a\\nb\\rc\\u{1b}[31m\td");
}

#[test]
fn utc_fallback_matches_known_dates() {
    let t = LocalTime::utc(0);
    assert_eq!((t.year, t.month, t.day, t.hour), (1970, 1, 1, 0));
    let t = LocalTime::utc(1_709_600_889); // 2024-03-05T01:08:09Z
    assert_eq!(
        (t.year, t.month, t.day, t.hour, t.minute, t.second),
        (2024, 3, 5, 1, 8, 9)
    );
}

#[test]
fn from_config() {
    let mut cfg = GogocConfig::default();
    assert_eq!(FileLog::from_config(&cfg), None);
    cfg.log.file = 2;
    cfg.log_rotation_size = tsp_config::LogRotationSize::K128;
    assert_eq!(
        FileLog::from_config(&cfg),
        Some(FileLog {
            path: PathBuf::from("gogoc.log"),
            rotate_at: Some(128 * 1024),
            delete_rotated: false,
        })
    );
    cfg.log_rotation = false;
    assert_eq!(FileLog::from_config(&cfg).and_then(|f| f.rotate_at), None);
}
