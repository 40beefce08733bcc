//! A whole broker session driven by arbitrary client bytes (docs/tsp-wire.md §1.2–§1.7):
//! version, any mechanism, create, accept, over TCP or RUDP.
//!
//! Input: two `Setup` bytes (transport, mechanisms offered, versions, redirector, refusals,
//! busy broker, account store down, and whether lookups are answered through `feed` and
//! `resume`, at once or only after the next piece), then the client's bytes cut into pieces
//! at every `|||`: over TCP the pieces in which the stream arrives, over RUDP whole
//! datagrams, 8-byte header included.
//!
//! Invariants: the `Driver`'s after every piece (bounded replies, closed and established
//! sessions stay so, logins only for the known password, offers only after authentication,
//! nothing answered while a lookup waits); and over TCP the broker's answers depend neither
//! on how the stream is cut nor on when lookups are answered: the same bytes in one piece,
//! with every lookup answered at once, give the same replies, logins, tunnel and final state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nm_tsp_fuzz::{Driver, Setup, pieces};
use tsp_proto::client::Transport;

fuzz_target!(|data: &[u8]| {
    let Some((setup, rest)) = Setup::read(data) else {
        return;
    };
    let mut cut = Driver::new(setup);
    match setup.transport() {
        Transport::Udp => {
            for dgram in pieces(rest) {
                cut.datagram(dgram);
            }
            cut.settle();
        }
        Transport::Tcp => {
            let mut stream = Vec::with_capacity(rest.len());
            let mut count = 0;
            for piece in pieces(rest) {
                cut.stream(piece);
                stream.extend_from_slice(piece);
                count += 1;
            }
            cut.settle();
            let reference = setup.without(Setup::ASYNC | Setup::LATE);
            if count == 1 && reference == setup {
                return;
            }
            let mut whole = Driver::new(reference);
            whole.stream(&stream);
            whole.settle();
            assert_eq!(
                cut.log, whole.log,
                "the outcome depends on where the TCP stream was cut or when lookups were answered"
            );
        }
    }
});
