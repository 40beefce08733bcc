pub mod auth_dialog;
