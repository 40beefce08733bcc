//! PASSDSS-3DES-1's DH, exchange hash, session keys, HMAC and 3DES-CBC (docs/tsp-wire.md §3.5).

use base64::Engine as _;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use des::TdesEde3;
use hmac::{Hmac, KeyInit as _, Mac as _};
use num_bigint::BigUint;
use num_traits::One as _;
use rand::{CryptoRng, RngCore};
use sha1::{Digest as _, Sha1};
use zeroize::{Zeroize as _, Zeroizing};

use super::encoding::{put_bn, put_string};
use super::{BLOCK, DH_P, DH_SECRET_BYTES, MAC_LEN, MAX_Q_BYTES};
use crate::sasl::{B64_LENIENT, SaslError};
use crate::secret::Secret;

pub(super) fn sha1(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// `1 < v < p-1`: rejects the trivial DH values (group 2's p is a safe prime, so the only small
/// subgroup is {1, p-1}).
pub(super) fn dh_value_ok(v: &BigUint) -> bool {
    let p = &*DH_P;
    *v > BigUint::one() && v + 1u32 < *p
}

pub(super) fn random_below_bits(rng: &mut (impl RngCore + CryptoRng), bytes: usize) -> BigUint {
    let mut buf = Zeroizing::new(vec![0u8; bytes]);
    rng.fill_bytes(&mut buf);
    BigUint::from_bytes_be(&buf)
}

/// A random DH exponent ≥ 2.
pub(super) fn random_dh_secret(rng: &mut (impl RngCore + CryptoRng)) -> BigUint {
    loop {
        let x = random_below_bits(rng, DH_SECRET_BYTES);
        if x > BigUint::one() {
            return x;
        }
    }
}

/// A random value in `[1, q-1]` (64 extra bits make the modulo bias negligible).
pub(super) fn random_mod_q(rng: &mut (impl RngCore + CryptoRng), q: &BigUint) -> BigUint {
    if *q <= BigUint::from(2u32) {
        return BigUint::one();
    }
    let bytes = usize::try_from(q.bits().div_ceil(8)).unwrap_or(MAX_Q_BYTES) + 8;
    random_below_bits(rng, bytes) % (q - 1u32) + 1u32
}

/// Session keys for the client→server direction (the only one gogoc computes).
#[cfg_attr(any(test, feature = "fuzzing"), derive(Clone))]
pub(super) struct Keys {
    pub(super) iv: [u8; 8],
    pub(super) key: [u8; 24],
    pub(super) int: [u8; 20],
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.iv.zeroize();
        self.key.zeroize();
        self.int.zeroize();
    }
}

/// `Hbuf = msg1 ‖ u32(pklength) ‖ PK-blob ‖ bn(Y) ‖ ssecmask ‖ sbuflen(3)`.
pub(super) fn hbuf(msg1: &[u8], blob: &[u8], dh_y: &BigUint, ssecmask: u8, sbuflen: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg1.len() + blob.len() + 150);
    out.extend_from_slice(msg1);
    put_string(&mut out, blob);
    put_bn(&mut out, dh_y);
    out.push(ssecmask);
    out.extend_from_slice(sbuflen.to_be_bytes().get(1..).unwrap_or_default());
    out
}

/// `H = SHA1(Hbuf ‖ bn(K))`.
pub(super) fn exchange_hash(hbuf: &[u8], k_enc: &[u8]) -> [u8; 20] {
    sha1(&[hbuf, k_enc])
}

pub(super) fn derive_keys(k_enc: &[u8], h: &[u8; 20]) -> Keys {
    let mut iv_full = sha1(&[k_enc, b"A", h]);
    let int = sha1(&[k_enc, b"E", h]);
    let mut k1 = sha1(&[k_enc, b"C", h]);
    let mut k2 = sha1(&[k_enc, &k1]);
    let mut keys = Keys {
        iv: [0; 8],
        key: [0; 24],
        int,
    };
    for (dst, src) in keys.iv.iter_mut().zip(iv_full) {
        *dst = src;
    }
    for (dst, src) in keys.key.iter_mut().zip(k1.iter().chain(k2.iter())) {
        *dst = *src;
    }
    iv_full.zeroize();
    k1.zeroize();
    k2.zeroize();
    keys
}

/// `J = ssecmask ‖ 00 00 00 ‖ string(password)` (client max buffer 0, as gogoc sends).
pub(super) fn build_j(ssecmask: u8, password: &Secret) -> Zeroizing<Vec<u8>> {
    let pass = password.expose().as_bytes();
    let mut j = Zeroizing::new(Vec::with_capacity(8 + pass.len() + MAC_LEN + BLOCK));
    j.extend_from_slice(&[ssecmask, 0, 0, 0]);
    put_string(&mut j, pass);
    j
}

/// `HMAC-SHA1(cs-int, Hbuf ‖ J[0..4])` — gogoc MACs only the first four bytes of J.
pub(super) fn client_mac(int: &[u8; 20], hbuf: &[u8], j_head: &[u8]) -> Hmac<Sha1> {
    let mut mac = match Hmac::<Sha1>::new_from_slice(int) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm cannot run.
        Err(_) => Hmac::<Sha1>::new(&Default::default()),
    };
    mac.update(hbuf);
    mac.update(j_head);
    mac
}

pub(super) type TdesCbcEnc = cbc::Encryptor<TdesEde3>;
pub(super) type TdesCbcDec = cbc::Decryptor<TdesEde3>;

/// 3DES-EDE3-CBC with PKCS#7 padding.
pub(super) fn cbc_encrypt(keys: &Keys, plain: &[u8]) -> Vec<u8> {
    // Padded and encrypted in place in the returned buffer: no plaintext copy is left behind.
    TdesCbcEnc::new(&keys.key.into(), &keys.iv.into()).encrypt_padded_vec::<Pkcs7>(plain)
}

/// 3DES-EDE3-CBC decryption with strict PKCS#7 padding removal.
pub(super) fn cbc_decrypt(keys: &Keys, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>, SaslError> {
    if ct.is_empty() || !ct.len().is_multiple_of(BLOCK) {
        return Err(SaslError::MalformedResponse(
            "encrypted message is not a whole number of 3DES blocks",
        ));
    }
    let mut out = Zeroizing::new(ct.to_vec());
    let body_len = TdesCbcDec::new(&keys.key.into(), &keys.iv.into())
        .decrypt_padded::<Pkcs7>(&mut out)
        .map_err(|_| SaslError::BadPadding)?
        .len();
    out.truncate(body_len);
    Ok(out)
}

pub(super) fn is_b64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')
}

/// The start of a base64 text at the front of `buf`, for framing a message that has no
/// terminator (PASSDSS msg1 and msg2 over TCP).
pub(super) struct B64Prefix {
    /// What the whole groups of data characters decode to, up to the first padding character
    /// (and at most `max_chars` characters).
    pub(super) raw: Vec<u8>,
    /// How many characters of `buf` belong to the text: base64 characters, up to the end of
    /// the group that the first padding character closes.
    pub(super) len: usize,
    /// The text cannot grow: its padded group is complete, or a byte after it arrived.
    pub(super) ended: bool,
}

impl B64Prefix {
    /// Nothing after the first padding character is decoded, and nothing after its group
    /// counts: a message's end is found from its own characters, whatever followed it in
    /// the same read.
    pub(super) fn read(buf: &[u8], max_chars: usize) -> Self {
        let run = buf.iter().position(|&b| !is_b64_char(b)).unwrap_or(buf.len());
        let data = buf[..run].iter().position(|&b| b == b'=').unwrap_or(run);
        let (len, padded) = if data < run {
            let group_end = data / 4 * 4 + 4;
            (run.min(group_end), run >= group_end)
        } else {
            (run, false)
        };
        let groups = data.min(max_chars) / 4 * 4;
        // Whole groups of data characters always decode.
        let raw = B64_LENIENT.decode(&buf[..groups]).unwrap_or_default();
        Self {
            raw,
            len,
            ended: padded || len < buf.len(),
        }
    }
}

/// Length of the base64 text (padded) for `raw` bytes.
pub(super) fn b64_len(raw: usize) -> usize {
    raw.div_ceil(3) * 4
}
