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

use std::fmt;
use std::sync::LazyLock;

use base64::Engine as _;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{Block, BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use des::TdesEde3;
use hmac::{Hmac, KeyInit as _, Mac as _};
use num_bigint::BigUint;
use num_traits::{One as _, Zero as _};
use rand::{CryptoRng, RngCore};
use sha1::{Digest as _, Sha1};
use zeroize::{Zeroize as _, Zeroizing};

use super::{MAX_MESSAGE, MAX_PASSWORD, MAX_USER, SaslError, b64_encode, decode_wire};
use crate::secret::Secret;

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

// ---------------------------------------------------------------------------------------------
// Encoding

/// Appends a 4-byte big-endian integer.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends `u32 length ‖ bytes`.
pub fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_u32(out, len_u32(s.len()));
    out.extend_from_slice(s);
}

/// Appends `u32 length ‖ minimal unsigned big-endian magnitude` — gogoc's bignum encoding,
/// WITHOUT the SSH mpint sign byte (zero is encoded as length 0).
pub fn put_bn(out: &mut Vec<u8>, n: &BigUint) {
    put_string(out, &bn_magnitude(n));
}

fn bn_magnitude(n: &BigUint) -> Vec<u8> {
    if n.is_zero() { Vec::new() } else { n.to_bytes_be() }
}

/// `u32 width ‖ n left-padded with zeros to width` (the broker's r and s).
fn put_bn_padded(out: &mut Vec<u8>, n: &BigUint, width: usize) {
    let mag = bn_magnitude(n);
    let width = width.max(mag.len());
    put_u32(out, len_u32(width));
    out.resize(out.len() + (width - mag.len()), 0);
    out.extend_from_slice(&mag);
}

/// Every length written here is far below 4 GiB; saturate instead of panicking anyway.
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn bn_encoded(n: &BigUint) -> Vec<u8> {
    let mut out = Vec::new();
    put_bn(&mut out, n);
    out
}

/// Bounds-checked reader: every length is checked against the bytes actually present before
/// anything is sliced, and nothing is allocated from a claimed length.
struct Reader<'a> {
    buf: &'a [u8],
    err: fn(&'static str) -> SaslError,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], err: fn(&'static str) -> SaslError) -> Self {
        Self { buf, err }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SaslError> {
        let (head, tail) = self.buf.split_at_checked(n).ok_or_else(|| (self.err)(what))?;
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, SaslError> {
        Ok(self.take(1, what)?.first().copied().unwrap_or(0))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, SaslError> {
        let b = self.take(4, what)?;
        let arr: [u8; 4] = b.try_into().map_err(|_| (self.err)(what))?;
        Ok(u32::from_be_bytes(arr))
    }

    fn len(&mut self, what: &'static str) -> Result<usize, SaslError> {
        usize::try_from(self.u32(what)?).map_err(|_| (self.err)(what))
    }

    fn string(&mut self, what: &'static str) -> Result<&'a [u8], SaslError> {
        let n = self.len(what)?;
        self.take(n, what)
    }

    /// A bignum whose significant magnitude is at most `max` bytes (leading zeros tolerated,
    /// as BN_bin2bn does).
    fn bn(&mut self, max: usize, what: &'static str) -> Result<BigUint, SaslError> {
        let raw = self.string(what)?;
        let first = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
        let mag = raw.get(first..).unwrap_or_default();
        if mag.len() > max {
            return Err(SaslError::OutOfBounds(what));
        }
        Ok(BigUint::from_bytes_be(mag))
    }

    fn finish(&self, what: &'static str) -> Result<(), SaslError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err((self.err)(what))
        }
    }
}

fn sha1(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// `1 < v < p-1`: rejects the trivial DH values (group 2's p is a safe prime, so the only small
/// subgroup is {1, p-1}).
fn dh_value_ok(v: &BigUint) -> bool {
    let p = &*DH_P;
    *v > BigUint::one() && v + 1u32 < *p
}

fn random_below_bits(rng: &mut (impl RngCore + CryptoRng), bytes: usize) -> BigUint {
    let mut buf = Zeroizing::new(vec![0u8; bytes]);
    rng.fill_bytes(&mut buf);
    BigUint::from_bytes_be(&buf)
}

/// A random DH exponent ≥ 2.
fn random_dh_secret(rng: &mut (impl RngCore + CryptoRng)) -> BigUint {
    loop {
        let x = random_below_bits(rng, DH_SECRET_BYTES);
        if x > BigUint::one() {
            return x;
        }
    }
}

/// A random value in `[1, q-1]` (64 extra bits make the modulo bias negligible).
fn random_mod_q(rng: &mut (impl RngCore + CryptoRng), q: &BigUint) -> BigUint {
    if *q <= BigUint::from(2u32) {
        return BigUint::one();
    }
    let bytes = usize::try_from(q.bits().div_ceil(8)).unwrap_or(MAX_Q_BYTES) + 8;
    random_below_bits(rng, bytes) % (q - 1u32) + 1u32
}

// ---------------------------------------------------------------------------------------------
// Host keys

/// A DSA public host key (`ssh-dss`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicHostKey {
    /// Prime modulus.
    pub p: BigUint,
    /// Subgroup order.
    pub q: BigUint,
    /// Subgroup generator.
    pub g: BigUint,
    /// Public value g^x mod p.
    pub y: BigUint,
}

impl PublicHostKey {
    /// The PK blob `string("ssh-dss") ‖ bn(p) ‖ bn(q) ‖ bn(g) ‖ bn(y)` with gogoc's minimal
    /// bignums (so a 1024-bit p is 0x80 bytes, not OpenSSH's 0x81).
    pub fn blob(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_string(&mut out, SSH_DSS);
        put_bn(&mut out, &self.p);
        put_bn(&mut out, &self.q);
        put_bn(&mut out, &self.g);
        put_bn(&mut out, &self.y);
        out
    }

    /// Parses and sanity-checks a PK blob (leading zeros in the bignums are tolerated).
    pub fn from_blob(blob: &[u8]) -> Result<Self, SaslError> {
        let mut rd = Reader::new(blob, SaslError::BadHostKey);
        if rd.string("truncated key type")? != SSH_DSS {
            return Err(SaslError::BadHostKey("key type is not ssh-dss"));
        }
        let key = Self {
            p: rd.bn(MAX_DSA_BYTES, "DSA prime p")?,
            q: rd.bn(MAX_Q_BYTES, "DSA subgroup order q")?,
            g: rd.bn(MAX_DSA_BYTES, "DSA generator g")?,
            y: rd.bn(MAX_DSA_BYTES, "DSA public value y")?,
        };
        rd.finish("trailing bytes in the key")?;
        key.validate()?;
        Ok(key)
    }

    /// Domain-parameter checks; after them every modulus used is non-zero.
    fn validate(&self) -> Result<(), SaslError> {
        let one = BigUint::one();
        let (p, q, g, y) = (&self.p, &self.q, &self.g, &self.y);
        if !(1024..=3072).contains(&p.bits()) || !p.bit(0) {
            return Err(SaslError::BadHostKey("prime p must be odd and have 1024 to 3072 bits"));
        }
        if !(160..=256).contains(&q.bits()) {
            return Err(SaslError::BadHostKey("subgroup order q must have 160 to 256 bits"));
        }
        if !((p - 1u32) % q).is_zero() {
            return Err(SaslError::BadHostKey("q does not divide p-1"));
        }
        if *g <= one || g >= p || !g.modpow(q, p).is_one() {
            return Err(SaslError::BadHostKey("generator g is not of order q"));
        }
        if *y <= one || y >= p || !y.modpow(q, p).is_one() {
            return Err(SaslError::BadHostKey("public value y is not in the subgroup"));
        }
        Ok(())
    }

    /// DSA verification of `digest` (used directly as the number to sign, like
    /// `DSA_do_verify` on H). Never panics, whatever the fields hold.
    fn verify(&self, digest: &[u8], r: &BigUint, s: &BigUint) -> bool {
        let (p, q) = (&self.p, &self.q);
        if p.is_zero() || q.is_zero() || r.is_zero() || s.is_zero() || r >= q || s >= q {
            return false;
        }
        let Some(w) = s.modinv(q) else {
            return false;
        };
        let z = BigUint::from_bytes_be(digest);
        let u1 = (z * &w) % q;
        let u2 = (r * &w) % q;
        let v = (self.g.modpow(&u1, p) * self.y.modpow(&u2, p)) % p % q;
        v == *r
    }
}

/// The broker's host key as received: parsed, plus the exact blob bytes (hashed into H).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    /// The parsed public key, for [`check_known_hosts`] / [`known_hosts_line`].
    pub public: PublicHostKey,
    /// The PK blob exactly as received.
    pub blob: Vec<u8>,
}

/// Result of looking a host key up in the known-hosts text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The last entry for the host holds this key.
    Known,
    /// No entry for the host: ask the user (or auto-accept with `-y`), then append
    /// [`known_hosts_line`].
    Unknown,
    /// The last entry for the host holds a different key: refuse to connect.
    Mismatch,
}

/// The key-file line gogoc appends: `<host> ssh-dss <base64 blob>\n`, `host` being the
/// configured server string verbatim.
pub fn known_hosts_line(host: &str, key: &PublicHostKey) -> String {
    format!("{host} ssh-dss {}\n", b64_encode(&key.blob()))
}

/// Looks `host` up in the key-file text: every line whose first token is `host` and second is
/// `ssh-dss` is compared with `key`, and the last such line decides. Lines that do not parse
/// are skipped.
pub fn check_known_hosts(text: &str, host: &str, key: &PublicHostKey) -> Trust {
    let mut verdict = Trust::Unknown;
    for line in text.lines() {
        let mut tokens = line.split_whitespace();
        let (Some(h), Some(kind), Some(b64)) = (tokens.next(), tokens.next(), tokens.next()) else {
            continue;
        };
        if h != host || kind != "ssh-dss" {
            continue;
        }
        let Ok(blob) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            continue;
        };
        let Ok(stored) = PublicHostKey::from_blob(&blob) else {
            continue;
        };
        verdict = if stored == *key { Trust::Known } else { Trust::Mismatch };
    }
    verdict
}

/// The broker's DSA host key pair.
#[derive(Clone)]
pub struct HostKeyPair {
    public: PublicHostKey,
    x: BigUint,
}

impl fmt::Debug for HostKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostKeyPair")
            .field("public", &self.public)
            .field("x", &"<redacted>")
            .finish()
    }
}

/// Lets the `dsa` crate (rand_core 0.10) draw from the caller's rand 0.8 generator.
struct RngBridge<'a, R>(&'a mut R);

impl<R: RngCore + CryptoRng> dsa::signature::rand_core::TryRng for RngBridge<'_, R> {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.0.next_u32())
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.0.next_u64())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill_bytes(dst);
        Ok(())
    }
}

impl<R: RngCore + CryptoRng> dsa::signature::rand_core::TryCryptoRng for RngBridge<'_, R> {}

const KEY_FILE_HEADER: &str = "# nm-tsp PASSDSS-3DES-1 broker host key (DSA). Keep private.";
const MAX_KEY_FILE: usize = 16 * 1024;

impl HostKeyPair {
    /// Generates a 1024-bit p / 160-bit q key (what gogoc's pklength ≥ 240 check and the
    /// 20-byte r/s layout expect). Takes seconds in a debug build.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Result<Self, SaslError> {
        // The generated components always validate; a bounded retry avoids both a panic and
        // an endless loop should that ever not hold.
        for _ in 0..4 {
            #[allow(deprecated)] // 1024/160 is weak, but it is what gogoc speaks.
            let size = dsa::KeySize::DSA_1024_160;
            let Ok(c) = dsa::Components::try_generate_from_rng_with_key_size(&mut RngBridge(&mut *rng), size);
            let p = BigUint::from_bytes_be(&c.p().to_be_bytes());
            let q = BigUint::from_bytes_be(&c.q().to_be_bytes());
            let g = BigUint::from_bytes_be(&c.g().to_be_bytes());
            let x = random_mod_q(rng, &q);
            if let Ok(key) = Self::from_private(p, q, g, x) {
                return Ok(key);
            }
        }
        Err(SaslError::BadKeyFile("could not generate a valid DSA key"))
    }

    /// Builds a key pair from domain parameters and the private value, computing and checking
    /// the public value.
    fn from_private(p: BigUint, q: BigUint, g: BigUint, x: BigUint) -> Result<Self, SaslError> {
        if q.is_zero() || p.is_zero() {
            return Err(SaslError::BadKeyFile("zero modulus"));
        }
        if x.is_zero() || x >= q {
            return Err(SaslError::BadKeyFile("private value x out of range"));
        }
        let y = g.modpow(&x, &p);
        let public = PublicHostKey { p, q, g, y };
        public
            .validate()
            .map_err(|_| SaslError::BadKeyFile("invalid DSA parameters"))?;
        Ok(Self { public, x })
    }

    /// The public half (for the key blob and known-hosts lines).
    pub fn public(&self) -> &PublicHostKey {
        &self.public
    }

    /// Text form: a comment line, then one `<label> <lower-case hex>` line for each of
    /// `p`, `q`, `g`, `x` (private) and `y` (public, checked on reading).
    pub fn to_text(&self) -> String {
        let hex = |n: &BigUint| n.to_str_radix(16);
        format!(
            "{KEY_FILE_HEADER}\np {}\nq {}\ng {}\nx {}\ny {}\n",
            hex(&self.public.p),
            hex(&self.public.q),
            hex(&self.public.g),
            hex(&self.x),
            hex(&self.public.y),
        )
    }

    /// Reads [`HostKeyPair::to_text`]'s format. Blank lines and `#` comments are ignored;
    /// `y` is optional but must match when present.
    pub fn from_text(text: &str) -> Result<Self, SaslError> {
        if text.len() > MAX_KEY_FILE {
            return Err(SaslError::BadKeyFile("file too large"));
        }
        let mut vals: [Option<BigUint>; 5] = Default::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (label, hex) = line
                .split_once(char::is_whitespace)
                .ok_or(SaslError::BadKeyFile("line without a value"))?;
            let slot = match label {
                "p" => 0,
                "q" => 1,
                "g" => 2,
                "x" => 3,
                "y" => 4,
                _ => return Err(SaslError::BadKeyFile("unknown label")),
            };
            let hex = hex.trim();
            if hex.is_empty() || hex.len() > MAX_DSA_BYTES * 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(SaslError::BadKeyFile("value is not a hex number"));
            }
            let n =
                BigUint::parse_bytes(hex.as_bytes(), 16).ok_or(SaslError::BadKeyFile("value is not a hex number"))?;
            let entry = vals.get_mut(slot).ok_or(SaslError::BadKeyFile("unknown label"))?;
            if entry.replace(n).is_some() {
                return Err(SaslError::BadKeyFile("duplicate label"));
            }
        }
        let [p, q, g, x, y] = vals;
        let missing = SaslError::BadKeyFile("p, q, g or x missing");
        let key = Self::from_private(
            p.ok_or(missing.clone())?,
            q.ok_or(missing.clone())?,
            g.ok_or(missing.clone())?,
            x.ok_or(missing)?,
        )?;
        if y.is_some_and(|y| y != key.public.y) {
            return Err(SaslError::BadKeyFile("y does not match x"));
        }
        Ok(key)
    }

    /// DSA signature of `digest` (used directly as the number) with nonce `k`; `None` if `k`
    /// is out of range or yields r = 0 or s = 0.
    fn sign(&self, digest: &[u8], k: &BigUint) -> Option<(BigUint, BigUint)> {
        let PublicHostKey { p, q, g, .. } = &self.public;
        if k.is_zero() || k >= q {
            return None;
        }
        let r = g.modpow(k, p) % q;
        if r.is_zero() {
            return None;
        }
        let k_inv = k.modinv(q)?;
        let z = BigUint::from_bytes_be(digest);
        let s = (k_inv * ((z + &self.x * &r) % q)) % q;
        if s.is_zero() {
            return None;
        }
        Some((r, s))
    }
}

// ---------------------------------------------------------------------------------------------
// Exchange hash, keys, cipher

/// Session keys for the client→server direction (the only one gogoc computes).
#[cfg_attr(test, derive(Clone))]
struct Keys {
    iv: [u8; 8],
    key: [u8; 24],
    int: [u8; 20],
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.iv.zeroize();
        self.key.zeroize();
        self.int.zeroize();
    }
}

/// `Hbuf = msg1 ‖ u32(pklength) ‖ PK-blob ‖ bn(Y) ‖ ssecmask ‖ sbuflen(3)`.
fn hbuf(msg1: &[u8], blob: &[u8], dh_y: &BigUint, ssecmask: u8, sbuflen: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg1.len() + blob.len() + 150);
    out.extend_from_slice(msg1);
    put_string(&mut out, blob);
    put_bn(&mut out, dh_y);
    out.push(ssecmask);
    out.extend_from_slice(sbuflen.to_be_bytes().get(1..).unwrap_or_default());
    out
}

/// `H = SHA1(Hbuf ‖ bn(K))`.
fn exchange_hash(hbuf: &[u8], k_enc: &[u8]) -> [u8; 20] {
    sha1(&[hbuf, k_enc])
}

fn derive_keys(k_enc: &[u8], h: &[u8; 20]) -> Keys {
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
fn build_j(ssecmask: u8, password: &Secret) -> Zeroizing<Vec<u8>> {
    let pass = password.expose().as_bytes();
    let mut j = Zeroizing::new(Vec::with_capacity(8 + pass.len() + MAC_LEN + BLOCK));
    j.extend_from_slice(&[ssecmask, 0, 0, 0]);
    put_string(&mut j, pass);
    j
}

/// `HMAC-SHA1(cs-int, Hbuf ‖ J[0..4])` — gogoc MACs only the first four bytes of J.
fn client_mac(int: &[u8; 20], hbuf: &[u8], j_head: &[u8]) -> Hmac<Sha1> {
    let mut mac = match Hmac::<Sha1>::new_from_slice(int) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm cannot run.
        Err(_) => Hmac::<Sha1>::new(&Default::default()),
    };
    mac.update(hbuf);
    mac.update(j_head);
    mac
}

type TdesCbcEnc = cbc::Encryptor<TdesEde3>;
type TdesCbcDec = cbc::Decryptor<TdesEde3>;

/// 3DES-EDE3-CBC with PKCS#7 padding.
fn cbc_encrypt(keys: &Keys, plain: &[u8]) -> Vec<u8> {
    // Padded and encrypted in place in the returned buffer: no plaintext copy is left behind.
    TdesCbcEnc::new(&keys.key.into(), &keys.iv.into()).encrypt_padded_vec::<Pkcs7>(plain)
}

/// 3DES-EDE3-CBC decryption with strict PKCS#7 padding removal.
fn cbc_decrypt(keys: &Keys, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>, SaslError> {
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

fn is_b64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')
}

/// Decodes the whole 4-character groups among the valid base64 characters at the start of
/// `buf`. Returns the decoded bytes and the number of valid characters.
fn decode_prefix(buf: &[u8], max_chars: usize) -> Option<(Vec<u8>, usize)> {
    let valid = buf.iter().position(|&b| !is_b64_char(b)).unwrap_or(buf.len());
    let quads = valid.min(max_chars) / 4 * 4;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(buf.get(..quads)?)
        .ok()?;
    Some((decoded, valid))
}

/// Length of the base64 text (padded) for `raw` bytes.
fn b64_len(raw: usize) -> usize {
    raw.div_ceil(3) * 4
}

// ---------------------------------------------------------------------------------------------
// Client

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

// ---------------------------------------------------------------------------------------------
// Server

/// Broker side of one exchange, between sending the server message and receiving msg2.
#[cfg_attr(test, derive(Clone))]
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
/// (base64, no terminator), the length of msg1 once it is complete. Also returns
/// `Some(buf.len())` as soon as the data is known to be invalid or too long, so the caller
/// hands it to [`ServerExchange::respond`], which reports the error, instead of waiting.
pub fn msg1_len(buf: &[u8]) -> Option<usize> {
    let Some((raw, valid)) = decode_prefix(buf, MAX_MESSAGE) else {
        return Some(buf.len());
    };
    let invalid = Some(buf.len());
    let mut rd = Reader::new(&raw, SaslError::MalformedResponse);
    let mut need = 0usize;
    for bound in [MAX_USER, MAX_USER, MAX_MESSAGE] {
        let Ok(n) = rd.len("") else {
            // header not all here yet
            return if valid < buf.len() || buf.len() > MAX_MESSAGE {
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
    let total = b64_len(need);
    if valid >= total {
        Some(total)
    } else if valid < buf.len() || buf.len() > MAX_MESSAGE {
        invalid
    } else {
        None
    }
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
        let invalid = Some(buf.len());
        let Some((raw, valid)) = decode_prefix(buf, 12) else {
            return invalid;
        };
        let Some(first) = raw.get(..BLOCK) else {
            return if valid < buf.len() { invalid } else { None };
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
        let total = b64_len(body / BLOCK * BLOCK + BLOCK);
        if valid >= total {
            Some(total)
        } else if valid < buf.len() {
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
struct Prepared {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> BigUint {
        BigUint::parse_bytes(s.as_bytes(), 16).unwrap()
    }

    fn hexb(bytes: &[u8]) -> String {
        super::super::hex_lower(bytes)
    }

    fn b64d(s: &[u8]) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

    const P: &str = "92bbf64ddd4de717d0d5e870ec5069db9a724c97db84fcf3a443ed464d612920537b8eaa373800b0d393bf6caf949a50b05fbe926b035269cd1b2c60db7d2ba7793c091ae1cc86e677e6cf487d09298fa63a5983150a1701d0f90edba6c5cd185304a5fa662031ac6e87a1b861cd0a59af88e69374b15b872f3ac3bef6e509dd";
    const Q: &str = "8d6b1f57e2c7be9e6471db7dc662caabad4f729d";
    const G: &str = "1a7a72408fc1df5f3f464f2f3c04d6b0c96aa272617bc4c9ca33ab47810d35910837f104c3f2297b40e1cdec9997865998ec1b3460207e4bf847e1d2782c47a99fc0b3c2357e5ad83740036da4513043731e0a9b72060fcafd0a5438c6eafa482007f39df238f573cc3dc5a33479844ad91472e63c58bccef7f27184e7cba848";
    const X_DSA: &str = "138adcd0fb98f6bbfcacf6d922a1777c78d618c5";
    const Y_DSA: &str = "493199d6344e3c58600e6ad9ed620a7b1457fc604a7e53be5cc21803af5250f8fa8c82e293f70b35b7ee7a72d5f396d42eb8aba5588b0f108803839eb1e394559ce6573e529fb56b36d046e146c9e615f5a95f2c9ccad752b80a622ec935e13a8d1b71a4e3d9a7d5195dd4ef476efac959edcf4c5a8212c6bd14b8e75be7f3db";
    const X_DH: &str = "e6345d116cb6191513a873171a510d0b5969e76a0becf0ba6e674516fff5a2c7";
    const Y_DH: &str = "ab5a5c30becbe261e1fec1ba0f36ce7b036261134c9f5aa65a2c9f2f0ceca1f6";
    const K_DSA: &str = "6230323d2cbb5ebaa6690af0448c17b2b3a280eb";
    const MSG1: &str = "AAAAAAAAAAV1c2VyMQAAAIBP2KT7vXeLqrhjNL+MCe2B3zE0wsK7T6y4D2v3cCFx4QyOx61zyYcF/YXERMA0UmCiit9fkvO+k/+X368mPYXyALuP9xk+m7rcJ+zKSNq+CK3tRjqbGDAT9KztvYtrJHe1ylNAfwAB1abSyhN9L/75/ZhiHvrbxso7KmNCcoOjQA==";
    const SERVER_MSG: &str = "AAABrwAAAAdzc2gtZHNzAAAAgJK79k3dTecX0NXocOxQaduackyX24T886RD7UZNYSkgU3uOqjc4ALDTk79sr5SaULBfvpJrA1JpzRssYNt9K6d5PAka4cyG5nfmz0h9CSmPpjpZgxUKFwHQ+Q7bpsXNGFMEpfpmIDGsboehuGHNClmviOaTdLFbhy86w7725QndAAAAFI1rH1fix76eZHHbfcZiyqutT3KdAAAAgBp6ckCPwd9fP0ZPLzwE1rDJaqJyYXvEycozq0eBDTWRCDfxBMPyKXtA4c3smZeGWZjsGzRgIH5L+Efh0ngsR6mfwLPCNX5a2DdAA22kUTBDcx4Km3IGD8r9ClQ4xur6SCAH853yOPVzzD3FozR5hErZFHLmPFi8zvfycYTny6hIAAAAgEkxmdY0TjxYYA5q2e1iCnsUV/xgSn5TvlzCGAOvUlD4+oyC4pP3CzW37npy1fOW1C64q6VYiw8QiAODnrHjlFWc5lc+Up+1azbQRuFGyeYV9alfLJzK11K4CmIuyTXhOo0bcaTj2afVGV3U70du+slZ7c9MWoISxr0UuOdb5/PbAAAAgO2Lu2K9fcV8waXrY51qfCTNTHGAOxNc6jULCKQqhDQcb1FW5yGYuKu1Jxl9tQNNk8ZzHr0m3ye2F+djoLrSinmMm5gRaDQVEiz0uQHkNp3IDWTHczb72BpF+b4dISLHxbaeSlsJTDnQcH/znNcySP6AeWa7Kqb1p/cWMJ8kcf8ZAQAAAAAAADsAAAAHc3NoLWRzcwAAABQvC0eglbmfzAH1ZvyUZb0quWdcggAAABQyIox7pJ97bnHlg+bmWnvN4ZWSHg==";
    const MSG2: &str = "ZsYKlGeCmcPSUXUrhURNEQiErfoW/DMS1bFaxUQhAFeVSCe2JBzz4A==";
    /// Printed by docs/vectors/passdss_vector.py (keyfile_line).
    const KEYFILE_LINE: &str = "broker.example.net ssh-dss AAAAB3NzaC1kc3MAAACAkrv2Td1N5xfQ1ehw7FBp25pyTJfbhPzzpEPtRk1hKSBTe46qNzgAsNOTv2yvlJpQsF++kmsDUmnNGyxg230rp3k8CRrhzIbmd+bPSH0JKY+mOlmDFQoXAdD5Dtumxc0YUwSl+mYgMaxuh6G4Yc0KWa+I5pN0sVuHLzrDvvblCd0AAAAUjWsfV+LHvp5kcdt9xmLKq61Pcp0AAACAGnpyQI/B318/Rk8vPATWsMlqonJhe8TJyjOrR4ENNZEIN/EEw/Ipe0DhzeyZl4ZZmOwbNGAgfkv4R+HSeCxHqZ/As8I1flrYN0ADbaRRMENzHgqbcgYPyv0KVDjG6vpIIAfznfI49XPMPcWjNHmEStkUcuY8WLzO9/JxhOfLqEgAAACASTGZ1jROPFhgDmrZ7WIKexRX/GBKflO+XMIYA69SUPj6jILik/cLNbfuenLV85bULrirpViLDxCIA4OeseOUVZzmVz5Sn7VrNtBG4UbJ5hX1qV8snMrXUrgKYi7JNeE6jRtxpOPZp9UZXdTvR276yVntz0xaghLGvRS451vn89s=";

    fn vector_key() -> HostKeyPair {
        HostKeyPair::from_private(hex(P), hex(Q), hex(G), hex(X_DSA)).unwrap()
    }

    fn pass_ok(user: &str, pass: &Secret) -> bool {
        user == "user1" && pass.expose() == "pass1"
    }

    /// The vector's server exchange, built once (modpow is slow in debug builds).
    static VECTOR_SERVER: LazyLock<ServerExchange> = LazyLock::new(|| {
        ServerExchange::respond_with(MSG1.as_bytes(), &vector_key(), &hex(Y_DH), &hex(K_DSA))
            .unwrap()
            .0
    });

    #[test]
    fn dh_prime_is_group_2() {
        assert_eq!(DH_P.bits(), 1024);
        assert_eq!(bn_magnitude(&DH_P).len(), 128);
    }

    #[test]
    fn encodings() {
        let mut out = Vec::new();
        put_u32(&mut out, 0x0102_0304);
        put_string(&mut out, b"ab");
        put_bn(&mut out, &BigUint::from(0x80u32));
        put_bn(&mut out, &BigUint::zero());
        assert_eq!(out, [1, 2, 3, 4, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 1, 0x80, 0, 0, 0, 0]);
        let mut padded = Vec::new();
        put_bn_padded(&mut padded, &BigUint::from(0x1234u32), 4);
        assert_eq!(padded, [0, 0, 0, 4, 0, 0, 0x12, 0x34]);
        // leading zeros tolerated on input
        let mut rd = Reader::new(&[0, 0, 0, 3, 0, 0, 7], SaslError::MalformedResponse);
        assert_eq!(rd.bn(1, "x").unwrap(), BigUint::from(7u32));
        let mut rd = Reader::new(&[0, 0, 0, 2, 1, 7], SaslError::MalformedResponse);
        assert_eq!(rd.bn(1, "x"), Err(SaslError::OutOfBounds("x")));
        let mut rd = Reader::new(&[0xff, 0xff, 0xff, 0xff, 1], SaslError::MalformedResponse);
        assert!(rd.string("s").is_err());
    }

    #[test]
    fn vector_11_4() {
        let key = vector_key();
        assert_eq!(key.public.y, hex(Y_DSA));

        let (client, msg1) = ClientExchange::start_with_secret("user1", &hex(X_DH));
        assert_eq!(msg1, MSG1.as_bytes());
        assert_eq!(msg1_len(&msg1), Some(msg1.len()));

        let (server, user, smsg) = ServerExchange::respond_with(&msg1, &key, &hex(Y_DH), &hex(K_DSA)).unwrap();
        assert_eq!(user, "user1");
        assert_eq!(String::from_utf8(smsg.clone()).unwrap(), SERVER_MSG);

        let msg = parse_server_message(&smsg).unwrap();
        assert_eq!(msg.host_key.blob.len(), 431);
        assert_eq!(msg.host_key.public, *key.public());
        assert_eq!(msg.ssecmask, 1);
        assert_eq!(msg.sbuflen, 0);
        assert_eq!(msg.r, hex("2f0b47a095b99fcc01f566fc9465bd2ab9675c82"));
        assert_eq!(msg.s, hex("32228c7ba49f7b6e71e583e6e65a7bcde195921e"));
        // siglength 59: the 4 bytes after ssecmask/sbuflen
        let raw = b64d(&smsg);
        assert_eq!(raw.len(), 4 + 431 + 4 + 128 + 4 + 4 + 59);

        // Intermediate values, computed with the same helpers finish() uses.
        let k = msg.dh_public.modpow(&hex(X_DH), &DH_P);
        assert_eq!(bn_magnitude(&k).len(), 128);
        let k_enc = bn_encoded(&k);
        let hb = hbuf(b64d(&msg1).as_slice(), &msg.host_key.blob, &msg.dh_public, 1, 0);
        let h = exchange_hash(&hb, &k_enc);
        assert_eq!(hexb(&h), "051322a6aec80fc1c756788b5f87a1fb25d462d2");
        let keys = derive_keys(&k_enc, &h);
        assert_eq!(hexb(&keys.iv), "7ee03d581d43fdc1");
        assert_eq!(hexb(&keys.key), "07654ab9a04e63ad90ae3d217c79f81480d7cd87f48e5483");
        assert_eq!(hexb(&keys.int), "b27ec5ea866ca69693677c3f8c00083f4ac5f05d");
        let j = build_j(1, &Secret::from("pass1"));
        assert_eq!(hexb(&j), "01000000000000057061737331");
        let mac = client_mac(&keys.int, &hb, &j[..4]).finalize().into_bytes();
        assert_eq!(hexb(&mac), "f086c4cfc855fca5616d561bbeb5d8464b173cd4");

        let msg2 = client.finish(&msg, &Secret::from("pass1")).unwrap();
        assert_eq!(String::from_utf8(msg2.clone()).unwrap(), MSG2);
        assert_eq!(server.msg2_complete(&msg2), Some(msg2.len()));
        server.verify(&msg2, pass_ok).unwrap();

        assert_eq!(
            known_hosts_line("broker.example.net", key.public()),
            format!("{KEYFILE_LINE}\n")
        );
        assert!(KEYFILE_LINE.starts_with("broker.example.net ssh-dss AAAAB3NzaC1kc3MAAACAkrv2"));
    }

    #[test]
    fn framing_helpers() {
        let msg1 = MSG1.as_bytes();
        for cut in 0..msg1.len() {
            assert_eq!(msg1_len(&msg1[..cut]), None, "cut {cut}");
        }
        assert_eq!(msg1_len(msg1), Some(msg1.len()));
        let mut more = msg1.to_vec();
        more.extend_from_slice(b"\r\n");
        assert_eq!(msg1_len(&more), Some(msg1.len()));
        assert_eq!(msg1_len(b"AAA*"), Some(4));
        // user length 0x10000 > 253: known invalid at once
        assert_eq!(msg1_len(b"AAAAAAABAAA="), Some(12));

        let server = &*VECTOR_SERVER;
        let msg2 = MSG2.as_bytes();
        for cut in 0..msg2.len() {
            assert_eq!(server.msg2_complete(&msg2[..cut]), None, "cut {cut}");
        }
        assert_eq!(server.msg2_complete(msg2), Some(msg2.len()));
        assert_eq!(server.msg2_complete(b"ab!"), Some(3));
    }

    /// Password "abcd": 32 plaintext bytes, so PKCS#7 adds a whole block. Expected value from
    /// passdss_vector.py with only the password changed.
    #[test]
    fn full_padding_block_matches_generator() {
        let (client, _) = ClientExchange::start_with_secret("user1", &hex(X_DH));
        let msg = parse_server_message(SERVER_MSG.as_bytes()).unwrap();
        let msg2 = client.finish(&msg, &Secret::from("abcd")).unwrap();
        assert_eq!(
            String::from_utf8(msg2.clone()).unwrap(),
            "3CLBptkIjGVn1ci/716jNZsDIw8oJ4vGPLEpqXhbY3hsCty6GZkt0A=="
        );
        assert_eq!(VECTOR_SERVER.msg2_complete(&msg2), Some(msg2.len()));
        VECTOR_SERVER
            .clone()
            .verify(&msg2, |u, p| u == "user1" && p.expose() == "abcd")
            .unwrap();
    }

    #[test]
    fn msg2_with_crlf_accepted() {
        let mut msg2 = MSG2.as_bytes().to_vec();
        msg2.extend_from_slice(b"\r\n");
        VECTOR_SERVER.clone().verify(&msg2, pass_ok).unwrap();
    }

    #[test]
    fn wrong_password_rejected() {
        let (client, msg1) = ClientExchange::start_with_secret("user1", &hex(X_DH));
        let msg = parse_server_message(SERVER_MSG.as_bytes()).unwrap();
        let msg2 = client.finish(&msg, &Secret::from("pass2")).unwrap();
        assert_eq!(
            VECTOR_SERVER.clone().verify(&msg2, pass_ok),
            Err(SaslError::WrongPassword)
        );
        assert_eq!(msg1, MSG1.as_bytes());
    }

    #[test]
    fn tampered_msg2_rejected() {
        let mut raw = b64d(MSG2.as_bytes());
        // Flip a bit in the first block: the MAC/J head decrypts differently.
        raw[0] ^= 0x01;
        let err = VECTOR_SERVER
            .clone()
            .verify(b64_encode(&raw).as_bytes(), pass_ok)
            .unwrap_err();
        assert!(
            matches!(
                err,
                SaslError::BadMac
                    | SaslError::BadPadding
                    | SaslError::PasswordTooLong
                    | SaslError::MalformedResponse(_)
            ),
            "{err:?}"
        );
        // Flip the last byte: the padding breaks.
        let mut raw = b64d(MSG2.as_bytes());
        let last = raw.len() - 1;
        raw[last] ^= 0x80;
        assert!(
            VECTOR_SERVER
                .clone()
                .verify(b64_encode(&raw).as_bytes(), pass_ok)
                .is_err()
        );
        assert!(matches!(
            VECTOR_SERVER.clone().verify(b"AAAA", pass_ok),
            Err(SaslError::MalformedResponse(_))
        ));
    }

    #[test]
    fn tampered_server_message_rejected() {
        let raw = b64d(SERVER_MSG.as_bytes());
        // last byte of s, and a byte inside Y
        for pos in [raw.len() - 1, 4 + 431 + 4 + 60] {
            let mut bad = raw.clone();
            bad[pos] ^= 0x01;
            let (client, _) = ClientExchange::start_with_secret("user1", &hex(X_DH));
            let msg = parse_server_message(b64_encode(&bad).as_bytes()).unwrap();
            assert_eq!(
                client.finish(&msg, &Secret::from("pass1")),
                Err(SaslError::BadSignature)
            );
        }
    }

    #[test]
    fn server_message_sanity_checks() {
        let raw = b64d(SERVER_MSG.as_bytes());
        // pklength < 240
        let mut bad = raw.clone();
        bad[..4].copy_from_slice(&239u32.to_be_bytes());
        assert_eq!(
            parse_server_message(b64_encode(&bad).as_bytes()),
            Err(SaslError::HostKeyTooShort(239))
        );
        // siglength < 59: rebuild the signature with unpadded tiny r and s
        let head = 4 + 431 + 4 + 128 + 4;
        let mut bad = raw[..head].to_vec();
        let mut sig = Vec::new();
        put_string(&mut sig, SSH_DSS);
        put_bn(&mut sig, &BigUint::from(1u32));
        put_bn(&mut sig, &BigUint::from(1u32));
        put_string(&mut bad, &sig);
        assert_eq!(
            parse_server_message(b64_encode(&bad).as_bytes()),
            Err(SaslError::SignatureTooShort(21))
        );
        // trailing garbage, truncation, status line, wrong key type
        let mut bad = raw.clone();
        bad.push(0);
        assert!(matches!(
            parse_server_message(b64_encode(&bad).as_bytes()),
            Err(SaslError::MalformedServerMessage(_))
        ));
        assert!(matches!(
            parse_server_message(b64_encode(&raw[..raw.len() - 1]).as_bytes()),
            Err(SaslError::MalformedServerMessage(_))
        ));
        assert!(matches!(
            parse_server_message(b"300 Authentication failed\r\n"),
            Err(SaslError::Refused(_))
        ));
        let mut bad = raw.clone();
        bad[8 + 6] = b'x'; // "ssh-dsx"
        assert_eq!(
            parse_server_message(b64_encode(&bad).as_bytes()),
            Err(SaslError::BadHostKey("key type is not ssh-dss"))
        );
        // trailing CRLF is fine
        let mut ok = SERVER_MSG.as_bytes().to_vec();
        ok.extend_from_slice(b"\r\n");
        assert!(parse_server_message(&ok).is_ok());
    }

    #[test]
    fn bad_dh_values_rejected() {
        let key = vector_key();
        for v in [BigUint::one(), &*DH_P - 1u32, DH_P.clone()] {
            let mut msg1 = Vec::new();
            put_u32(&mut msg1, 0);
            put_string(&mut msg1, b"user1");
            put_bn(&mut msg1, &v);
            let r = ServerExchange::respond(b64_encode(&msg1).as_bytes(), &key, &mut rand::thread_rng());
            assert!(
                matches!(r, Err(SaslError::BadDhValue | SaslError::OutOfBounds(_))),
                "{r:?}"
            );
        }
    }

    #[test]
    fn msg1_checks() {
        let key = vector_key();
        let mut rng = rand::thread_rng();
        let build = |authz: &[u8], user: &[u8]| {
            let mut m = Vec::new();
            put_string(&mut m, authz);
            put_string(&mut m, user);
            put_bn(&mut m, &BigUint::from(12345u32));
            b64_encode(&m).into_bytes()
        };
        assert_eq!(
            ServerExchange::respond(&build(b"", b""), &key, &mut rng).unwrap_err(),
            SaslError::BadUserLength
        );
        assert_eq!(
            ServerExchange::respond(&build(b"", &[b'a'; 254]), &key, &mut rng).unwrap_err(),
            SaslError::BadUserLength
        );
        assert!(matches!(
            ServerExchange::respond(&build(b"x", b"u"), &key, &mut rng),
            Err(SaslError::MalformedResponse(_))
        ));
        assert!(ServerExchange::respond(&build(b"u", b"u"), &key, &mut rng).is_ok());
    }

    #[test]
    fn known_hosts() {
        let key = vector_key();
        let mut other = key.public().clone();
        other.y = other.g.modpow(&BigUint::from(12345u32), &other.p);
        let host = "broker.example.net";
        let line = known_hosts_line(host, key.public());
        let other_line = known_hosts_line(host, &other);

        assert_eq!(check_known_hosts("", host, key.public()), Trust::Unknown);
        assert_eq!(
            check_known_hosts(&line, "broker.example.net:3653", key.public()),
            Trust::Unknown
        );
        assert_eq!(check_known_hosts(&line, host, key.public()), Trust::Known);
        assert_eq!(check_known_hosts(&other_line, host, key.public()), Trust::Mismatch);
        // the last line for the host decides
        let both = format!("{other_line}{line}");
        assert_eq!(check_known_hosts(&both, host, key.public()), Trust::Known);
        let both = format!("{line}{other_line}");
        assert_eq!(check_known_hosts(&both, host, key.public()), Trust::Mismatch);
        // malformed lines and other key types are skipped
        let text =
            format!("{line}{host} ssh-dss AAAA!!!\n{host} ssh-rsa AAAA\n{host}\n\n{host} ssh-dss AAAAB3NzaC1kc3M=\n");
        assert_eq!(check_known_hosts(&text, host, key.public()), Trust::Known);
        assert_eq!(PublicHostKey::from_blob(&key.public().blob()).unwrap(), *key.public());
    }

    #[test]
    fn key_text_round_trip() {
        let key = vector_key();
        let text = key.to_text();
        assert!(text.starts_with('#'));
        let back = HostKeyPair::from_text(&text).unwrap();
        assert_eq!(back.public(), key.public());
        assert_eq!(back.x, key.x);
        assert!(!format!("{key:?}").contains(X_DSA));

        let no_y: String = text
            .lines()
            .filter(|l| !l.starts_with("y "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(HostKeyPair::from_text(&no_y).is_ok());
        let wrong_y = text.replace(&format!("y {Y_DSA}"), "y 1234");
        assert_eq!(
            HostKeyPair::from_text(&wrong_y).unwrap_err(),
            SaslError::BadKeyFile("y does not match x")
        );
        let no_x: String = text
            .lines()
            .filter(|l| !l.starts_with("x "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(HostKeyPair::from_text(&no_x).is_err());
        assert!(HostKeyPair::from_text("p zz\n").is_err());
        assert!(HostKeyPair::from_text("k 12\n").is_err());
        assert!(HostKeyPair::from_text(&format!("{text}p 5\n")).is_err());
        let x_too_big = text.replace(&format!("x {X_DSA}"), &format!("x {Q}"));
        assert!(HostKeyPair::from_text(&x_too_big).is_err());
    }

    #[test]
    fn round_trip_with_generated_key() {
        let mut rng = rand::thread_rng();
        let key = HostKeyPair::generate(&mut rng).unwrap();
        assert_eq!(key.public().p.bits(), 1024);
        assert_eq!(key.public().q.bits(), 160);
        assert!(key.public().blob().len() >= MIN_PKLENGTH as usize);
        let key = HostKeyPair::from_text(&key.to_text()).unwrap();

        for (user, pass) in [("alice", "s3cret"), ("bob", ""), ("c", &"p".repeat(128)[..])] {
            let (client, msg1) = ClientExchange::start(user, &mut rng);
            assert_eq!(msg1_len(&msg1), Some(msg1.len()));
            let (server, claimed, smsg) = ServerExchange::respond(&msg1, &key, &mut rng).unwrap();
            assert_eq!(claimed, user);
            assert_eq!(server.user(), user);
            let msg = parse_server_message(&smsg).unwrap();
            assert_eq!(
                check_known_hosts(&known_hosts_line("h", key.public()), "h", &msg.host_key.public),
                Trust::Known
            );
            let msg2 = client.finish(&msg, &Secret::from(pass)).unwrap();
            assert_eq!(server.msg2_complete(&msg2), Some(msg2.len()));
            server.verify(&msg2, |u, p| u == user && p.expose() == pass).unwrap();
        }
    }

    proptest! {
        #[test]
        fn parse_server_message_never_panics(data in proptest::collection::vec(any::<u8>(), 0..800)) {
            let _ = parse_server_message(&data);
            let _ = parse_server_message(b64_encode(&data).as_bytes());
            let _ = msg1_len(&data);
            let _ = msg1_len(b64_encode(&data).as_bytes());
        }

        #[test]
        fn mutated_server_message_never_panics(pos in 0usize..634, val in any::<u8>()) {
            let mut raw = b64d(SERVER_MSG.as_bytes());
            raw[pos] = val;
            if let Ok(msg) = parse_server_message(b64_encode(&raw).as_bytes()) {
                let (client, _) = ClientExchange::start_with_secret("user1", &hex(X_DH));
                let _ = client.finish(&msg, &Secret::from("pass1"));
            }
        }

        #[test]
        fn respond_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let key = vector_key();
            let mut rng = rand::thread_rng();
            let _ = ServerExchange::respond(&data, &key, &mut rng);
            let _ = ServerExchange::respond(b64_encode(&data).as_bytes(), &key, &mut rng);
        }

        #[test]
        fn verify_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let server = &*VECTOR_SERVER;
            let _ = server.msg2_complete(&data);
            let _ = server.msg2_complete(b64_encode(&data).as_bytes());
            let _ = server.clone().verify(&data, pass_ok);
            prop_assert!(server.clone().verify(b64_encode(&data).as_bytes(), pass_ok).is_err());
        }
    }
}
