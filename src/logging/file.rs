//! The log file, appended to and rotated as gogoc's `log_rotation*` settings ask (docs/tsp-wire.md §9).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tracing_subscriber::fmt::MakeWriter;

use super::format::{Deliver, EventBuf, lock, one_line};
use super::localtime::LocalTime;
use super::{FileLog, LogError};

#[derive(Clone)]
pub(super) struct SharedFile(pub(super) Arc<Mutex<RotatingFile>>);

impl<'a> MakeWriter<'a> for SharedFile {
    type Writer = EventBuf<Deliver<'a>>;

    fn make_writer(&'a self) -> Self::Writer {
        EventBuf {
            buf: Vec::new(),
            deliver: Some(Box::new(move |record: &[u8]| {
                let mut line = one_line(record);
                line.push('\n');
                lock(&self.0).write_record(line.as_bytes());
            })),
        }
    }
}

pub(super) struct RotatingFile {
    pub(super) path: PathBuf,
    /// `None` only if a rotation could not reopen the file.
    pub(super) file: Option<File>,
    rotate_at: Option<u64>,
    delete_rotated: bool,
    /// One complaint on stderr per kind of failure is enough: the log is not a place to tell.
    write_failed: bool,
    rotate_failed: bool,
}

impl RotatingFile {
    pub(super) fn open(cfg: FileLog) -> Result<Self, LogError> {
        // Absolute now: rotation renames by path, and the working directory may change later.
        let path = std::path::absolute(&cfg.path).unwrap_or(cfg.path);
        let file = open_append(&path).map_err(|source| LogError::OpenFile {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            path,
            file: Some(file),
            rotate_at: cfg.rotate_at,
            delete_rotated: cfg.delete_rotated,
            write_failed: false,
            rotate_failed: false,
        })
    }

    pub(super) fn write_record(&mut self, record: &[u8]) {
        if self.file.is_none() {
            // A rotation could not reopen the file; try again now.
            self.file = open_append(&self.path).ok();
        }
        let Some(file) = self.file.as_ref() else {
            return;
        };
        if let Some(limit) = self.rotate_at {
            // The current length, not a counter: another writer or a truncation by logrotate
            // may have changed it.
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            if size > 0 && size.saturating_add(record.len() as u64) > limit {
                self.rotate();
            }
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if let Err(e) = file.write_all(record)
            && !self.write_failed
        {
            self.write_failed = true;
            eprintln!("cannot write the log file {}: {e}", self.path.display());
        }
    }

    /// Starts the file anew: keeps the old content under a timestamped name (gogoc's
    /// `<stem>.<YYYYmmddHHMMSS><.ext>`) or, with `delete_rotated`, drops it. If the rename
    /// fails the content is dropped too: the file must never grow without bound.
    fn rotate(&mut self) {
        if !self.delete_rotated {
            let backup = backup_name(&self.path, LocalTime::of(SystemTime::now()));
            match fs::rename(&self.path, &backup) {
                Ok(()) => {
                    // The old handle now writes into the backup: never use it again.
                    self.file = open_append(&self.path).ok();
                    if self.file.is_none() && !self.rotate_failed {
                        self.rotate_failed = true;
                        eprintln!("cannot reopen the log file {} after rotating it", self.path.display());
                    }
                    return;
                }
                Err(e) => {
                    if !self.rotate_failed {
                        self.rotate_failed = true;
                        eprintln!(
                            "cannot rotate the log file {} to {}: {e}; truncating it instead",
                            self.path.display(),
                            backup.display()
                        );
                    }
                }
            }
        }
        if let Some(file) = self.file.as_ref() {
            // O_APPEND: the next write goes to the new end, offset 0.
            if let Err(e) = file.set_len(0)
                && !self.rotate_failed
            {
                self.rotate_failed = true;
                eprintln!("cannot truncate the log file {}: {e}", self.path.display());
            }
        }
    }
}

pub(super) fn open_append(path: &Path) -> io::Result<File> {
    // 0600: the log describes the host's tunnel; nobody else needs to read it.
    OpenOptions::new().append(true).create(true).mode(0o600).open(path)
}

/// `gogoc.log` → `gogoc.20240102030405.log` (`-1`, `-2`, … appended to the stamp if that
/// name is taken, so two rotations within a second do not overwrite each other).
pub(super) fn backup_name(path: &Path, t: LocalTime) -> PathBuf {
    let stamp = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    );
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (stem, ext) = match name.rfind('.') {
        Some(dot) if dot > 0 => (&name[..dot], &name[dot..]),
        _ => (name.as_str(), ""),
    };
    let mut n = 0u32;
    loop {
        let suffix = if n == 0 { String::new() } else { format!("-{n}") };
        let candidate = path.with_file_name(format!("{stem}.{stamp}{suffix}{ext}"));
        // Bounded: after 1000 tries the last name is overwritten rather than looping on.
        if n >= 1000 || !candidate.exists() {
            return candidate;
        }
        n += 1;
    }
}
