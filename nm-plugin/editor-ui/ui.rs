//! The editor's widget: the form's fields, their inline errors, and the "changed" callback.
//! Shared by the GTK3 and GTK4 editor crates like `editor.rs`; `crate::toolkit` (`tk`) does
//! what the two GTKs spell differently.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use gtk::glib;
use gtk::prelude::*;
use nm_tsp_editor_common::form::{
    AUTH_METHODS, FieldError, Form, Output, PASSWORD_STORAGE, PLAIN_WARNING, TUNNEL_MODES,
};

use crate::toolkit as tk;

/// Where an error of one key is shown: the widget to mark and the label under it.
struct Slot {
    widget: gtk::Widget,
    label: gtk::Label,
}

struct Inner {
    root: gtk::Box,
    server: gtk::Entry,
    auth: gtk::ComboBoxText,
    plain_warning: gtk::Label,
    username: gtk::Entry,
    password: gtk::Entry,
    show_password: gtk::CheckButton,
    storage: gtk::ComboBoxText,
    tunnel: gtk::ComboBoxText,
    router: gtk::CheckButton,
    prefix: gtk::Entry,
    lan: gtk::Entry,
    dns: gtk::Entry,
    keepalive: gtk::CheckButton,
    interval: gtk::Entry,
    client_v4: gtk::Entry,
    client_v6: gtk::Entry,
    same_server: gtk::CheckButton,
    mtu: gtk::Entry,
    general_error: gtk::Label,
    slots: HashMap<&'static str, Slot>,
    extra: RefCell<BTreeMap<String, String>>,
    /// Set while fields are filled in, so that no "changed" goes out for it.
    loading: Cell<bool>,
    changed: Box<dyn Fn()>,
}

/// The editor's widget tree, shared with the signal handlers.
pub struct Ui {
    pub root: gtk::Widget,
    inner: Rc<Inner>,
}

fn entry(name: &str, placeholder: &str) -> gtk::Entry {
    let e = gtk::Entry::new();
    e.set_widget_name(name);
    e.set_placeholder_text(Some(placeholder));
    e.set_hexpand(true);
    e.set_activates_default(true);
    e
}

fn combo(name: &str, items: &[(&str, &str)]) -> gtk::ComboBoxText {
    let c = gtk::ComboBoxText::new();
    c.set_widget_name(name);
    for (id, label) in items {
        c.append(Some(id), label);
    }
    c.set_hexpand(true);
    c
}

fn check(name: &str, label: &str) -> gtk::CheckButton {
    let c = gtk::CheckButton::with_mnemonic(label);
    c.set_widget_name(name);
    c
}

fn error_label(name: &str) -> gtk::Label {
    let l = gtk::Label::new(None);
    l.set_widget_name(name);
    l.set_xalign(0.0);
    tk::wrap_lines(&l);
    l.set_max_width_chars(60);
    // Hidden until there is something to say.
    tk::keep_hidden(&l);
    l
}

/// Adds "label: field" at `row`, with the field's error label under it.
fn add_row(
    grid: &gtk::Grid,
    row: &mut i32,
    label: Option<&str>,
    field: &impl IsA<gtk::Widget>,
    keys: &[&'static str],
    slots: &mut HashMap<&'static str, Slot>,
) {
    if let Some(text) = label {
        let l = gtk::Label::with_mnemonic(text);
        l.set_xalign(1.0);
        l.set_mnemonic_widget(Some(field));
        grid.attach(&l, 0, *row, 1, 1);
    }
    let col = gtk::Box::new(gtk::Orientation::Vertical, 2);
    tk::append(&col, field);
    let key0 = keys.first().copied().unwrap_or("general");
    let err = error_label(&format!("error-{key0}"));
    tk::append(&col, &err);
    grid.attach(
        &col,
        if label.is_some() { 1 } else { 0 },
        *row,
        if label.is_some() { 1 } else { 2 },
        1,
    );
    for key in keys {
        slots.insert(
            key,
            Slot {
                widget: field.clone().upcast(),
                label: err.clone(),
            },
        );
    }
    *row += 1;
}

fn section(text: &str) -> gtk::Label {
    let l = gtk::Label::new(None);
    l.set_markup(&format!("<b>{}</b>", glib::markup_escape_text(text)));
    l.set_xalign(0.0);
    l
}

fn grid() -> gtk::Grid {
    let g = gtk::Grid::new();
    g.set_row_spacing(6);
    g.set_column_spacing(12);
    g.set_margin_start(12);
    g
}

impl Ui {
    /// Builds the widget showing `form`; `changed` runs after every edit.
    pub fn new(form: &Form, changed: Box<dyn Fn()>) -> Ui {
        let mut slots = HashMap::new();
        let root = gtk::Box::new(gtk::Orientation::Vertical, 6);
        root.set_widget_name("tsp-editor");
        tk::set_border(&root, 12);

        tk::append(&root, &section("General"));
        let general = grid();
        let mut row = 0;
        let server = entry("server", "broker.example.net, 192.0.2.1:3653 or [2001:db8::1]");
        add_row(&general, &mut row, Some("_Broker:"), &server, &["server"], &mut slots);
        let auth = combo("auth-method", &AUTH_METHODS);
        add_row(
            &general,
            &mut row,
            Some("_Authentication:"),
            &auth,
            &["auth-method"],
            &mut slots,
        );
        let plain_warning = gtk::Label::new(None);
        plain_warning.set_widget_name("plain-warning");
        plain_warning.set_markup(&format!(
            "<span foreground=\"#c01c28\">⚠ {}</span>",
            glib::markup_escape_text(PLAIN_WARNING)
        ));
        plain_warning.set_xalign(0.0);
        tk::wrap_lines(&plain_warning);
        plain_warning.set_max_width_chars(60);
        tk::keep_hidden(&plain_warning);
        general.attach(&plain_warning, 1, row, 1, 1);
        row += 1;
        let username = entry("username", "account at the broker");
        add_row(
            &general,
            &mut row,
            Some("_User name:"),
            &username,
            &["username"],
            &mut slots,
        );
        let password = entry("password", "");
        password.set_visibility(false);
        password.set_input_purpose(gtk::InputPurpose::Password);
        let storage = gtk::ComboBoxText::new();
        storage.set_widget_name("password-flags");
        for (flags, label) in PASSWORD_STORAGE {
            storage.append(Some(&flags.to_string()), label);
        }
        storage.set_tooltip_text(Some("Where NetworkManager keeps the password"));
        let pw_box = gtk::Box::new(gtk::Orientation::Horizontal, 6);
        tk::append_expanding(&pw_box, &password);
        tk::append(&pw_box, &storage);
        add_row(
            &general,
            &mut row,
            Some("_Password:"),
            &pw_box,
            &["password", "password-flags"],
            &mut slots,
        );
        // The error marks the entry itself.
        if let Some(s) = slots.get_mut("password") {
            s.widget = password.clone().upcast();
        }
        let show_password = check("show-password", "Sho_w password");
        general.attach(&show_password, 1, row, 1, 1);
        row += 1;
        let tunnel = combo("tunnel-mode", &TUNNEL_MODES);
        add_row(
            &general,
            &mut row,
            Some("_Tunnel mode:"),
            &tunnel,
            &["tunnel-mode"],
            &mut slots,
        );
        tk::append(&root, &general);

        let expander = gtk::Expander::new(None);
        expander.set_widget_name("advanced");
        expander.set_label_widget(Some(&section("Advanced")));
        let adv = grid();
        adv.set_margin_top(6);
        let mut row = 0;
        let router = check("host-type", "_Router mode: delegate an IPv6 prefix to a LAN");
        add_row(&adv, &mut row, None, &router, &["host-type"], &mut slots);
        let prefix = entry("prefix-length", "64");
        add_row(
            &adv,
            &mut row,
            Some("Prefix _length:"),
            &prefix,
            &["prefix-length"],
            &mut slots,
        );
        let lan = entry("lan-interface", "interface to advertise the prefix on, e.g. eth1");
        add_row(
            &adv,
            &mut row,
            Some("_LAN interface:"),
            &lan,
            &["lan-interface"],
            &mut slots,
        );
        let dns = entry("dns-server", "name servers for the reverse zone, e.g. ns1.example.net");
        add_row(
            &adv,
            &mut row,
            Some("_DNS delegation:"),
            &dns,
            &["dns-server"],
            &mut slots,
        );
        let keepalive = check("keepalive", "Send _keepalives");
        add_row(&adv, &mut row, None, &keepalive, &["keepalive"], &mut slots);
        let interval = entry("keepalive-interval", "30");
        add_row(
            &adv,
            &mut row,
            Some("Keepalive _interval (s):"),
            &interval,
            &["keepalive-interval"],
            &mut slots,
        );
        let client_v4 = entry("client-v4", "automatic");
        add_row(
            &adv,
            &mut row,
            Some("Client IPv_4 source:"),
            &client_v4,
            &["client-v4"],
            &mut slots,
        );
        let client_v6 = entry("client-v6", "automatic");
        add_row(
            &adv,
            &mut row,
            Some("Client IPv_6 source:"),
            &client_v6,
            &["client-v6"],
            &mut slots,
        );
        let same_server = check("always-use-same-server", "Always use the _same broker");
        add_row(
            &adv,
            &mut row,
            None,
            &same_server,
            &["always-use-same-server"],
            &mut slots,
        );
        let mtu = entry("mtu", "1280");
        add_row(&adv, &mut row, Some("_MTU:"), &mtu, &["mtu"], &mut slots);
        tk::set_child(&expander, &adv);
        tk::append(&root, &expander);

        let general_error = error_label("error-general");
        tk::append(&root, &general_error);

        let inner = Rc::new(Inner {
            root: root.clone(),
            server,
            auth,
            plain_warning,
            username,
            password,
            show_password,
            storage,
            tunnel,
            router,
            prefix,
            lan,
            dns,
            keepalive,
            interval,
            client_v4,
            client_v6,
            same_server,
            mtu,
            general_error,
            slots,
            extra: RefCell::new(BTreeMap::new()),
            loading: Cell::new(false),
            changed,
        });
        inner.fill(form);
        inner.connect();
        tk::show_all(&root);
        // The inline marks are what counts here; the result is asked for again on update.
        let _ = inner.refresh();
        Ui {
            root: root.upcast(),
            inner,
        }
    }

    /// Validates the fields (marking the problem inline) and gives what to store.
    pub fn check(&self) -> Result<Output, FieldError> {
        self.inner.refresh()
    }
}

impl Inner {
    fn fill(&self, f: &Form) {
        self.loading.set(true);
        self.server.set_text(&f.server);
        self.auth.set_active_id(Some(&f.auth_method));
        self.username.set_text(&f.username);
        self.password.set_text(&f.password);
        self.storage.set_active_id(Some(&f.password_flags.to_string()));
        self.tunnel.set_active_id(Some(&f.tunnel_mode));
        self.router.set_active(f.router);
        self.prefix.set_text(&f.prefix_length);
        self.lan.set_text(&f.lan_interface);
        self.dns.set_text(&f.dns_server);
        self.keepalive.set_active(f.keepalive);
        self.interval.set_text(&f.keepalive_interval);
        self.client_v4.set_text(&f.client_v4);
        self.client_v6.set_text(&f.client_v6);
        self.same_server.set_active(f.always_use_same_server);
        self.mtu.set_text(&f.mtu);
        *self.extra.borrow_mut() = f.extra.clone();
        self.loading.set(false);
    }

    fn form(&self) -> Form {
        let id = |c: &gtk::ComboBoxText| c.active_id().map(|s| s.to_string()).unwrap_or_default();
        Form {
            server: self.server.text().into(),
            auth_method: id(&self.auth),
            username: self.username.text().into(),
            password: self.password.text().into(),
            password_flags: id(&self.storage).parse().unwrap_or_default(),
            tunnel_mode: id(&self.tunnel),
            router: self.router.is_active(),
            prefix_length: self.prefix.text().into(),
            lan_interface: self.lan.text().into(),
            dns_server: self.dns.text().into(),
            keepalive: self.keepalive.is_active(),
            keepalive_interval: self.interval.text().into(),
            client_v4: self.client_v4.text().into(),
            client_v6: self.client_v6.text().into(),
            always_use_same_server: self.same_server.is_active(),
            mtu: self.mtu.text().into(),
            extra: self.extra.borrow().clone(),
        }
    }

    /// Sensitivity, the PLAIN warning and the inline error, from the fields as they are.
    fn refresh(&self) -> Result<Output, FieldError> {
        let f = self.form();
        self.username.set_sensitive(f.uses_password());
        self.password.set_sensitive(f.password_editable());
        self.show_password.set_sensitive(f.password_editable());
        self.storage.set_sensitive(f.uses_password());
        self.password.set_visibility(self.show_password.is_active());
        self.plain_warning.set_visible(f.plain_warning());
        self.prefix.set_sensitive(f.router);
        self.lan.set_sensitive(f.router);
        self.interval.set_sensitive(f.keepalive);

        for slot in self.slots.values() {
            tk::mark_error(&slot.widget, false);
            slot.widget.set_tooltip_text(None);
            slot.label.set_visible(false);
        }
        self.general_error.set_visible(false);
        let result = f.validate();
        if let Err(e) = &result {
            let markup = format!(
                "<span foreground=\"#c01c28\">{}</span>",
                glib::markup_escape_text(&e.message)
            );
            match e.key.as_deref().and_then(|k| self.slots.get(k)) {
                Some(slot) => {
                    tk::mark_error(&slot.widget, true);
                    slot.widget.set_tooltip_text(Some(&e.message));
                    slot.label.set_markup(&markup);
                    slot.label.set_visible(true);
                }
                None => {
                    self.general_error.set_markup(&markup);
                    self.general_error.set_visible(true);
                }
            }
        }
        result
    }

    fn edited(&self) {
        if self.loading.get() {
            return;
        }
        let _ = self.refresh();
        (self.changed)();
    }

    fn connect(self: &Rc<Self>) {
        let weak = Rc::downgrade(self);
        let on = move || {
            let weak = weak.clone();
            move || {
                if let Some(me) = weak.upgrade() {
                    me.edited();
                }
            }
        };
        for e in [
            &self.server,
            &self.username,
            &self.password,
            &self.prefix,
            &self.lan,
            &self.dns,
            &self.interval,
            &self.client_v4,
            &self.client_v6,
            &self.mtu,
        ] {
            let f = on();
            e.connect_changed(move |_| f());
        }
        for c in [&self.auth, &self.storage, &self.tunnel] {
            let f = on();
            c.connect_changed(move |_| f());
        }
        for c in [&self.router, &self.keepalive, &self.same_server] {
            let f = on();
            c.connect_toggled(move |_| f());
        }
        let weak = Rc::downgrade(self);
        self.show_password.connect_toggled(move |b| {
            if let Some(me) = weak.upgrade() {
                me.password.set_visibility(b.is_active());
            }
        });
        let _ = &self.root;
    }
}
