//! The broker's DSA host key: blob, known-hosts lines, key pair and key file (docs/tsp-wire.md §3.5, §3.6).

use std::fmt;

use base64::Engine as _;
use num_bigint::BigUint;
use num_traits::{One as _, Zero as _};
use rand::{CryptoRng, RngCore};

use super::crypto::random_mod_q;
use super::encoding::{Reader, put_bn, put_string};
use super::{MAX_DSA_BYTES, MAX_Q_BYTES, SSH_DSS};
use crate::sasl::{SaslError, b64_encode};

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
    pub(super) fn verify(&self, digest: &[u8], r: &BigUint, s: &BigUint) -> bool {
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
    pub(super) public: PublicHostKey,
    pub(super) x: BigUint,
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
pub(super) struct RngBridge<'a, R>(&'a mut R);

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

pub(super) const KEY_FILE_HEADER: &str = "# nm-tsp PASSDSS-3DES-1 broker host key (DSA). Keep private.";
pub(super) const MAX_KEY_FILE: usize = 16 * 1024;

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
    pub(super) fn from_private(p: BigUint, q: BigUint, g: BigUint, x: BigUint) -> Result<Self, SaslError> {
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
    pub(super) fn sign(&self, digest: &[u8], k: &BigUint) -> Option<(BigUint, BigUint)> {
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
