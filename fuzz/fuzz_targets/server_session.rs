//! A whole broker session driven by arbitrary client bytes (docs/tsp-wire.md §1.2–§1.7):
//! version, any mechanism, create, accept, over TCP or RUDP.
//!
//! Input: one `Setup` byte (transport, mechanisms offered, versions, redirector, refusals),
//! then the client's bytes cut into pieces at every `|||`: over TCP the pieces in which the
//! stream arrives, over RUDP whole datagrams, 8-byte header included.
//!
//! Invariants: the `Driver`'s after every piece (bounded replies, closed and established
//! sessions stay so, logins only for the known password, offers only after authentication);
//! and over TCP the broker's answers do not depend on how the stream is cut: the same bytes
//! in one piece give the same replies, logins, tunnel and final state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nm_tsp_fuzz::{Driver, Setup, pieces};
use tsp_proto::client::Transport;

fuzz_target!(|data: &[u8]| {
    let Some((&bits, rest)) = data.split_first() else {
        return;
    };
    let setup = Setup(bits);
    let mut cut = Driver::new(setup);
    match setup.transport() {
        Transport::Udp => {
            for dgram in pieces(rest) {
                cut.datagram(dgram);
            }
        }
        Transport::Tcp => {
            let mut stream = Vec::with_capacity(rest.len());
            let mut count = 0;
            for piece in pieces(rest) {
                cut.stream(piece);
                stream.extend_from_slice(piece);
                count += 1;
            }
            if count == 1 {
                return;
            }
            let mut whole = Driver::new(setup);
            whole.stream(&stream);
            assert_eq!(
                cut.log, whole.log,
                "the outcome depends on where the TCP stream was cut"
            );
        }
    }
});
