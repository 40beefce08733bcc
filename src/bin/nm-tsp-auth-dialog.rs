//! `nm-tsp-auth-dialog`: run by a NetworkManager secret agent (nm-applet, GNOME Shell, nmcli)
//! in the user's session to supply the `password` of a tsp VPN connection — from the agent,
//! from the user's keyring, or by asking (on the terminal, or through the agent's own UI in
//! `--external-ui-mode`). See nm-tsp-auth-dialog(1); the protocol is in `tsp_nm::auth_dialog`.
//!
//! See docs/nm-plugin.md §5.4–5.5.

use std::io::Write;
use std::os::fd::AsFd;
use std::process::ExitCode;

use clap::Parser;

use tsp_config::names::{SECRET_PASSWORD, SERVICE};
use tsp_nm::auth_dialog::{self as dialog, Action, Cancel, KEYRING_TIMEOUT, LineReader, Lookup, QUIT_TIMEOUT, Request};
use tsp_proto::secret::Secret;

#[derive(Parser, Debug)]
#[command(
    name = "nm-tsp-auth-dialog",
    version,
    about = "Supplies the password of a NetworkManager tsp VPN connection to the secret agent that runs it",
    after_help = "Run by NetworkManager's secret agents, not by hand: the connection's data and known secrets \
                  come on stdin (DATA_KEY=/DATA_VAL=, SECRET_KEY=/SECRET_VAL=, DONE, QUIT); the answer goes to \
                  stdout. Exit status 0 = answered, non-zero = cancelled."
)]
struct Cli {
    /// UUID of the VPN connection (keyring attribute connection-uuid).
    #[arg(short = 'u', long = "uuid", value_name = "UUID")]
    uuid: String,
    /// Name (id) of the VPN connection, for display.
    #[arg(short = 'n', long = "name", value_name = "NAME")]
    name: String,
    /// VPN service type; must be org.freedesktop.NetworkManager.tsp.
    #[arg(short = 's', long = "service", value_name = "SERVICE")]
    service: String,
    /// The user may be asked.
    #[arg(short = 'i', long = "allow-interaction")]
    allow_interaction: bool,
    /// The last password was refused: ask for a new one instead of returning the stored one.
    #[arg(short = 'r', long = "reprompt")]
    reprompt: bool,
    /// A hint from the VPN service: a secret name, or x-vpn-message:TEXT (repeatable).
    #[arg(short = 't', long = "hint", value_name = "HINT")]
    hints: Vec<String>,
    /// Print a keyfile describing what to ask instead of asking.
    #[arg(long = "external-ui-mode")]
    external_ui_mode: bool,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("nm-tsp-auth-dialog: {msg}");
    ExitCode::FAILURE
}

fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.service != SERVICE {
        return fail(format_args!(
            "this dialog only serves the {SERVICE} VPN service, not {:?}",
            cli.service
        ));
    }
    let req = Request {
        uuid: cli.uuid,
        name: cli.name,
        allow_interaction: cli.allow_interaction,
        reprompt: cli.reprompt,
        hints: cli.hints,
        external_ui: cli.external_ui_mode,
    };
    let shown = dialog::display_name(&req.name);

    // Raw reads of fd 0, so that no std buffer keeps a copy of what the agent sent.
    let stdin = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => return fail(format_args!("stdin: {e}")),
    };
    let mut reader = LineReader::new(stdin);
    let details = match dialog::read_details(&mut reader) {
        Ok(d) => d,
        Err(e) => {
            return fail(format_args!(
                "reading the data of VPN connection “{shown}” from the agent: {e}"
            ));
        }
    };

    let needed = dialog::password_needed(&details, &req.hints);
    let mut existing = if needed {
        dialog::password_from_agent(&details)
    } else {
        None
    };
    if needed && existing.is_none() && dialog::keyring_allowed(&details) {
        match dialog::keyring_lookup_blocking(&req.uuid, KEYRING_TIMEOUT) {
            Lookup::Found(pw) => existing = Some(pw),
            Lookup::NotFound => {}
            Lookup::Locked => eprintln!("nm-tsp-auth-dialog: the keyring holding the password is locked; not using it"),
            Lookup::Unavailable(why) => eprintln!("nm-tsp-auth-dialog: no keyring ({why}); not using it"),
        }
    }

    let answer: Secret = match dialog::decide(&req, needed, existing) {
        Action::NoSecretNeeded if req.external_ui => {
            return match write_stdout(dialog::keyfile_no_secret().as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format_args!("stdout: {e}")),
            };
        }
        Action::NoSecretNeeded => {
            if let Err(e) = write_stdout(&dialog::legacy_no_secret()) {
                return fail(format_args!("stdout: {e}"));
            }
            dialog::wait_for_quit(reader, QUIT_TIMEOUT);
            return ExitCode::SUCCESS;
        }
        Action::Keyfile { value, should_ask } => {
            let text = dialog::keyfile_password(&req, value.as_ref(), should_ask);
            return match write_stdout(text.as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format_args!("stdout: {e}")),
            };
        }
        Action::Cancel(Cancel::NoPassword) => {
            return fail(format_args!(
                "no password for VPN connection “{shown}” ({}) from the agent or the keyring, and asking is not \
                 allowed (no -i)",
                req.uuid
            ));
        }
        Action::Cancel(Cancel::RepromptWithoutInteraction) => {
            return fail(format_args!(
                "a new password for VPN connection “{shown}” was requested (-r), but asking is not allowed (no -i)"
            ));
        }
        Action::AskTerminal => match dialog::prompt_terminal(&req) {
            Ok(Some(pw)) => pw,
            Ok(None) => {
                return fail(format_args!(
                    "VPN connection “{shown}” needs a password and this dialog has no graphical interface; there is \
                     no terminal to ask on (or the input was empty). Use an agent with --external-ui-mode support \
                     (GNOME Shell, nm-applet, nmcli) or store the password in the keyring."
                ));
            }
            Err(e) => return fail(format_args!("asking for the password: {e}")),
        },
        Action::Reply(pw) => pw,
    };
    let bytes = match dialog::legacy_reply(SECRET_PASSWORD, &answer) {
        Ok(b) => b,
        Err(e) => return fail(format_args!("VPN connection “{shown}”: {e}")),
    };
    if let Err(e) = write_stdout(&bytes) {
        return fail(format_args!("stdout: {e}"));
    }
    dialog::wait_for_quit(reader, QUIT_TIMEOUT);
    ExitCode::SUCCESS
}
