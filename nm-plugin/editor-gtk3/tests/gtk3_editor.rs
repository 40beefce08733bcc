//! The GTK3 editor as nm-connection-editor uses it: the built library is dlopened under its
//! installed name, `nm_vpn_editor_factory_tsp` makes an editor for a libnm connection, the
//! widget (from libnm's `nm_vpn_editor_get_widget`) goes into a real window on a private
//! Xvfb, fields are filled in by widget name, and `nm_vpn_editor_update_connection` is
//! checked key by key. Screenshots land in `target/editor-screenshots/gtk3*.png`.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ptr;
use std::rc::Rc;

use glib::translate::*;
use gtk::prelude::*;
use nm_tsp_editor_common::nm;
use nm_tsp_editor_common::testing::{self, Checks, Xvfb, map};

fn find(root: &gtk::Widget, name: &str) -> Option<gtk::Widget> {
    if root.widget_name() == name {
        return Some(root.clone());
    }
    let container = root.downcast_ref::<gtk::Container>()?;
    let mut found = None;
    container.forall(|child| {
        if found.is_none() {
            found = find(child, name);
        }
    });
    found
}

fn get<T: IsA<gtk::Widget>>(root: &gtk::Widget, name: &str) -> T {
    find(root, name)
        .unwrap_or_else(|| panic!("no widget named {name}"))
        .downcast::<T>()
        .unwrap_or_else(|w| panic!("{name} is a {}", w.type_()))
}

fn pump() {
    for _ in 0..50 {
        while gtk::events_pending() {
            gtk::main_iteration();
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

struct Host {
    editor: *mut nm::NMVpnEditor,
    widget: gtk::Widget,
    window: gtk::Window,
    changes: Rc<Cell<u32>>,
}

impl Host {
    fn update(&self, connection: *mut nm::NMConnection) -> Result<(), String> {
        let mut err = testing::no_error();
        // SAFETY: a live editor and connection.
        let ok = unsafe { nm::nm_vpn_editor_update_connection(self.editor, connection, &mut err) };
        // SAFETY: the GError update_connection set, if any.
        let msg = unsafe { testing::take_error(err) };
        match ok {
            0 => Err(msg.expect("a FALSE update_connection sets the GError")),
            _ => {
                assert!(msg.is_none(), "TRUE with an error: {msg:?}");
                Ok(())
            }
        }
    }

    fn entry(&self, name: &str, text: &str) {
        get::<gtk::Entry>(&self.widget, name).set_text(text);
    }

    fn combo(&self, name: &str, id: &str) {
        let c = get::<gtk::ComboBoxText>(&self.widget, name);
        assert!(c.set_active_id(Some(id)), "{name} has no choice {id}");
    }

    fn toggle(&self, name: &str, on: bool) {
        get::<gtk::CheckButton>(&self.widget, name).set_active(on);
    }

    fn screenshot(&self, file: &str) {
        pump();
        let (w, h) = (self.window.allocated_width(), self.window.allocated_height());
        let surface = gtk::cairo::ImageSurface::create(gtk::cairo::Format::ARgb32, w, h).expect("image surface");
        {
            let cr = gtk::cairo::Context::new(&surface).expect("cairo context");
            self.window.draw(&cr);
        }
        let pixbuf = gtk::gdk::pixbuf_get_from_surface(&surface, 0, 0, w, h).expect("pixbuf of the window");
        let path = testing::screenshot_dir().join(file);
        pixbuf.savev(&path, "png", &[]).expect("saving the screenshot");
        eprintln!("screenshot: {}", path.display());
    }
}

fn vpn(c: *mut nm::NMConnection) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    // SAFETY: a live connection.
    unsafe { nm::read_vpn(c) }
}

fn main() {
    let trace_file = std::env::temp_dir().join(format!("nm-tsp-gtk3-trace-{}", std::process::id()));
    let xvfb = match Xvfb::start() {
        Ok(x) => x,
        Err(why) => panic!("the GTK3 editor test needs an X server: {why}"),
    };
    // SAFETY: single-threaded so far; GTK reads these when it opens the display.
    unsafe {
        std::env::set_var("DISPLAY", &xvfb.display);
        std::env::set_var("GDK_BACKEND", "x11");
        std::env::remove_var("WAYLAND_DISPLAY");
        std::env::set_var("GTK_THEME", "Adwaita");
        std::env::set_var(nm_tsp_editor_common::TRACE_ENV, &trace_file);
    }
    gtk::init().expect("GTK3 on Xvfb");
    let factory = testing::load_editor("nm_vpn_plugin_tsp_editor", "libnm-vpn-plugin-tsp-editor.so")
        .expect("loading the editor library");

    let initial = map(&[
        ("server", "192.0.2.1"),
        ("auth-method", "digest-md5"),
        ("username", "alice"),
        ("tunnel-mode", "v6v4"),
        ("keepalive-interval", "15"),
        ("password-flags", "1"),
        ("retry-delay", "5"),
    ]);
    let connection = testing::new_connection(&initial, &map(&[("password", "old-pw")]));
    let mut err = testing::no_error();
    // SAFETY: the factory's contract: a connection, a GError location (no plugin needed).
    let editor = unsafe { factory(ptr::null_mut(), connection, &mut err) };
    // SAFETY: the GError the factory set, if any.
    let factory_error = unsafe { testing::take_error(err) };
    assert!(!editor.is_null(), "the factory made no editor: {factory_error:?}");
    assert_eq!(factory_error, None, "an editor and an error");
    // SAFETY: transfer full from the factory.
    let editor_obj: glib::Object = unsafe { from_glib_full(editor as *mut glib::gobject_ffi::GObject) };
    let changes = Rc::new(Cell::new(0));
    let c = changes.clone();
    editor_obj.connect_local("changed", false, move |_| {
        c.set(c.get() + 1);
        None
    });
    // SAFETY: libnm's dispatch; transfer none.
    let widget: gtk::Widget =
        unsafe { from_glib_none(nm::nm_vpn_editor_get_widget(editor) as *mut gtk::ffi::GtkWidget) };
    let window = gtk::Window::new(gtk::WindowType::Toplevel);
    window.set_title("tsp VPN (GTK3 editor)");
    window.set_default_size(640, -1);
    window.add(&widget);
    window.show_all();
    pump();
    let host = Host {
        editor,
        widget,
        window,
        changes,
    };
    let mut checks = Checks::default();

    checks.run("the library brings no other GTK into the host", || {
        assert!(testing::mapped("libgtk-3.so"), "the host's GTK");
        assert!(testing::mapped("libnm.so"));
        assert!(!testing::mapped("libgtk-4.so"), "GTK 4 in a GTK 3 host");
    });

    checks.run("fields show the connection", || {
        assert_eq!(get::<gtk::Entry>(&host.widget, "server").text(), "192.0.2.1");
        assert_eq!(get::<gtk::Entry>(&host.widget, "username").text(), "alice");
        assert_eq!(get::<gtk::Entry>(&host.widget, "password").text(), "old-pw");
        assert_eq!(get::<gtk::Entry>(&host.widget, "keepalive-interval").text(), "15");
        let id = |n: &str| {
            get::<gtk::ComboBoxText>(&host.widget, n)
                .active_id()
                .map(|s| s.to_string())
        };
        assert_eq!(id("auth-method").as_deref(), Some("digest-md5"));
        assert_eq!(id("tunnel-mode").as_deref(), Some("v6v4"));
        assert_eq!(id("password-flags").as_deref(), Some("1"));
        assert!(get::<gtk::CheckButton>(&host.widget, "keepalive").is_active());
        assert!(!get::<gtk::CheckButton>(&host.widget, "host-type").is_active());
        assert_eq!(host.changes.get(), 0, "loading is not a change");
        assert!(!get::<gtk::Label>(&host.widget, "plain-warning").is_visible());
    });

    checks.run("unchanged connection writes back the same", || {
        host.update(connection).expect("valid as loaded");
        let (data, secrets) = vpn(connection);
        assert_eq!(data, initial);
        assert_eq!(secrets, map(&[("password", "old-pw")]));
        // SAFETY: the test's connection lives until the end of main.
        let service = unsafe { testing::service_type(connection) };
        assert_eq!(service.as_deref(), Some(nm::SERVICE));
    });

    checks.run("every field is written", || {
        get::<gtk::Expander>(&host.widget, "advanced").set_expanded(true);
        host.entry("server", "broker.example.net:3653");
        host.combo("auth-method", "passdss-3des-1");
        host.entry("username", "bob");
        host.entry("password", "s3cret");
        host.combo("password-flags", "0");
        host.combo("tunnel-mode", "v6udpv4");
        host.toggle("host-type", true);
        host.entry("prefix-length", "56");
        host.entry("lan-interface", "eth1");
        host.entry("dns-server", "ns1.example.net, ns2.example.net");
        host.entry("keepalive-interval", "10");
        host.entry("client-v4", "192.0.2.7");
        host.entry("client-v6", "2001:db8::7");
        host.toggle("always-use-same-server", true);
        host.entry("mtu", "1400");
        assert!(host.changes.get() >= 15, "{} changed signals", host.changes.get());
        host.update(connection).expect("valid");
        let (data, secrets) = vpn(connection);
        let want = map(&[
            ("server", "broker.example.net:3653"),
            ("auth-method", "passdss-3des-1"),
            ("username", "bob"),
            ("password-flags", "0"),
            ("tunnel-mode", "v6udpv4"),
            ("host-type", "router"),
            ("prefix-length", "56"),
            ("lan-interface", "eth1"),
            ("dns-server", "ns1.example.net:ns2.example.net"),
            ("keepalive-interval", "10"),
            ("client-v4", "192.0.2.7"),
            ("client-v6", "2001:db8::7"),
            ("always-use-same-server", "yes"),
            ("mtu", "1400"),
            // Not shown by the editor, kept.
            ("retry-delay", "5"),
        ]);
        for (k, v) in &want {
            assert_eq!(data.get(k), Some(v), "vpn.data {k}");
        }
        assert_eq!(data, want, "no other keys");
        assert_eq!(secrets, map(&[("password", "s3cret")]));
        assert!(!get::<gtk::Label>(&host.widget, "error-prefix-length").is_visible());
        host.screenshot("gtk3.png");
    });

    checks.run("invalid prefix length is refused and marked", || {
        let before = vpn(connection);
        for bad in ["200", "0"] {
            host.entry("prefix-length", bad);
            let e = host.update(connection).expect_err("prefix length out of range");
            assert!(e.contains("prefix-length"), "{e}");
            let label = get::<gtk::Label>(&host.widget, "error-prefix-length");
            assert!(label.is_visible(), "inline error shown");
            assert!(label.text().contains("prefix-length"), "{}", label.text());
            let entry = get::<gtk::Entry>(&host.widget, "prefix-length");
            assert!(entry.style_context().has_class("error"));
            assert!(entry.tooltip_text().is_some_and(|t| t.contains("prefix-length")));
            assert_eq!(vpn(connection), before, "a refused update leaves the connection alone");
        }
    });

    checks.run("PLAIN shows the clear-text warning", || {
        host.combo("auth-method", "plain");
        pump();
        let w = get::<gtk::Label>(&host.widget, "plain-warning");
        assert!(w.is_visible() && w.is_mapped(), "warning on screen");
        assert!(w.text().contains("clear"), "{}", w.text());
        host.screenshot("gtk3-errors.png");
        host.entry("prefix-length", "48");
        assert!(!get::<gtk::Label>(&host.widget, "error-prefix-length").is_visible());
        host.update(connection).expect("valid again");
        assert_eq!(vpn(connection).0.get("auth-method").map(String::as_str), Some("plain"));
        host.combo("auth-method", "digest-md5");
        assert!(!w.is_visible());
    });

    checks.run("password storage choices", || {
        for (flags, stored) in [("1", true), ("2", false), ("4", false), ("0", true)] {
            host.combo("password-flags", flags);
            host.update(connection).expect("valid");
            let (data, secrets) = vpn(connection);
            assert_eq!(data.get("password-flags").map(String::as_str), Some(flags));
            assert_eq!(secrets.contains_key("password"), stored, "flags {flags}");
            let sensitive = get::<gtk::Entry>(&host.widget, "password").is_sensitive();
            assert_eq!(sensitive, stored, "password entry usable only when stored");
        }
        // System-owned with no password cannot work.
        host.entry("password", "");
        let e = host.update(connection).expect_err("no password");
        assert!(e.contains("needs a password"), "{e}");
        assert!(get::<gtk::Label>(&host.widget, "error-password").is_visible());
        host.entry("password", "s3cret");
    });

    checks.run("router mode needs a LAN interface", || {
        host.entry("lan-interface", "");
        let e = host.update(connection).expect_err("router without LAN");
        assert!(e.contains("lan-interface"), "{e}");
        assert!(get::<gtk::Label>(&host.widget, "error-lan-interface").is_visible());
        host.toggle("host-type", false);
        host.update(connection).expect("host mode needs none");
        assert!(!get::<gtk::Entry>(&host.widget, "prefix-length").is_sensitive());
    });

    checks.run("anonymous writes no secret and the default keys only", || {
        for (k, v) in [
            ("server", "192.0.2.1"),
            ("username", ""),
            ("dns-server", ""),
            ("client-v4", ""),
            ("client-v6", ""),
            ("keepalive-interval", ""),
            ("mtu", ""),
            ("prefix-length", ""),
        ] {
            host.entry(k, v);
        }
        host.combo("auth-method", "anonymous");
        host.combo("tunnel-mode", "v6anyv4");
        host.toggle("always-use-same-server", false);
        host.combo("password-flags", "0");
        host.update(connection).expect("valid");
        let (data, secrets) = vpn(connection);
        assert_eq!(
            data,
            map(&[
                ("server", "192.0.2.1"),
                ("auth-method", "anonymous"),
                ("retry-delay", "5")
            ])
        );
        assert!(secrets.is_empty());
        assert!(!get::<gtk::Entry>(&host.widget, "username").is_sensitive());
    });

    checks.run("a connection without a vpn setting gets one", || {
        // SAFETY: a bare connection, released below.
        let empty = unsafe { nm::nm_simple_connection_new() };
        // SAFETY: `empty` is live until freed below.
        let service = unsafe { testing::service_type(empty) };
        assert_eq!(service, None);
        host.update(empty).expect("valid");
        // SAFETY: as above.
        let service = unsafe { testing::service_type(empty) };
        assert_eq!(service.as_deref(), Some(nm::SERVICE));
        assert_eq!(vpn(empty).0.get("server").map(String::as_str), Some("192.0.2.1"));
        // SAFETY: ours, not used again.
        unsafe { testing::free_connection(empty) };
    });

    checks.run("the trace names keys and results, never values", || {
        let t = std::fs::read_to_string(&trace_file).expect("trace written");
        let _ = std::fs::remove_file(&trace_file);
        assert!(
            t.starts_with("gtk3 editor data: auth-method keepalive-interval password-flags"),
            "{t}"
        );
        assert!(t.contains("gtk3 update ok data: "), "{t}");
        assert!(
            t.contains("gtk3 update refused: vpn.data: key \"prefix-length\""),
            "{t}"
        );
        for secret in ["old-pw", "s3cret", "192.0.2.1", "alice"] {
            assert!(!t.contains(secret), "{secret} in the trace: {t}");
        }
    });

    drop(host);
    drop(editor_obj);
    // SAFETY: ours, the editor is gone.
    unsafe { testing::free_connection(connection) };
    checks.finish("gtk3 editor");
}
