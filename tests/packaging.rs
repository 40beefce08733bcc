//! The files NetworkManager and D-Bus read: the `.name` file and the system-bus policy must
//! agree on the service name, and the policy must be well-formed XML; the `.name` file's auth
//! dialog is the binary this package builds, in the same directory as the service.

use std::collections::BTreeMap;

const NAME: &str = include_str!("../nm-plugin/nm-tsp-service.name");
const POLICY: &str = include_str!("../dbus/nm-tsp-service.conf");
const SERVICE: &str = "org.freedesktop.NetworkManager.tsp";

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
        ["GNOME", "VPN Connection"]
    );
    let gnome = &g["GNOME"];
    assert_eq!(
        gnome.get("auth-dialog").map(String::as_str),
        Some("/usr/libexec/nm-tsp-auth-dialog")
    );
    assert_eq!(gnome.get("supports-external-ui-mode").map(String::as_str), Some("true"));
    assert_eq!(gnome.get("supports-hints").map(String::as_str), Some("true"));
    // No [libnm] editor plugin and no legacy `properties` yet: NM would look for files we do not ship.
    assert!(!gnome.contains_key("properties"));
    // The dialog named is the one built here, next to the service.
    let built = std::path::Path::new(env!("CARGO_BIN_EXE_nm-tsp-auth-dialog"));
    let dialog = std::path::Path::new(&gnome["auth-dialog"]);
    assert_eq!(dialog.file_name(), built.file_name());
    let program = std::path::Path::new(&g["VPN Connection"]["program"]);
    assert_eq!(dialog.parent(), program.parent());
    // The dialog serves the service this file declares.
    assert_eq!(g["VPN Connection"]["service"], nm_tsp::nm::auth_dialog::SERVICE);
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
        for rule in ["own_prefix", "send_destination"] {
            assert!(
                list.iter()
                    .any(|(ctx, a)| ctx == k && a.iter().any(|(n, v)| n == rule && v == SERVICE)),
                "{k}: no {rule}={SERVICE}"
            );
        }
    }
}
