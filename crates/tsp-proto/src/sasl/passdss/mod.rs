//! PASSDSS-3DES-1 as gogoc implements it (docs/tsp-wire.md §3.5, §3.6), client and server.
//!
//! The exchange: the client sends its Diffie-Hellman value (Oakley group 2); the broker answers
//! with its DSA host key, its DH value and a DSA signature over the exchange hash H; the client
//! checks the host key (trust on first use, done by the caller with [`check_known_hosts`]),
//! verifies the signature and sends the password 3DES-CBC encrypted under keys derived from
//! the shared secret.
//!
//! gogoc details reproduced here: bignums are encoded WITHOUT the SSH sign byte, base64 has no
//! line breaks and no terminator, the DSA signature is over the 20-byte H itself (no second
//! hash), padding is PKCS#7, and the client's maximum buffer is sent as 0.
//!
//! DSA arithmetic is done with `num-bigint` (the formulas are short, and the test vector needs a
//! fixed nonce k); the `dsa` crate is used only to generate domain parameters (p, q, g). Neither
//! is constant-time; the protocol (1024-bit DSA, 3DES) is legacy in any case.

mod client;
mod crypto;
mod encoding;
mod hostkey;
mod server;
#[cfg(test)]
mod tests;

use std::sync::LazyLock;

use num_bigint::BigUint;

pub use client::{ClientExchange, ServerMessage, parse_server_message};
pub use encoding::{put_bn, put_string, put_u32};
pub use hostkey::{HostKey, HostKeyPair, PublicHostKey, Trust, check_known_hosts, known_hosts_line};
pub use server::{ServerExchange, msg1_len};

/// RFC 2409 Oakley group 2 (1024-bit MODP) prime; the generator is 2.
const DH_P_HEX: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF";
static DH_P: LazyLock<BigUint> = LazyLock::new(|| BigUint::parse_bytes(DH_P_HEX.as_bytes(), 16).unwrap_or_default());
const DH_G: u32 = 2;
/// Private DH exponents: 256 random bits, twice the ~80-bit strength of the group.
const DH_SECRET_BYTES: usize = 32;
/// DH values are at most 1024 bits; allow one byte of slack (1024 + 8 bits).
const MAX_DH_BYTES: usize = 129;
/// DSA p may be up to 3072 bits.
const MAX_DSA_BYTES: usize = 384;
/// DSA q (and so r, s) is at most 256 bits.
const MAX_Q_BYTES: usize = 32;
/// gogoc's sanity checks on the server message.
const MIN_PKLENGTH: u32 = 240;
const MIN_SIGLENGTH: u32 = 59;
const SSH_DSS: &[u8] = b"ssh-dss";
/// Security-layer mask the broker offers: bit 0 = no security layer.
const SSECMASK_NONE: u8 = 0x01;
/// r and s are left-padded to this width so siglength is always ≥ 59 (4+7+4+20+4+20).
const SIG_PART_MIN: usize = 20;
const BLOCK: usize = 8;
const MAC_LEN: usize = 20;
