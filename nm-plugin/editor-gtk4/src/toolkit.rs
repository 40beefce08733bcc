//! What GTK4 (gtk4-rs 0.11) does differently from GTK3 for the shared editor source in
//! `nm-plugin/editor-ui/`; `editor-gtk3/src/toolkit.rs` has the same items.

use gtk::prelude::*;

/// The GType name of the editor class (each library registers its own).
pub const TYPE_NAME: &str = "NMTspEditorGtk4";
/// The toolkit as the trace lines name it.
pub const NAME: &str = "gtk4";

/// Adds `child` at the end of `parent`, at its natural size.
pub fn append(parent: &gtk::Box, child: &impl IsA<gtk::Widget>) {
    parent.append(child);
}

/// Adds `child` at the end of `parent`, taking the room left: GTK4 boxes have no packing
/// options, the child's own hexpand/vexpand decide (the editor's entries have hexpand).
pub fn append_expanding(parent: &gtk::Box, child: &impl IsA<gtk::Widget>) {
    parent.append(child);
}

pub fn set_child(expander: &gtk::Expander, child: &impl IsA<gtk::Widget>) {
    expander.set_child(Some(child));
}

/// Space of `px` around the editor's contents: GTK4 has no border-width, margins do it.
pub fn set_border(root: &gtk::Box, px: u16) {
    let px = px.into();
    root.set_margin_top(px);
    root.set_margin_bottom(px);
    root.set_margin_start(px);
    root.set_margin_end(px);
}

pub fn wrap_lines(label: &gtk::Label) {
    label.set_wrap(true);
}

/// Hides `widget` until the editor shows it (GTK4 has no show_all() to guard against).
pub fn keep_hidden(widget: &impl IsA<gtk::Widget>) {
    widget.set_visible(false);
}

/// Nothing to do: GTK4 widgets start visible.
pub fn show_all(_root: &impl IsA<gtk::Widget>) {}

/// Adds or removes the theme's "error" style class (red frame of an entry).
pub fn mark_error(widget: &gtk::Widget, on: bool) {
    if on {
        widget.add_css_class("error");
    } else {
        widget.remove_css_class("error");
    }
}
