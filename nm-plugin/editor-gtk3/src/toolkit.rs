//! What GTK3 (gtk-rs 0.18) does differently from GTK4 for the shared editor source in
//! `nm-plugin/editor-ui/`; `editor-gtk4/src/toolkit.rs` has the same items.

use gtk::prelude::*;

/// The GType name of the editor class (each library registers its own).
pub const TYPE_NAME: &str = "NMTspEditorGtk3";
/// The toolkit as the trace lines name it.
pub const NAME: &str = "gtk3";

/// Adds `child` at the end of `parent`, at its natural size.
pub fn append(parent: &gtk::Box, child: &impl IsA<gtk::Widget>) {
    parent.pack_start(child, false, false, 0);
}

/// Adds `child` at the end of `parent`, taking the room left.
pub fn append_expanding(parent: &gtk::Box, child: &impl IsA<gtk::Widget>) {
    parent.pack_start(child, true, true, 0);
}

pub fn set_child(expander: &gtk::Expander, child: &impl IsA<gtk::Widget>) {
    expander.add(child);
}

/// Space of `px` around the editor's contents.
pub fn set_border(root: &gtk::Box, px: u16) {
    root.set_border_width(px.into());
}

pub fn wrap_lines(label: &gtk::Label) {
    label.set_line_wrap(true);
}

/// Hides `widget` until the editor shows it, also when the host calls show_all().
pub fn keep_hidden(widget: &impl IsA<gtk::Widget>) {
    widget.set_no_show_all(true);
    widget.set_visible(false);
}

/// GTK3 widgets start hidden: shows the editor's tree (bar what [`keep_hidden`] hid).
pub fn show_all(root: &impl IsA<gtk::Widget>) {
    root.show_all();
}

/// Adds or removes the theme's "error" style class (red frame of an entry).
pub fn mark_error(widget: &gtk::Widget, on: bool) {
    let style = widget.style_context();
    if on {
        style.add_class("error");
    } else {
        style.remove_class("error");
    }
}
