//! The editor object, shared by the GTK3 and GTK4 editor crates: each compiles this file
//! against its own gtk-rs (and so its own glib-rs) through `#[path]`, with `crate::toolkit`
//! naming what differs.
//!
//! The editor is a GObject subclass made with glib-rs that implements libnm's `NMVpnEditor`
//! GInterface: the interface's GType comes from `nm_vpn_editor_get_type()` and its vtable
//! ([`nm::NMVpnEditorInterface`]) is filled with the two `extern "C"` functions below. Every
//! entry point catches panics.

use std::ffi::{c_int, c_void};
use std::ptr;

use gtk::glib;
use gtk::glib::prelude::*;
use gtk::glib::subclass::prelude::*;
use gtk::glib::translate::*;
use nm_tsp_editor_common::{guard, key_names, nm, trace};

use crate::toolkit;

glib::wrapper! {
    /// libnm's `NMVpnEditor` interface.
    pub struct VpnEditor(Interface<nm::NMVpnEditor, nm::NMVpnEditorInterface>);

    match fn {
        type_ => || nm::nm_vpn_editor_get_type(),
    }
}

mod imp {
    use std::cell::OnceCell;

    use gtk::glib;
    use gtk::glib::subclass::prelude::*;

    #[derive(Default)]
    pub struct TspEditor {
        pub ui: OnceCell<crate::ui::Ui>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for TspEditor {
        // One name per library: a process could load both.
        const NAME: &'static str = crate::toolkit::TYPE_NAME;
        type Type = super::TspEditor;
        type ParentType = glib::Object;
        type Interfaces = (super::VpnEditor,);
    }

    impl ObjectImpl for TspEditor {}
}

glib::wrapper! {
    /// The tsp editor: the widget and the connection's fields.
    pub struct TspEditor(ObjectSubclass<imp::TspEditor>) @implements VpnEditor;
}

// SAFETY: the vtable type is the C struct of libnm's nm-vpn-editor.h, field for field, and
// every function stored has exactly the C signature of its slot.
unsafe impl IsImplementable<imp::TspEditor> for VpnEditor {
    fn interface_init(iface: &mut glib::Interface<Self>) {
        let iface = iface.as_mut();
        iface.get_widget = Some(get_widget);
        iface.update_connection = Some(update_connection);
    }
}

/// # Safety
/// `editor` is a `TspEditor` (GObject calls this through its own vtable).
unsafe fn editor_ref(editor: *mut nm::NMVpnEditor) -> glib::translate::Borrowed<TspEditor> {
    // SAFETY: the vtable is only installed on TspEditor instances.
    unsafe { from_glib_borrow(editor as *mut <TspEditor as glib::object::ObjectType>::GlibType) }
}

unsafe extern "C" fn get_widget(editor: *mut nm::NMVpnEditor) -> *mut c_void {
    guard("get_widget", ptr::null_mut, || {
        // SAFETY: libnm calls this slot through the vtable, which only TspEditor installs.
        let editor = unsafe { editor_ref(editor) };
        match editor.imp().ui.get() {
            // transfer none: the editor keeps its reference.
            Some(ui) => ui.root.as_ptr().cast(),
            None => ptr::null_mut(),
        }
    })
}

unsafe extern "C" fn update_connection(
    editor: *mut nm::NMVpnEditor,
    connection: *mut nm::NMConnection,
    error: *mut *mut nm::GError,
) -> c_int {
    let fail = |message: &str| {
        // SAFETY: libnm passes a null or empty GError location (the GError convention).
        unsafe { nm::set_error(error, message) };
        glib::ffi::GFALSE
    };
    guard(
        "update_connection",
        || fail("internal error in the tsp editor"),
        || {
            // SAFETY: libnm calls this slot through the vtable, which only TspEditor installs.
            let editor = unsafe { editor_ref(editor) };
            let Some(ui) = editor.imp().ui.get() else {
                return fail("the tsp editor has no widget");
            };
            match ui.check() {
                // SAFETY: libnm passes the connection being edited.
                Ok(out) => match unsafe { nm::write_vpn(connection, &out.data, &out.secrets) } {
                    Ok(()) => {
                        trace(&format!(
                            "{} update ok data: {}; secrets: {}",
                            toolkit::NAME,
                            key_names(&out.data),
                            key_names(&out.secrets)
                        ));
                        glib::ffi::GTRUE
                    }
                    Err(m) => fail(&m),
                },
                Err(e) => {
                    trace(&format!("{} update refused: {}", toolkit::NAME, e.message));
                    fail(&e.message)
                }
            }
        },
    )
}

impl TspEditor {
    fn new(connection: *mut nm::NMConnection) -> Result<TspEditor, String> {
        gtk::init().map_err(|e| format!("GTK cannot be initialised: {e}"))?;
        let editor: TspEditor = glib::Object::new();
        // SAFETY: libnm passes a valid connection (or null, read as empty).
        let (data, secrets) = unsafe { nm::read_vpn(connection) };
        trace(&format!(
            "{} editor data: {}; secrets: {}",
            toolkit::NAME,
            key_names(&data),
            key_names(&secrets)
        ));
        let weak = editor.downgrade();
        let ui = crate::ui::Ui::new(
            &nm_tsp_editor_common::form::Form::load(&data, &secrets),
            Box::new(move || {
                if let Some(e) = weak.upgrade() {
                    e.emit_by_name::<()>("changed", &[]);
                }
            }),
        );
        editor
            .imp()
            .ui
            .set(ui)
            .map_err(|_| "the editor was built twice".to_owned())?;
        Ok(editor)
    }
}

/// The factory the base plugin calls: a new editor (transfer full) for `connection`, or null
/// with `error` set.
///
/// # Safety
/// Called by libnm-style C code on the GTK main thread; `connection` is a valid
/// `NMConnection`, `error` null or pointing at a null `GError*`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nm_vpn_editor_factory_tsp(
    _plugin: *mut nm::NMVpnEditorPlugin,
    connection: *mut nm::NMConnection,
    error: *mut *mut nm::GError,
) -> *mut nm::NMVpnEditor {
    let fail = |message: &str| {
        // SAFETY: caller's contract.
        unsafe { nm::set_error(error, message) };
        ptr::null_mut()
    };
    guard(
        "nm_vpn_editor_factory_tsp",
        || fail("internal error in the tsp editor"),
        || match TspEditor::new(connection) {
            Ok(editor) => {
                // A new reference for the caller (transfer full); ours is dropped with `editor`.
                // (`to_glib_full`, not `into_glib_ptr`: that one is an unsafe fn in glib-rs 0.18.)
                let p: *mut glib::gobject_ffi::GObject = editor.upcast_ref::<glib::Object>().to_glib_full();
                p.cast()
            }
            Err(m) => fail(&m),
        },
    )
}
