//! The files NetworkManager and D-Bus read: the `.name` file and the system-bus policy must
//! agree on the service name, and the policy must be well-formed XML; the `.name` file's auth
//! dialog is the binary this package builds, in the same directory as the service. The man page
//! of nm-tsp-service documents every vpn.data key and every option the program has.

use std::collections::BTreeMap;

const NAME: &str = include_str!("../nm-plugin/nm-tsp-service.name");
const POLICY: &str = include_str!("../dbus/nm-tsp-service.conf");
const SERVICE: &str = tsp_config::names::SERVICE;
const MAN: &str = include_str!("../data/man/nm-tsp-service.8");

fn key(text: &str, k: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{k}=")).map(|v| v.trim().to_owned()))
}

#[test]
fn name_file_declares_the_service() {
    assert!(NAME.contains("[VPN Connection]"));
    assert_eq!(key(NAME, "name").as_deref(), Some("tsp"));
    assert_eq!(key(NAME, "service").as_deref(), Some(SERVICE));
    assert_eq!(key(NAME, "program").as_deref(), Some("/usr/libexec/nm-tsp-service"));
    assert_eq!(key(NAME, "supports-multiple-connections").as_deref(), Some("true"));
}

/// The `.name` file as GKeyFile reads it: group → key → value; duplicate groups or keys, and
/// lines that are neither comments, groups nor `key=value`, fail the test.
fn groups(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut group: Option<String> = None;
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if let Some(g) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            assert!(out.insert(g.to_owned(), BTreeMap::new()).is_none(), "group [{g}] twice");
            group = Some(g.to_owned());
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line:?}"));
        let g = group.as_ref().unwrap_or_else(|| panic!("{line:?} before any group"));
        let map = out.get_mut(g).expect("group exists");
        assert!(
            map.insert(k.trim().to_owned(), v.trim().to_owned()).is_none(),
            "[{g}] {k} twice"
        );
    }
    out
}

#[test]
fn name_file_declares_the_auth_dialog() {
    let g = groups(NAME);
    assert_eq!(
        g.keys().map(String::as_str).collect::<Vec<_>>(),
        ["GNOME", "VPN Connection", "libnm"]
    );
    // The libnm editor plugin: an absolute path to the library nm-plugin/libnm-plugin builds.
    let plugin = std::path::Path::new(&g["libnm"]["plugin"]);
    assert!(plugin.is_absolute(), "{plugin:?}");
    assert_eq!(
        plugin.file_name().and_then(|f| f.to_str()),
        Some("libnm-vpn-plugin-tsp.so")
    );
    let gnome = &g["GNOME"];
    assert_eq!(
        gnome.get("auth-dialog").map(String::as_str),
        Some("/usr/libexec/nm-tsp-auth-dialog")
    );
    assert_eq!(gnome.get("supports-external-ui-mode").map(String::as_str), Some("true"));
    assert_eq!(gnome.get("supports-hints").map(String::as_str), Some("true"));
    // No legacy (pre-1.2) `properties` editor: NM would look for a file we do not ship.
    assert!(!gnome.contains_key("properties"));
    // The dialog named is the one built here, next to the service.
    let built = std::path::Path::new(env!("CARGO_BIN_EXE_nm-tsp-auth-dialog"));
    let dialog = std::path::Path::new(&gnome["auth-dialog"]);
    assert_eq!(dialog.file_name(), built.file_name());
    let program = std::path::Path::new(&g["VPN Connection"]["program"]);
    assert_eq!(dialog.parent(), program.parent());
    // The dialog serves the service this file declares.
    assert_eq!(g["VPN Connection"]["service"], tsp_config::names::SERVICE);
    assert_eq!(g["VPN Connection"]["service"], SERVICE);
}

#[test]
fn policy_is_xml_and_names_the_service() {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(POLICY);
    let (mut allow, mut deny) = (Vec::new(), Vec::new());
    let mut context = String::new();
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Eof => break,
            Event::Start(e) | Event::Empty(e) => {
                let attrs: Vec<(String, String)> = e
                    .attributes()
                    .map(|a| a.expect("attribute"))
                    .map(|a| (a.key.as_ref().to_string(), a.value.to_string()))
                    .collect();
                match e.name().as_ref() {
                    "policy" => context = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                    "allow" => allow.push((context.clone(), attrs)),
                    "deny" => deny.push((context.clone(), attrs)),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    for (k, list) in [("user=root", &allow), ("context=default", &deny)] {
        // send_destination alone would not reach the per-connection names (…tsp.Connection_N).
        for rule in ["own_prefix", "send_destination", "send_destination_prefix"] {
            assert!(
                list.iter()
                    .any(|(ctx, a)| ctx == k && a.iter().any(|(n, v)| n == rule && v == SERVICE)),
                "{k}: no {rule}={SERVICE}"
            );
        }
    }
}

/// The body of a man page section, from `.SH NAME` to the next `.SH`.
fn man_section<'a>(page: &'a str, name: &str) -> &'a str {
    let start = page
        .find(&format!("\n.SH {name}\n"))
        .unwrap_or_else(|| panic!("the man page has no section {name}"))
        + name.len()
        + 6;
    let rest = &page[start..];
    &rest[..rest.find("\n.SH ").unwrap_or(rest.len())]
}

/// roff's escaped hyphen.
fn roff(s: &str) -> String {
    s.replace('-', "\\-")
}

#[test]
fn man_page_documents_every_vpn_data_key() {
    use tsp_config::names::{DATA_KEYS, KEY_MTU, KEY_PASSWORD_FLAGS, SECRET_PASSWORD};
    let data = man_section(MAN, "VPN DATA");
    let keys = DATA_KEYS.iter().map(|(k, _)| *k).chain([KEY_MTU, KEY_PASSWORD_FLAGS]);
    for key in keys {
        let entry = format!(".TP\n.B {}\n", roff(key));
        assert!(
            data.contains(&entry),
            "vpn.data key {key} has no entry ({entry:?}) in nm-tsp-service.8"
        );
    }
    let secrets = man_section(MAN, "SECRETS");
    assert!(
        secrets.contains(&format!(".TP\n.B {SECRET_PASSWORD}\n")),
        "the password secret is not documented"
    );
}

#[test]
fn help_and_man_page_list_the_same_options() {
    // `.TP` then `.B --opt` or `.BI --opt " ARG"`.
    let section = man_section(MAN, "OPTIONS");
    let lines: Vec<&str> = section.lines().collect();
    let documented: Vec<String> = lines
        .windows(2)
        .filter(|w| w[0] == ".TP")
        .filter_map(|w| w[1].strip_prefix(".BI ").or_else(|| w[1].strip_prefix(".B ")))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|opt| opt.replace("\\-", "-"))
        .collect();
    assert!(
        documented.len() >= 4,
        "no options found in the man page: {documented:?}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nm-tsp-service"))
        .arg("--help")
        .output()
        .expect("run nm-tsp-service --help");
    assert!(out.status.success(), "nm-tsp-service --help failed");
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in &documented {
        assert!(
            help.contains(opt.as_str()),
            "--help does not mention {opt}, which the man page lists:\n{help}"
        );
    }
    let offered = help
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.trim_end_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '-')));
    for opt in offered {
        assert!(
            documented.iter().any(|d| d == opt),
            "--help offers {opt}, which nm-tsp-service.8 does not document"
        );
    }
}
