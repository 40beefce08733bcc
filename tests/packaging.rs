//! The files NetworkManager and D-Bus read: the `.name` file and the system-bus policy must
//! agree on the service name, and the policy must be well-formed XML.

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
