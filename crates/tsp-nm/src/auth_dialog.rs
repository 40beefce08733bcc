//! The protocol side of `nm-tsp-auth-dialog`, the helper a NetworkManager secret agent
//! (nm-applet, GNOME Shell, nmcli) runs in the user's session to get the `password` secret of
//! a tsp VPN connection (docs/nm-plugin.md §5).
//!
//! The agent spawns `nm-tsp-auth-dialog -u UUID -n NAME -s SERVICE [-i] [-r] [-t HINT]…
//! [--external-ui-mode]` and writes the connection's `vpn.data` and known `vpn.secrets` on its
//! stdin (`DATA_KEY=`/`DATA_VAL=`, `SECRET_KEY=`/`SECRET_VAL=`, values continued on lines that
//! start with `=`, then `DONE`, later `QUIT`). The dialog answers on stdout, either with
//! `key\nvalue\n` pairs closed by an empty pair (the legacy protocol), or with a GKeyFile that
//! tells the agent what to ask (`--external-ui-mode`).
//!
//! Everything here but [`keyring_lookup`] and [`prompt_terminal`] is pure, so the parser, the
//! decision and the output bytes are unit-tested. Secrets stay in [`Secret`]s and in buffers
//! wiped on drop; no error message carries one.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd as _, BorrowedFd};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::termios::{LocalFlags, SetArg, Termios, tcgetattr, tcsetattr};
use zeroize::Zeroizing;

use tsp_config::names::{KEY_AUTH_METHOD, SECRET_PASSWORD, SECRET_PLACEHOLDER, SecretFlags};
use tsp_proto::secret::Secret;

/// libsecret schema name NetworkManager's agents store connection secrets under.
pub const KEYRING_SCHEMA: &str = "org.freedesktop.NetworkManager.Connection";
/// Hint prefix that carries a message for the user rather than a secret name.
pub const VPN_MESSAGE_HINT: &str = "x-vpn-message:";
/// How long the legacy protocol waits for `QUIT` after answering (as NM-openvpn's dialog).
pub const QUIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound for one Secret Service lookup (a wedged keyring must not hang the agent).
pub const KEYRING_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest input line, in bytes.
pub const MAX_LINE: usize = 16 * 1024;
/// Longest key or value after joining its continuation lines.
pub const MAX_VALUE: usize = 64 * 1024;
/// Most data + secret items before `DONE`.
pub const MAX_ITEMS: usize = 256;
/// Most bytes read before `DONE`.
pub const MAX_INPUT: usize = 1024 * 1024;
/// Longest password typed on the terminal.
pub const MAX_PASSWORD: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the agent's input: {0}")]
    Io(#[from] io::Error),
    #[error("the agent's input ended before DONE")]
    NoDone,
    #[error("input line {line} is longer than {MAX_LINE} bytes")]
    LineTooLong { line: usize },
    #[error("the item ending on input line {line} is longer than {MAX_VALUE} bytes")]
    ValueTooLong { line: usize },
    #[error("more than {MAX_ITEMS} data and secret items")]
    TooManyItems,
    #[error("more than {MAX_INPUT} bytes of input before DONE")]
    InputTooLong,
    #[error("the item ending on input line {line} is not UTF-8")]
    NotUtf8 { line: usize },
    #[error("input line {line}: {tag} without a matching key before it")]
    ValueWithoutKey { line: usize, tag: &'static str },
    #[error("input line {line}: continuation line ('=') outside an item")]
    StrayContinuation { line: usize },
    #[error("the password contains a line break, which the agent protocol cannot carry")]
    MultiLineSecret,
    #[error("the password typed is longer than {MAX_PASSWORD} bytes")]
    PasswordTooLong,
}

// ---------------------------------------------------------------------------------------------
// Input

/// Appends to a wiped buffer; when it must grow, the old allocation is wiped too (a plain
/// `Vec` would leave a copy of a secret behind in freed memory).
fn push_wiping(buf: &mut Zeroizing<Vec<u8>>, bytes: &[u8]) {
    let need = buf.len() + bytes.len();
    if need > buf.capacity() {
        let mut bigger = Zeroizing::new(Vec::with_capacity(need.max(buf.capacity() * 2).max(64)));
        bigger.extend_from_slice(buf);
        *buf = bigger;
    }
    buf.extend_from_slice(bytes);
}

/// A line reader with a bounded line length whose buffers are wiped on drop (std's `Stdin`
/// and `BufReader` would keep a copy of the secrets the agent sent).
pub struct LineReader<R> {
    inner: R,
    buf: Zeroizing<Vec<u8>>,
    start: usize,
    end: usize,
    eof: bool,
    consumed: usize,
    line_no: usize,
}

/// Why [`LineReader::next_line`] failed.
#[derive(Debug)]
pub enum LineError {
    TooLong,
    Io(io::Error),
}

impl<R: Read> LineReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Zeroizing::new(vec![0; 8192]),
            start: 0,
            end: 0,
            eof: false,
            consumed: 0,
            line_no: 0,
        }
    }

    /// Bytes handed out as lines so far (newlines included).
    pub fn consumed(&self) -> usize {
        self.consumed
    }

    /// Number of the last line returned (1-based).
    pub fn line_no(&self) -> usize {
        self.line_no
    }

    /// The next line without its `\n`; a last line without `\n` counts; `None` at end of input.
    pub fn next_line(&mut self, max: usize) -> Result<Option<Zeroizing<Vec<u8>>>, LineError> {
        let mut line = Zeroizing::new(Vec::new());
        let mut partial = false;
        loop {
            if self.start == self.end {
                if self.eof {
                    if !partial {
                        return Ok(None);
                    }
                    self.line_no += 1;
                    return Ok(Some(line));
                }
                match self.inner.read(&mut self.buf) {
                    Ok(0) => self.eof = true,
                    Ok(n) => (self.start, self.end) = (0, n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(LineError::Io(e)),
                }
                continue;
            }
            let avail = &self.buf[self.start..self.end];
            let (take, done) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (avail.len(), false),
            };
            if line.len() + take > max {
                self.line_no += 1;
                return Err(LineError::TooLong);
            }
            push_wiping(&mut line, &avail[..take]);
            partial = true;
            let used = take + usize::from(done);
            self.start += used;
            self.consumed += used;
            if done {
                self.line_no += 1;
                return Ok(Some(line));
            }
        }
    }
}

/// What the agent wrote before `DONE`: the connection's `vpn.data` and the secrets it knows.
#[derive(Debug, Default)]
pub struct VpnDetails {
    pub data: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, Secret>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data,
    Secret,
}

struct Pending {
    kind: Kind,
    key: Zeroizing<Vec<u8>>,
    val: Option<Zeroizing<Vec<u8>>>,
}

impl Pending {
    fn commit(self, details: &mut VpnDetails, line: usize) -> Result<(), Error> {
        let key = String::from_utf8(self.key.to_vec()).map_err(|_| Error::NotUtf8 { line })?;
        if key.is_empty() {
            return Ok(());
        }
        let mut val = self.val.unwrap_or_default();
        let val = match String::from_utf8(std::mem::take(&mut *val)) {
            Ok(v) => v,
            Err(e) => {
                drop(Zeroizing::new(e.into_bytes()));
                return Err(Error::NotUtf8 { line });
            }
        };
        match self.kind {
            Kind::Data => {
                details.data.insert(key, val);
            }
            Kind::Secret => {
                details.secrets.insert(key, Secret::new(val));
            }
        }
        Ok(())
    }
}

/// Reads the agent's items up to `DONE` (NM's `nm_vpn_service_plugin_read_vpn_details`
/// format). Blank and unknown lines are skipped; a key without a value gets `""`; the last of
/// two equal keys wins. Input ending before `DONE` is an error, as are the bounds above.
pub fn read_details<R: Read>(reader: &mut LineReader<R>) -> Result<VpnDetails, Error> {
    let mut details = VpnDetails::default();
    let mut pending: Option<Pending> = None;
    let mut items = 0usize;
    loop {
        let line = match reader.next_line(MAX_LINE) {
            Ok(Some(l)) => l,
            Ok(None) => return Err(Error::NoDone),
            Err(LineError::TooLong) => return Err(Error::LineTooLong { line: reader.line_no() }),
            Err(LineError::Io(e)) => return Err(Error::Io(e)),
        };
        let n = reader.line_no();
        if reader.consumed() > MAX_INPUT {
            return Err(Error::InputTooLong);
        }
        let tag = [
            (&b"DATA_KEY="[..], Kind::Data, true),
            (&b"DATA_VAL="[..], Kind::Data, false),
            (&b"SECRET_KEY="[..], Kind::Secret, true),
            (&b"SECRET_VAL="[..], Kind::Secret, false),
        ]
        .into_iter()
        .find_map(|(t, kind, is_key)| line.strip_prefix(t).map(|rest| (kind, is_key, rest)));
        if line.as_slice() == b"DONE" {
            if let Some(p) = pending.take() {
                p.commit(&mut details, n)?;
            }
            return Ok(details);
        } else if let Some(rest) = line.strip_prefix(b"=") {
            let p = pending.as_mut().ok_or(Error::StrayContinuation { line: n })?;
            let target = p.val.as_mut().unwrap_or(&mut p.key);
            if target.len() + 1 + rest.len() > MAX_VALUE {
                return Err(Error::ValueTooLong { line: n });
            }
            push_wiping(target, b"\n");
            push_wiping(target, rest);
        } else if let Some((kind, true, rest)) = tag {
            if let Some(p) = pending.take() {
                p.commit(&mut details, n)?;
            }
            items += 1;
            if items > MAX_ITEMS {
                return Err(Error::TooManyItems);
            }
            let mut key = Zeroizing::new(Vec::new());
            push_wiping(&mut key, rest);
            pending = Some(Pending { kind, key, val: None });
        } else if let Some((kind, false, rest)) = tag {
            let tag = if kind == Kind::Data { "DATA_VAL=" } else { "SECRET_VAL=" };
            match pending.as_mut() {
                Some(p) if p.kind == kind && p.val.is_none() => {
                    let mut val = Zeroizing::new(Vec::new());
                    push_wiping(&mut val, rest);
                    p.val = Some(val);
                }
                _ => return Err(Error::ValueWithoutKey { line: n, tag }),
            }
        }
        // Anything else (blank separator lines, an early QUIT, unknown tags) is skipped.
    }
}

/// After a legacy answer: waits until the agent writes `QUIT` (or closes stdin, or writes
/// anything else) for at most `timeout`. Returns whether `QUIT` was seen. The reader moves
/// to a thread, which is left blocked if the timeout hits; the process exits right after.
pub fn wait_for_quit<R: Read + Send + 'static>(mut reader: LineReader<R>, timeout: Duration) -> bool {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let quit = loop {
            match reader.next_line(64) {
                Ok(Some(l)) if l.is_empty() => continue,
                Ok(Some(l)) => break l.as_slice() == b"QUIT",
                Ok(None) | Err(_) => break false,
            }
        };
        let _ = tx.send(quit);
    });
    rx.recv_timeout(timeout).unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// Flags and the decision

/// The command line, as the agent gave it (without the service, checked before).
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub uuid: String,
    pub name: String,
    pub allow_interaction: bool,
    pub reprompt: bool,
    pub hints: Vec<String>,
    pub external_ui: bool,
}

/// Whether this connection needs its password: a `password` hint from the service always
/// asks for it; otherwise NOT_REQUIRED or `auth-method=anonymous` mean no.
pub fn password_needed(details: &VpnDetails, hints: &[String]) -> bool {
    if hints.iter().any(|h| h == SECRET_PASSWORD) {
        return true;
    }
    if SecretFlags::of(&details.data, SECRET_PASSWORD).contains(SecretFlags::NOT_REQUIRED) {
        return false;
    }
    !details
        .data
        .get(KEY_AUTH_METHOD)
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("anonymous"))
}

/// Whether the keyring may be read (or written): never for NOT_SAVED.
pub fn keyring_allowed(details: &VpnDetails) -> bool {
    !SecretFlags::of(&details.data, SECRET_PASSWORD).contains(SecretFlags::NOT_SAVED)
}

/// The password the agent already sent on stdin (an empty one counts as none).
pub fn password_from_agent(details: &VpnDetails) -> Option<Secret> {
    details.secrets.get(SECRET_PASSWORD).filter(|s| !s.is_empty()).cloned()
}

/// Why the dialog gives up (exit status non-zero = "cancelled" for the agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// No password anywhere and `-i` not given.
    NoPassword,
    /// `-r` (the last password was refused) without `-i`: nobody to ask for a new one.
    RepromptWithoutInteraction,
}

/// What to do once the inputs are known.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// No password needed: answer with the [`SECRET_PLACEHOLDER`] dummy.
    NoSecretNeeded,
    /// Legacy protocol: answer with this password.
    Reply(Secret),
    /// External UI: print the keyfile; the agent asks the user when `should_ask`.
    Keyfile {
        value: Option<Secret>,
        should_ask: bool,
    },
    /// Legacy protocol with `-i` and nothing usable: ask on the terminal (there is no GUI).
    AskTerminal,
    Cancel(Cancel),
}

/// The decision, given whether a password is `needed` and the one found (stdin, else keyring).
/// A found password is used as is unless `-r` asked for a new one; asking needs `-i`.
pub fn decide(req: &Request, needed: bool, existing: Option<Secret>) -> Action {
    if !needed {
        return Action::NoSecretNeeded;
    }
    let ask = existing.is_none() || req.reprompt;
    match (ask, existing) {
        (false, Some(pw)) if req.external_ui => Action::Keyfile {
            value: Some(pw),
            should_ask: false,
        },
        (false, Some(pw)) => Action::Reply(pw),
        (_, existing) if !req.allow_interaction => Action::Cancel(match existing {
            Some(_) => Cancel::RepromptWithoutInteraction,
            None => Cancel::NoPassword,
        }),
        (_, existing) if req.external_ui => Action::Keyfile {
            value: existing,
            should_ask: true,
        },
        _ => Action::AskTerminal,
    }
}

// ---------------------------------------------------------------------------------------------
// Output

/// Legacy answer: `key\nvalue\n` then the empty pair `\n\n`. A value with a line break cannot
/// be expressed (the agent reads line pairs) and is refused.
pub fn legacy_reply(key: &str, value: &Secret) -> Result<Zeroizing<Vec<u8>>, Error> {
    if value.expose().contains('\n') {
        return Err(Error::MultiLineSecret);
    }
    let mut out = Zeroizing::new(Vec::with_capacity(key.len() + value.expose().len() + 4));
    out.extend_from_slice(key.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(value.expose().as_bytes());
    out.extend_from_slice(b"\n\n\n");
    Ok(out)
}

/// Legacy answer when no password is needed.
pub fn legacy_no_secret() -> Vec<u8> {
    format!("{SECRET_PLACEHOLDER}\ntrue\n\n\n").into_bytes()
}

/// GKeyFile string escaping (`g_key_file_set_string`): backslash, line breaks, tabs, and a
/// leading space.
fn keyfile_escape(s: &str, out: &mut String) {
    for (i, c) in s.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' ' if i == 0 => out.push_str("\\s"),
            c => out.push(c),
        }
    }
}

/// The connection name for display: control characters become `?`.
pub fn display_name(name: &str) -> String {
    name.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// The text above the password field: the service's `x-vpn-message:` hint, else ours.
pub fn description(req: &Request) -> String {
    req.hints
        .iter()
        .find_map(|h| h.strip_prefix(VPN_MESSAGE_HINT))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            format!(
                "A password is needed to reach the tunnel broker of the VPN connection “{}”.",
                display_name(&req.name)
            )
        })
}

/// External-UI answer asking for (or handing over) the password.
pub fn keyfile_password(req: &Request, value: Option<&Secret>, should_ask: bool) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(256 + value.map_or(0, |v| 2 * v.expose().len())));
    out.push_str("[VPN Plugin UI]\nVersion=2\nTitle=");
    keyfile_escape(&format!("Authenticate VPN {}", display_name(&req.name)), &mut out);
    out.push_str("\nDescription=");
    keyfile_escape(&description(req), &mut out);
    out.push_str("\n\n[");
    out.push_str(SECRET_PASSWORD);
    out.push_str("]\nValue=");
    keyfile_escape(value.map_or("", Secret::expose), &mut out);
    out.push_str("\nLabel=Password:\nIsSecret=true\nShouldAsk=");
    out.push_str(if should_ask { "true" } else { "false" });
    out.push_str("\nForceEcho=false\n");
    out
}

/// External-UI answer when no password is needed.
pub fn keyfile_no_secret() -> String {
    format!(
        "[VPN Plugin UI]\nVersion=2\n\n[{SECRET_PLACEHOLDER}]\nValue=true\nLabel=\nIsSecret=true\nShouldAsk=false\nForceEcho=false\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Terminal

/// Reads one password line (no `\n`, a trailing `\r` dropped). `None` on end of input or an
/// empty line: the user cancelled.
pub fn read_password_line<R: Read>(r: R) -> Result<Option<Secret>, Error> {
    let mut reader = LineReader::new(r);
    let mut line = match reader.next_line(MAX_PASSWORD + 1) {
        Ok(Some(l)) => l,
        Ok(None) => return Ok(None),
        Err(LineError::TooLong) => return Err(Error::PasswordTooLong),
        Err(LineError::Io(e)) => return Err(Error::Io(e)),
    };
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if line.len() > MAX_PASSWORD {
        return Err(Error::PasswordTooLong);
    }
    if line.is_empty() {
        return Ok(None);
    }
    match String::from_utf8(std::mem::take(&mut *line)) {
        Ok(s) => Ok(Some(Secret::new(s))),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "the password typed is not UTF-8",
            )))
        }
    }
}

/// Turns terminal echo off until dropped.
struct EchoOff<'a> {
    fd: BorrowedFd<'a>,
    saved: Termios,
}

impl<'a> EchoOff<'a> {
    fn new(fd: BorrowedFd<'a>) -> Option<Self> {
        let saved = tcgetattr(fd).ok()?;
        let mut t = saved.clone();
        t.local_flags.remove(LocalFlags::ECHO | LocalFlags::ECHONL);
        t.local_flags.insert(LocalFlags::ICANON);
        tcsetattr(fd, SetArg::TCSAFLUSH, &t).ok()?;
        Some(Self { fd, saved })
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        let _ = tcsetattr(self.fd, SetArg::TCSAFLUSH, &self.saved);
    }
}

/// Asks for the password on the controlling terminal, echo off. `Ok(None)` when there is no
/// terminal (the usual case under a graphical agent) or the user cancelled (empty line, ^D).
pub fn prompt_terminal(req: &Request) -> Result<Option<Secret>, Error> {
    let Ok(file) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty") else {
        return Ok(None);
    };
    // Shared: `EchoOff` borrows the descriptor while we write and read through `&File`.
    let mut tty = &file;
    let mut msg = description(req);
    msg.push('\n');
    msg.push_str("Password: ");
    // Echo off before the prompt shows: switching it flushes what was typed ahead, and the
    // user may type as soon as the prompt is there.
    let echo = EchoOff::new(file.as_fd());
    let answer = tty
        .write_all(msg.as_bytes())
        .and_then(|()| tty.flush())
        .map_err(Error::Io);
    let answer = answer.and_then(|()| read_password_line(tty));
    drop(echo);
    let _ = tty.write_all(b"\n");
    answer
}

// ---------------------------------------------------------------------------------------------
// Keyring

/// The attributes NetworkManager's agents store a VPN secret under (schema
/// [`KEYRING_SCHEMA`], matched without the `xdg:schema` attribute, as libsecret's
/// `SECRET_SCHEMA_DONT_MATCH_NAME` does for NM).
pub fn keyring_attributes(uuid: &str) -> HashMap<&str, &str> {
    HashMap::from([
        ("connection-uuid", uuid),
        ("setting-name", "vpn"),
        ("setting-key", SECRET_PASSWORD),
    ])
}

/// Result of a keyring lookup. Only `Found` gives a password; the others are reported on
/// stderr and otherwise treated as "not found".
#[derive(Debug)]
pub enum Lookup {
    Found(Secret),
    NotFound,
    /// Items exist, but only in a locked collection (unlocking would prompt; we do not).
    Locked,
    /// No Secret Service on the session bus, or it failed.
    Unavailable(String),
}

/// Looks the connection's password up in the Secret Service of the session bus.
pub async fn keyring_lookup(uuid: &str) -> Lookup {
    use secret_service::{EncryptionType, SecretService};
    let ss = match SecretService::connect(EncryptionType::Dh).await {
        Ok(ss) => ss,
        Err(e) => return Lookup::Unavailable(e.to_string()),
    };
    let found = match ss.search_items(keyring_attributes(uuid)).await {
        Ok(f) => f,
        Err(e) => return Lookup::Unavailable(e.to_string()),
    };
    for item in &found.unlocked {
        let Ok(bytes) = item.get_secret().await else { continue };
        let bytes = Zeroizing::new(bytes);
        if let Ok(s) = std::str::from_utf8(&bytes)
            && !s.is_empty()
        {
            return Lookup::Found(Secret::new(s));
        }
    }
    if found.unlocked.is_empty() && !found.locked.is_empty() {
        Lookup::Locked
    } else {
        Lookup::NotFound
    }
}

/// [`keyring_lookup`] on its own small runtime, bounded by `timeout`.
pub fn keyring_lookup_blocking(uuid: &str, timeout: Duration) -> Lookup {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return Lookup::Unavailable(e.to_string()),
    };
    rt.block_on(async {
        tokio::time::timeout(timeout, keyring_lookup(uuid))
            .await
            .unwrap_or_else(|_| Lookup::Unavailable(format!("no answer within {} s", timeout.as_secs())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> Result<VpnDetails, Error> {
        read_details(&mut LineReader::new(input))
    }

    /// A reader handing out one byte per read, to test lines split across reads.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((b, rest)), Some(slot)) => {
                    *slot = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    const APPLET: &[u8] = b"DATA_KEY=auth-method\nDATA_VAL=digest-md5\n\nDATA_KEY=password-flags\nDATA_VAL=1\n\n\
SECRET_KEY=password\nSECRET_VAL=s3cr3t\n\nDONE\n\nQUIT\n\n";

    #[test]
    fn nm_applet_style() {
        let mut r = LineReader::new(APPLET);
        let d = read_details(&mut r).unwrap();
        assert_eq!(d.data.get("auth-method").map(String::as_str), Some("digest-md5"));
        assert_eq!(SecretFlags::of(&d.data, SECRET_PASSWORD), SecretFlags::AGENT_OWNED);
        assert_eq!(d.secrets.get("password").map(Secret::expose), Some("s3cr3t"));
        assert!(wait_for_quit(r, Duration::from_secs(5)), "QUIT after a blank line");
    }

    #[test]
    fn nmcli_style_and_shell_style() {
        let nmcli = b"DATA_KEY=server\nDATA_VAL=broker.example.net\nDATA_KEY=password-flags\nDATA_VAL=2\nDONE\nQUIT\n";
        let mut r = LineReader::new(&nmcli[..]);
        let d = read_details(&mut r).unwrap();
        assert_eq!(d.data.len(), 2);
        assert!(d.secrets.is_empty());
        assert!(wait_for_quit(r, Duration::from_secs(5)));
        // GNOME Shell: DONE and a blank line now, QUIT later (here: never, the pipe closes).
        let shell = b"DATA_KEY=server\nDATA_VAL=b\n\nDONE\n\n";
        let mut r = LineReader::new(&shell[..]);
        assert_eq!(read_details(&mut r).unwrap().data.len(), 1);
        assert!(
            !wait_for_quit(r, Duration::from_secs(5)),
            "EOF is not QUIT, but ends the wait"
        );
        // Byte by byte, as a pipe may deliver it.
        let mut r = LineReader::new(Trickle(APPLET));
        let d = read_details(&mut r).unwrap();
        assert_eq!(d.secrets.get("password").map(Secret::expose), Some("s3cr3t"));
        assert!(wait_for_quit(r, Duration::from_secs(5)));
    }

    #[test]
    fn quit_wait_times_out() {
        struct Never;
        impl Read for Never {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                std::thread::sleep(Duration::from_secs(3600));
                Ok(0)
            }
        }
        let t = std::time::Instant::now();
        assert!(!wait_for_quit(LineReader::new(Never), Duration::from_millis(100)));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn multi_line_values_and_keys() {
        let d = parse(b"DATA_KEY=a\nDATA_VAL=one\n=two\n=\n=four\nSECRET_KEY=pass\n=word\nSECRET_VAL=x\n=y\nDONE\n")
            .unwrap();
        assert_eq!(d.data.get("a").map(String::as_str), Some("one\ntwo\n\nfour"));
        assert_eq!(d.secrets.get("pass\nword").map(Secret::expose), Some("x\ny"));
    }

    #[test]
    fn lenient_where_nm_is() {
        // Key without value, empty key, duplicate key, unknown lines, empty value, no final newline.
        let d = parse(b"DATA_KEY=k\nDATA_KEY=\nDATA_VAL=ignored\nbogus line\nDATA_KEY=d\nDATA_VAL=1\nDATA_KEY=d\nDATA_VAL=2\nDATA_KEY=e\nDATA_VAL=\nDONE").unwrap();
        assert_eq!(d.data.get("k").map(String::as_str), Some(""));
        assert_eq!(d.data.get("d").map(String::as_str), Some("2"));
        assert_eq!(d.data.get("e").map(String::as_str), Some(""));
        assert_eq!(d.data.len(), 3);
        // A value with '=' inside is not a continuation.
        let d = parse(b"DATA_KEY=k\nDATA_VAL=a=b\nDONE\n").unwrap();
        assert_eq!(d.data.get("k").map(String::as_str), Some("a=b"));
    }

    #[test]
    fn protocol_errors() {
        assert!(matches!(parse(b""), Err(Error::NoDone)));
        assert!(matches!(parse(b"DATA_KEY=a\nDATA_VAL=b\n"), Err(Error::NoDone)));
        assert!(matches!(parse(b"DATA_KEY=a\nDATA_VAL=b\nDON"), Err(Error::NoDone)));
        assert!(matches!(
            parse(b"=x\nDONE\n"),
            Err(Error::StrayContinuation { line: 1 })
        ));
        assert!(matches!(
            parse(b"DATA_VAL=x\nDONE\n"),
            Err(Error::ValueWithoutKey { line: 1, .. })
        ));
        assert!(matches!(
            parse(b"DATA_KEY=a\nSECRET_VAL=x\nDONE\n"),
            Err(Error::ValueWithoutKey { line: 2, .. })
        ));
        assert!(matches!(
            parse(b"DATA_KEY=a\nDATA_VAL=x\nDATA_VAL=y\nDONE\n"),
            Err(Error::ValueWithoutKey { line: 3, .. })
        ));
        assert!(matches!(
            parse(b"DATA_KEY=\xff\nDATA_VAL=x\nDONE\n"),
            Err(Error::NotUtf8 { .. })
        ));
        assert!(matches!(
            parse(b"SECRET_KEY=p\nSECRET_VAL=\xc3\nDONE\n"),
            Err(Error::NotUtf8 { line: 3 })
        ));
    }

    #[test]
    fn hostile_sizes() {
        // One endless line without a newline.
        let long = vec![b'A'; MAX_LINE + 1];
        assert!(matches!(parse(&long), Err(Error::LineTooLong { line: 1 })));
        let mut long = b"DATA_KEY=k\nDATA_VAL=".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_LINE));
        assert!(matches!(parse(&long), Err(Error::LineTooLong { line: 2 })));
        // Exactly at the line bound is fine.
        let mut ok = b"DATA_KEY=k\nDATA_VAL=".to_vec();
        ok.extend(std::iter::repeat_n(b'x', MAX_LINE - "DATA_VAL=".len()));
        ok.extend_from_slice(b"\nDONE\n");
        assert_eq!(parse(&ok).unwrap().data["k"].len(), MAX_LINE - "DATA_VAL=".len());
        // Continuations joined beyond the value bound.
        let mut cont = b"DATA_KEY=k\nDATA_VAL=x\n".to_vec();
        let piece = format!("={}\n", "y".repeat(1000));
        for _ in 0..(MAX_VALUE / 1000 + 1) {
            cont.extend_from_slice(piece.as_bytes());
        }
        cont.extend_from_slice(b"DONE\n");
        assert!(matches!(parse(&cont), Err(Error::ValueTooLong { .. })));
        // Too many items.
        let mut many = Vec::new();
        for i in 0..=MAX_ITEMS {
            many.extend_from_slice(format!("DATA_KEY=k{i}\nDATA_VAL=v\n").as_bytes());
        }
        many.extend_from_slice(b"DONE\n");
        assert!(matches!(parse(&many), Err(Error::TooManyItems)));
        // Endless blank or unknown lines: bounded by the total input size.
        let blank = vec![b'\n'; MAX_INPUT + 10];
        assert!(matches!(parse(&blank), Err(Error::InputTooLong)));
        let junk = "junk\n".repeat(MAX_INPUT / 5 + 2);
        assert!(matches!(parse(junk.as_bytes()), Err(Error::InputTooLong)));
    }

    fn details(pairs: &[(&str, &str)]) -> VpnDetails {
        VpnDetails {
            data: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            secrets: BTreeMap::new(),
        }
    }

    #[test]
    fn need_and_keyring_rules() {
        let none: &[String] = &[];
        assert!(password_needed(&details(&[]), none));
        assert!(password_needed(
            &details(&[("auth-method", "digest-md5"), ("password-flags", "1")]),
            none
        ));
        assert!(!password_needed(&details(&[("password-flags", "4")]), none));
        assert!(!password_needed(&details(&[("password-flags", "5")]), none));
        assert!(!password_needed(&details(&[("auth-method", "anonymous")]), none));
        assert!(!password_needed(&details(&[("auth-method", "Anonymous")]), none));
        // The service asking explicitly wins; a message hint alone does not.
        assert!(password_needed(
            &details(&[("auth-method", "anonymous")]),
            &["password".into()]
        ));
        assert!(!password_needed(
            &details(&[("password-flags", "4")]),
            &["x-vpn-message:hi".into()]
        ));
        assert!(keyring_allowed(&details(&[("password-flags", "1")])));
        assert!(keyring_allowed(&details(&[("password-flags", "0")])));
        assert!(!keyring_allowed(&details(&[("password-flags", "2")])));
        assert!(!keyring_allowed(&details(&[("password-flags", "3")])));
        let mut d = details(&[]);
        d.secrets.insert(SECRET_PASSWORD.into(), Secret::new(""));
        assert_eq!(password_from_agent(&d), None);
        d.secrets.insert(SECRET_PASSWORD.into(), Secret::new("p"));
        assert_eq!(password_from_agent(&d), Some(Secret::new("p")));
    }

    #[test]
    fn decisions() {
        let pw = || Some(Secret::new("pw"));
        let req = |i: bool, r: bool, eui: bool| Request {
            allow_interaction: i,
            reprompt: r,
            external_ui: eui,
            ..Request::default()
        };
        assert_eq!(decide(&req(true, true, true), false, pw()), Action::NoSecretNeeded);
        // Legacy.
        assert_eq!(
            decide(&req(false, false, false), true, pw()),
            Action::Reply(Secret::new("pw"))
        );
        assert_eq!(
            decide(&req(true, false, false), true, pw()),
            Action::Reply(Secret::new("pw"))
        );
        assert_eq!(
            decide(&req(false, false, false), true, None),
            Action::Cancel(Cancel::NoPassword)
        );
        assert_eq!(decide(&req(true, false, false), true, None), Action::AskTerminal);
        assert_eq!(decide(&req(true, true, false), true, pw()), Action::AskTerminal);
        assert_eq!(
            decide(&req(false, true, false), true, pw()),
            Action::Cancel(Cancel::RepromptWithoutInteraction)
        );
        // External UI.
        let kf = |v: Option<Secret>, ask| Action::Keyfile {
            value: v,
            should_ask: ask,
        };
        assert_eq!(decide(&req(false, false, true), true, pw()), kf(pw(), false));
        assert_eq!(decide(&req(true, false, true), true, pw()), kf(pw(), false));
        assert_eq!(decide(&req(true, false, true), true, None), kf(None, true));
        assert_eq!(decide(&req(true, true, true), true, pw()), kf(pw(), true));
        assert_eq!(
            decide(&req(false, false, true), true, None),
            Action::Cancel(Cancel::NoPassword)
        );
        assert_eq!(
            decide(&req(false, true, true), true, pw()),
            Action::Cancel(Cancel::RepromptWithoutInteraction)
        );
    }

    #[test]
    fn legacy_bytes() {
        assert_eq!(
            legacy_reply(SECRET_PASSWORD, &Secret::new("s3 cr=3t"))
                .unwrap()
                .as_slice(),
            b"password\ns3 cr=3t\n\n\n"
        );
        assert!(matches!(
            legacy_reply(SECRET_PASSWORD, &Secret::new("a\nb")),
            Err(Error::MultiLineSecret)
        ));
        assert_eq!(legacy_no_secret(), b"no-secret\ntrue\n\n\n");
        // The error never shows the value.
        let e = legacy_reply(SECRET_PASSWORD, &Secret::new("hunter2\nx")).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("hunter2"));
    }

    #[test]
    fn keyfile_bytes() {
        let req = Request {
            name: "Home broker".into(),
            ..Request::default()
        };
        assert_eq!(
            keyfile_password(&req, None, true).as_str(),
            "[VPN Plugin UI]\nVersion=2\nTitle=Authenticate VPN Home broker\n\
Description=A password is needed to reach the tunnel broker of the VPN connection “Home broker”.\n\n\
[password]\nValue=\nLabel=Password:\nIsSecret=true\nShouldAsk=true\nForceEcho=false\n"
        );
        let req = Request {
            name: " x\ny".into(),
            hints: vec!["password".into(), "x-vpn-message:Wrong password\tagain".into()],
            ..Request::default()
        };
        assert_eq!(
            keyfile_password(&req, Some(&Secret::new(" a\\b\nc")), false).as_str(),
            "[VPN Plugin UI]\nVersion=2\nTitle=Authenticate VPN  x?y\nDescription=Wrong password\\tagain\n\n\
[password]\nValue=\\sa\\\\b\\nc\nLabel=Password:\nIsSecret=true\nShouldAsk=false\nForceEcho=false\n"
        );
        assert_eq!(
            keyfile_no_secret(),
            "[VPN Plugin UI]\nVersion=2\n\n[no-secret]\nValue=true\nLabel=\nIsSecret=true\nShouldAsk=false\nForceEcho=false\n"
        );
    }

    #[test]
    fn password_lines() {
        assert_eq!(read_password_line(&b"pw 1\n"[..]).unwrap(), Some(Secret::new("pw 1")));
        assert_eq!(read_password_line(&b"pw\r\n"[..]).unwrap(), Some(Secret::new("pw")));
        assert_eq!(read_password_line(&b"pw"[..]).unwrap(), Some(Secret::new("pw")));
        assert_eq!(read_password_line(&b"\n"[..]).unwrap(), None);
        assert_eq!(read_password_line(&b""[..]).unwrap(), None);
        let long = vec![b'a'; MAX_PASSWORD + 1];
        assert!(matches!(read_password_line(&long[..]), Err(Error::PasswordTooLong)));
        let max = vec![b'a'; MAX_PASSWORD];
        assert_eq!(
            read_password_line(&max[..]).unwrap().map(|s| s.expose().len()),
            Some(MAX_PASSWORD)
        );
    }

    #[test]
    fn wiping_push_keeps_content() {
        let mut b = Zeroizing::new(Vec::new());
        for i in 0..1000u32 {
            push_wiping(&mut b, &i.to_le_bytes());
        }
        assert_eq!(b.len(), 4000);
        assert_eq!(&b[4..8], &1u32.to_le_bytes());
    }
}
