//! `libnm-gtk4-vpn-plugin-tsp-editor.so`: the GTK4 editor of tsp connections, for GNOME
//! Settings.
//!
//! The base plugin (`libnm-vpn-plugin-tsp.so`) dlopens this library when its host runs GTK4 and
//! calls [`nm_vpn_editor_factory_tsp`]. The editor is a GObject subclass made with glib-rs
//! that implements libnm's `NMVpnEditor` GInterface: the interface's GType comes from
//! `nm_vpn_editor_get_type()` and its vtable ([`nm::NMVpnEditorInterface`]) is filled with the
//! two `extern "C"` functions below. Every entry point catches panics.

mod ui;

use std::ffi::{c_int, c_void};
use std::ptr;

use glib::prelude::*;
use glib::subclass::prelude::*;
use glib::translate::*;
use gtk::glib;
use nm_tsp_editor_common::{guard, key_names, nm, trace};

glib::wrapper! {
    /// libnm's `NMVpnEditor` interface.
    pub struct VpnEditor(Interface<nm::NMVpnEditor, nm::NMVpnEditorInterface>);

    match fn {
        type_ => || nm::nm_vpn_editor_get_type(),
    }
}

mod imp {
    use std::cell::OnceCell;

    use glib::subclass::prelude::*;
    use gtk::glib;

    #[derive(Default)]
    pub struct TspEditor {
        pub ui: OnceCell<crate::ui::Ui>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for TspEditor {
        const NAME: &'static str = "NMTspEditorGtk4";
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
        // SAFETY: see editor_ref.
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
        // SAFETY: GObject hands a null or empty GError location.
        unsafe { nm::set_error(error, message) };
        glib::ffi::GFALSE
    };
    guard(
        "update_connection",
        || fail("internal error in the tsp editor"),
        || {
            // SAFETY: see editor_ref.
            let editor = unsafe { editor_ref(editor) };
            let Some(ui) = editor.imp().ui.get() else {
                return fail("the tsp editor has no widget");
            };
            match ui.check() {
                // SAFETY: libnm passes the connection being edited.
                Ok(out) => match unsafe { nm::write_vpn(connection, &out.data, &out.secrets) } {
                    Ok(()) => {
                        trace(&format!(
                            "gtk4 update ok data: {}; secrets: {}",
                            key_names(&out.data),
                            key_names(&out.secrets)
                        ));
                        glib::ffi::GTRUE
                    }
                    Err(m) => fail(&m),
                },
                Err(e) => {
                    trace(&format!("gtk4 update refused: {}", e.message));
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
            "gtk4 editor data: {}; secrets: {}",
            key_names(&data),
            key_names(&secrets)
        ));
        let weak = editor.downgrade();
        let ui = ui::Ui::new(
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
                let p: *mut glib::gobject_ffi::GObject = editor.upcast::<glib::Object>().into_glib_ptr();
                p.cast()
            }
            Err(m) => fail(&m),
        },
    )
}
