//! The accounts file: `user:realm:HA1` lines (the `htdigest` format), where
//! HA1 = hex(MD5(user:realm:password)). Clear passwords are never stored; DIGEST-MD5 needs
//! only HA1, and PLAIN and PASSDSS passwords are checked by recomputing it.
//!
//! See docs/tsp-wire.md §3.4 (HA1).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use tsp_proto::sasl::digest_md5;
use tsp_proto::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Syntax { path: String, line: usize, message: String },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("invalid user name {0:?}: 1 to 253 printable characters, no `:`")]
    BadUser(String),
}

#[derive(Debug, Clone, Default)]
pub struct Accounts {
    ha1: HashMap<String, [u8; 16]>,
}

fn valid_user(user: &str) -> bool {
    !user.is_empty() && user.len() <= 253 && user.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

impl Accounts {
    /// Parses the file's text; lines of other realms are skipped.
    pub fn parse(text: &str, realm: &str, path: &str) -> Result<Self, AccountsError> {
        let mut ha1 = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = |message: &str| AccountsError::Syntax {
                path: path.into(),
                line: i + 1,
                message: message.into(),
            };
            let mut parts = line.splitn(3, ':');
            let (Some(user), Some(r), Some(hex)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(syntax("expected user:realm:HA1"));
            };
            if !valid_user(user) {
                return Err(syntax("invalid user name"));
            }
            let digest = parse_hex16(hex).ok_or_else(|| syntax("HA1 must be 32 hexadecimal digits"))?;
            if r == realm {
                ha1.insert(user.to_owned(), digest);
            }
        }
        Ok(Self { ha1 })
    }

    pub fn load(path: &Path, realm: &str) -> Result<Self, AccountsError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AccountsError::Read {
            path: p.clone(),
            source,
        })?;
        Self::parse(&text, realm, &p)
    }

    pub fn ha1(&self, user: &str) -> Option<[u8; 16]> {
        self.ha1.get(user).copied()
    }

    /// Every account, sorted by user (what `tsp-broker db import-accounts` copies).
    pub fn iter(&self) -> Vec<(&str, [u8; 16])> {
        let mut v: Vec<_> = self.ha1.iter().map(|(u, h)| (u.as_str(), *h)).collect();
        v.sort();
        v
    }

    /// Whether `user` is a name an account may have (1 to 253 printable characters, no `:`).
    pub fn valid_user(user: &str) -> bool {
        valid_user(user)
    }

    pub fn len(&self) -> usize {
        self.ha1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ha1.is_empty()
    }

    /// The line to store for a user (what `tsp-broker add-user` appends).
    pub fn line(user: &str, realm: &str, password: &Secret) -> Result<String, AccountsError> {
        if !valid_user(user) {
            return Err(AccountsError::BadUser(user.to_owned()));
        }
        let hex: String = digest_md5::ha1(user, realm, password)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(format!("{user}:{realm}:{hex}\n"))
    }

    /// Appends a user to the file (mode 0600 when created).
    pub fn append(path: &Path, user: &str, realm: &str, password: &Secret) -> Result<(), AccountsError> {
        use std::os::unix::fs::OpenOptionsExt;
        let line = Self::line(user, realm, password)?;
        let w = |source| AccountsError::Write {
            path: path.display().to_string(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(w)?;
        f.write_all(line.as_bytes()).map_err(w)
    }
}

fn parse_hex16(hex: &str) -> Option<[u8; 16]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (o, pair) in out.iter_mut().zip(hex.chunks(2)) {
        *o = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let line = Accounts::line("user1", "hexos", &Secret::new("pass1")).unwrap();
        let a = Accounts::parse(
            &format!("# comment\n{line}other:elsewhere:{}\n", "0".repeat(32)),
            "hexos",
            "acc",
        )
        .unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(
            a.ha1("user1"),
            Some(digest_md5::ha1("user1", "hexos", &Secret::new("pass1")))
        );
        assert!(!line.contains("pass1"));
    }

    #[test]
    fn errors_name_the_line() {
        let e = Accounts::parse("ok:r:00000000000000000000000000000000\nbroken line\n", "r", "acc").unwrap_err();
        assert_eq!(e.to_string(), "acc:2: expected user:realm:HA1");
        assert!(Accounts::parse("u:r:xyz", "r", "acc").is_err());
        assert!(Accounts::line("a:b", "r", &Secret::new("p")).is_err());
    }
}
