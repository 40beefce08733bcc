//! PASSDSS-3DES-1, client side: msg1, the server message's checks, msg2 (docs/tsp-wire.md §3.5).

use std::fmt;

use hmac::Mac as _;
use num_bigint::BigUint;
use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use super::crypto::{
    build_j, cbc_encrypt, client_mac, derive_keys, dh_value_ok, exchange_hash, hbuf, random_dh_secret,
};
use super::encoding::{Reader, bn_encoded, put_bn, put_string, put_u32};
use super::hostkey::{HostKey, PublicHostKey};
use super::{DH_G, DH_P, MAX_DH_BYTES, MAX_Q_BYTES, MIN_PKLENGTH, MIN_SIGLENGTH, SSH_DSS};
use crate::sasl::{SaslError, b64_encode, decode_wire};
use crate::secret::Secret;

/// Client side of one exchange, between sending msg1 and sending msg2.
pub struct ClientExchange {
    x: BigUint,
    msg1: Vec<u8>,
    user: String,
}

impl fmt::Debug for ClientExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientExchange")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl ClientExchange {
    /// Starts an exchange with a fresh DH secret; returns the base64 msg1 to send (no
    /// terminator) right after `AUTHENTICATE PASSDSS-3DES-1\r\n\0`.
    pub fn start(user: &str, rng: &mut (impl RngCore + CryptoRng)) -> (Self, Vec<u8>) {
        Self::start_with_secret(user, &random_dh_secret(rng))
    }

    /// [`ClientExchange::start`] with a given DH secret `x` (test vectors only).
    pub fn start_with_secret(user: &str, x: &BigUint) -> (Self, Vec<u8>) {
        let dh_x = BigUint::from(DH_G).modpow(x, &DH_P);
        let mut msg1 = Vec::with_capacity(user.len() + 150);
        put_u32(&mut msg1, 0); // empty authorization identity
        put_string(&mut msg1, user.as_bytes());
        put_bn(&mut msg1, &dh_x);
        let b64 = b64_encode(&msg1).into_bytes();
        let ex = Self {
            x: x.clone(),
            msg1,
            user: user.to_owned(),
        };
        (ex, b64)
    }

    /// The user name this exchange authenticates.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// After the caller accepted `msg.host_key` ([`check_known_hosts`]): derives the shared
    /// secret, verifies the broker's signature over H and returns the base64 msg2 (encrypted
    /// password; no terminator).
    pub fn finish(self, msg: &ServerMessage, password: &Secret) -> Result<Vec<u8>, SaslError> {
        if !dh_value_ok(&msg.dh_public) {
            return Err(SaslError::BadDhValue);
        }
        let k = msg.dh_public.modpow(&self.x, &DH_P);
        if !dh_value_ok(&k) {
            return Err(SaslError::BadDhValue);
        }
        let k_enc = Zeroizing::new(bn_encoded(&k));
        let hb = hbuf(
            &self.msg1,
            &msg.host_key.blob,
            &msg.dh_public,
            msg.ssecmask,
            msg.sbuflen,
        );
        let h = exchange_hash(&hb, &k_enc);
        if !msg.host_key.public.verify(&h, &msg.r, &msg.s) {
            return Err(SaslError::BadSignature);
        }
        let keys = derive_keys(&k_enc, &h);
        let mut m = build_j(msg.ssecmask, password);
        let mac = client_mac(&keys.int, &hb, m.get(..4).unwrap_or_default());
        m.extend_from_slice(&mac.finalize().into_bytes());
        Ok(b64_encode(&cbc_encrypt(&keys, &m)).into_bytes())
    }
}

/// The broker's message as parsed by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerMessage {
    /// The broker's host key (check it with [`check_known_hosts`] before finishing).
    pub host_key: HostKey,
    /// The broker's DH public value Y.
    pub dh_public: BigUint,
    /// Security layers offered (echoed back by the client).
    pub ssecmask: u8,
    /// Server maximum buffer (24 bits).
    pub sbuflen: u32,
    /// Signature r.
    pub r: BigUint,
    /// Signature s.
    pub s: BigUint,
}

/// Parses the broker's base64 message (a trailing CRLF is tolerated).
pub fn parse_server_message(b64: &[u8]) -> Result<ServerMessage, SaslError> {
    let raw = decode_wire(b64)?;
    let mut rd = Reader::new(&raw, SaslError::MalformedServerMessage);
    let pklength = rd.u32("truncated before pklength")?;
    if pklength < MIN_PKLENGTH {
        return Err(SaslError::HostKeyTooShort(pklength));
    }
    let blob = rd.take(
        usize::try_from(pklength).unwrap_or(usize::MAX),
        "host key extends past the message",
    )?;
    let public = PublicHostKey::from_blob(blob)?;
    let dh_public = rd.bn(MAX_DH_BYTES, "the broker's DH value")?;
    if !dh_value_ok(&dh_public) {
        return Err(SaslError::BadDhValue);
    }
    let ssecmask = rd.u8("truncated before ssecmask")?;
    let sbuf = rd.take(3, "truncated before sbuflen")?;
    let sbuflen = sbuf.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
    let siglength = rd.u32("truncated before siglength")?;
    if siglength < MIN_SIGLENGTH {
        return Err(SaslError::SignatureTooShort(siglength));
    }
    let sig = rd.take(
        usize::try_from(siglength).unwrap_or(usize::MAX),
        "signature extends past the message",
    )?;
    rd.finish("trailing bytes after the signature")?;
    let mut sr = Reader::new(sig, SaslError::MalformedServerMessage);
    if sr.string("truncated signature type")? != SSH_DSS {
        return Err(SaslError::MalformedServerMessage("signature type is not ssh-dss"));
    }
    let r = sr.bn(MAX_Q_BYTES, "signature value r")?;
    let s = sr.bn(MAX_Q_BYTES, "signature value s")?;
    sr.finish("trailing bytes in the signature")?;
    Ok(ServerMessage {
        host_key: HostKey {
            public,
            blob: blob.to_vec(),
        },
        dh_public,
        ssecmask,
        sbuflen,
        r,
        s,
    })
}
