//! PASSDSS-3DES-1, broker side: msg1, the signed reply, msg2's decryption (docs/tsp-wire.md §3.5).

use std::fmt;

use cbc::cipher::{Block, BlockModeDecrypt, KeyIvInit};
use hmac::Mac as _;
use num_bigint::BigUint;
use rand::{CryptoRng, RngCore};
use zeroize::{Zeroize as _, Zeroizing};

use super::crypto::{
    B64Prefix, Keys, TdesCbcDec, b64_len, cbc_decrypt, client_mac, derive_keys, dh_value_ok, exchange_hash, hbuf,
    random_dh_secret, random_mod_q,
};
use super::encoding::{Reader, bn_encoded, put_bn, put_bn_padded, put_string};
use super::hostkey::HostKeyPair;
use super::{BLOCK, DH_G, DH_P, MAC_LEN, MAX_DH_BYTES, SIG_PART_MIN, SSECMASK_NONE, SSH_DSS};
use crate::sasl::{MAX_MESSAGE, MAX_PASSWORD, MAX_USER, SaslError, b64_encode, decode_wire};
use crate::secret::Secret;

/// Broker side of one exchange, between sending the server message and receiving msg2.
#[cfg_attr(any(test, feature = "fuzzing"), derive(Clone))]
pub struct ServerExchange {
    user: String,
    hbuf: Vec<u8>,
    keys: Keys,
    ssecmask: u8,
}

impl fmt::Debug for ServerExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerExchange")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// For a TCP broker: given the bytes received after `AUTHENTICATE PASSDSS-3DES-1\r\n\0`
/// (base64, no terminator), the length of msg1 once it is complete. Also returns a length as
/// soon as the data is known to be invalid, so the caller hands it to
/// [`ServerExchange::respond`], which reports the error, instead of waiting.
///
/// Every answer depends only on the message's own characters, never on what followed them
/// in the same read: a TCP broker must decide the same however the stream was cut (found by
/// fuzzing, with an unpadded message followed by NULs and the next message).
pub fn msg1_len(buf: &[u8]) -> Option<usize> {
    let text = B64Prefix::read(buf, MAX_MESSAGE);
    // The text as far as it goes: what respond() is given when it cannot be a message.
    let invalid = Some(text.len);
    let mut rd = Reader::new(&text.raw, SaslError::MalformedResponse);
    let mut need = 0usize;
    for bound in [MAX_USER, MAX_USER, MAX_MESSAGE] {
        let Ok(n) = rd.len("") else {
            // header not all here yet
            return if text.ended || buf.len() > MAX_MESSAGE {
                invalid
            } else {
                None
            };
        };
        if n > bound {
            return invalid;
        }
        need += 4 + n;
        if rd.take(n, "").is_err() {
            // Skip what is present of this field; later fields are not here yet.
            rd = Reader::new(&[], SaslError::MalformedResponse);
        }
    }
    // Whether those characters are base64 that decodes is the parser's to say.
    let total = b64_len(need);
    if text.len >= total {
        Some(total)
    } else if text.ended && unpadded_bytes(text.len) >= need {
        // Unpadded base64 that holds every byte is a whole message too (respond() takes it).
        Some(text.len)
    } else if text.ended || buf.len() > MAX_MESSAGE {
        invalid
    } else {
        None
    }
}

/// The bytes `chars` base64 characters without padding decode to.
fn unpadded_bytes(chars: usize) -> usize {
    chars * 3 / 4
}

impl ServerExchange {
    /// Answers msg1 (base64, CRLF tolerated) with a fresh DH secret and DSA nonce. Returns the
    /// exchange state, the user name the client claims, and the base64 server message (send it
    /// without a terminator).
    pub fn respond(
        msg1_b64: &[u8],
        key: &HostKeyPair,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Self, String, Vec<u8>), SaslError> {
        let dh_secret = random_dh_secret(rng);
        let prep = Prepared::new(msg1_b64, key, &dh_secret)?;
        // r = 0 or s = 0 happens with probability ~2^-160; just draw another k.
        loop {
            let k = random_mod_q(rng, &key.public.q);
            if let Some(sig) = key.sign(&prep.h, &k) {
                return Ok(prep.into_reply(key, &sig));
            }
        }
    }

    /// [`ServerExchange::respond`] with a given DH secret `y` and DSA nonce `k` (test vectors).
    pub fn respond_with(
        msg1_b64: &[u8],
        key: &HostKeyPair,
        y: &BigUint,
        k: &BigUint,
    ) -> Result<(Self, String, Vec<u8>), SaslError> {
        let prep = Prepared::new(msg1_b64, key, y)?;
        let sig = key
            .sign(&prep.h, k)
            .ok_or(SaslError::BadKeyFile("DSA nonce k unusable"))?;
        Ok(prep.into_reply(key, &sig))
    }

    /// The user name the client claimed in msg1.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// For a TCP broker: the length of msg2 at the start of `buf` once it is complete. The
    /// ciphertext length is learnt by decrypting the first block (it holds the password
    /// length). Returns `Some(buf.len())` as soon as the data is known to be invalid.
    pub fn msg2_complete(&self, buf: &[u8]) -> Option<usize> {
        let text = B64Prefix::read(buf, 12);
        // As in msg1_len: decided from the message's own characters only.
        let invalid = Some(text.len);
        let Some(first) = text.raw.get(..BLOCK) else {
            return if text.ended { invalid } else { None };
        };
        let cblock: [u8; BLOCK] = first.try_into().ok()?;
        let mut blk = Block::<TdesCbcDec>::from(cblock);
        TdesCbcDec::new(&self.keys.key.into(), &self.keys.iv.into()).decrypt_block(&mut blk);
        let mut plain: [u8; BLOCK] = blk.into();
        let pass_len = plain
            .get(4..8)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(u32::MAX, u32::from_be_bytes);
        plain.zeroize();
        let pass_len = usize::try_from(pass_len).unwrap_or(usize::MAX);
        if pass_len > MAX_PASSWORD {
            return invalid;
        }
        let body = 8 + pass_len + MAC_LEN;
        let ct_len = body / BLOCK * BLOCK + BLOCK;
        let total = b64_len(ct_len);
        if text.len >= total {
            Some(total)
        } else if text.ended && unpadded_bytes(text.len) >= ct_len {
            Some(text.len)
        } else if text.ended {
            invalid
        } else {
            None
        }
    }

    /// Decrypts msg2 (base64, CRLF tolerated), checks the PKCS#7 padding, the HMAC and the
    /// security layer, then asks `check_password(user, password)`.
    pub fn verify(self, msg2_b64: &[u8], check_password: impl FnOnce(&str, &Secret) -> bool) -> Result<(), SaslError> {
        let ct = decode_wire(msg2_b64)?;
        let plain = cbc_decrypt(&self.keys, &ct)?;
        let mut rd = Reader::new(&plain, SaslError::MalformedResponse);
        let head = rd.take(4, "decrypted message too short")?;
        let pass_len = rd.len("decrypted message too short")?;
        if pass_len > MAX_PASSWORD {
            return Err(SaslError::PasswordTooLong);
        }
        let pass = rd.take(pass_len, "password extends past the message")?;
        let tag = rd.take(MAC_LEN, "decrypted message lacks the HMAC")?;
        rd.finish("trailing bytes after the HMAC")?;
        client_mac(&self.keys.int, &self.hbuf, head)
            .verify_slice(tag)
            .map_err(|_| SaslError::BadMac)?;
        if head.first() != Some(&self.ssecmask) {
            return Err(SaslError::BadSecurityLayer);
        }
        let pass = std::str::from_utf8(pass).map_err(|_| SaslError::NotUtf8("password"))?;
        let secret = Secret::new(pass);
        if check_password(&self.user, &secret) {
            Ok(())
        } else {
            Err(SaslError::WrongPassword)
        }
    }
}

/// Server state after msg1 and the DH computation, before signing.
pub(super) struct Prepared {
    user: String,
    hbuf: Vec<u8>,
    dh_public: BigUint,
    k_enc: Zeroizing<Vec<u8>>,
    h: [u8; 20],
}

impl Prepared {
    fn new(msg1_b64: &[u8], key: &HostKeyPair, dh_secret: &BigUint) -> Result<Self, SaslError> {
        let msg1 = decode_wire(msg1_b64)?;
        let mut rd = Reader::new(&msg1, SaslError::MalformedResponse);
        let authz = rd.string("first message truncated (authorization name)")?;
        let user = rd.string("first message truncated (user name)")?;
        let dh_x = rd.bn(MAX_DH_BYTES, "the client's DH value")?;
        rd.finish("trailing bytes after the client's first message")?;
        if user.is_empty() || user.len() > MAX_USER {
            return Err(SaslError::BadUserLength);
        }
        if !authz.is_empty() && authz != user {
            return Err(SaslError::MalformedResponse(
                "authorization name differs from the user name",
            ));
        }
        let user = std::str::from_utf8(user)
            .map_err(|_| SaslError::NotUtf8("user name"))?
            .to_owned();
        if !dh_value_ok(&dh_x) {
            return Err(SaslError::BadDhValue);
        }
        let dh_public = BigUint::from(DH_G).modpow(dh_secret, &DH_P);
        let k = dh_x.modpow(dh_secret, &DH_P);
        if !dh_value_ok(&dh_public) || !dh_value_ok(&k) {
            return Err(SaslError::BadDhValue);
        }
        let k_enc = Zeroizing::new(bn_encoded(&k));
        let hbuf = hbuf(&msg1, &key.public.blob(), &dh_public, SSECMASK_NONE, 0);
        let h = exchange_hash(&hbuf, &k_enc);
        Ok(Self {
            user,
            hbuf,
            dh_public,
            k_enc,
            h,
        })
    }

    fn into_reply(self, key: &HostKeyPair, (r, s): &(BigUint, BigUint)) -> (ServerExchange, String, Vec<u8>) {
        let width = SIG_PART_MIN.max(usize::try_from(key.public.q.bits().div_ceil(8)).unwrap_or(0));
        let mut sig = Vec::with_capacity(4 + SSH_DSS.len() + 8 + 2 * width);
        put_string(&mut sig, SSH_DSS);
        put_bn_padded(&mut sig, r, width);
        put_bn_padded(&mut sig, s, width);
        let mut out = Vec::with_capacity(700);
        put_string(&mut out, &key.public.blob());
        put_bn(&mut out, &self.dh_public);
        out.extend_from_slice(&[SSECMASK_NONE, 0, 0, 0]);
        put_string(&mut out, &sig);
        let keys = derive_keys(&self.k_enc, &self.h);
        let user = self.user.clone();
        let ex = ServerExchange {
            user: self.user,
            hbuf: self.hbuf,
            keys,
            ssecmask: SSECMASK_NONE,
        };
        (ex, user, b64_encode(&out).into_bytes())
    }
}
