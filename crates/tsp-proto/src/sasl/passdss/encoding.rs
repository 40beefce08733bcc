//! PASSDSS-3DES-1's integers, strings, gogoc's bignums and the bounded reader (docs/tsp-wire.md §3.5).

use num_bigint::BigUint;
use num_traits::Zero as _;

use crate::sasl::SaslError;

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

pub(super) fn bn_magnitude(n: &BigUint) -> Vec<u8> {
    if n.is_zero() { Vec::new() } else { n.to_bytes_be() }
}

/// `u32 width ‖ n left-padded with zeros to width` (the broker's r and s).
pub(super) fn put_bn_padded(out: &mut Vec<u8>, n: &BigUint, width: usize) {
    let mag = bn_magnitude(n);
    let width = width.max(mag.len());
    put_u32(out, len_u32(width));
    out.resize(out.len() + (width - mag.len()), 0);
    out.extend_from_slice(&mag);
}

/// Every length written here is far below 4 GiB; saturate instead of panicking anyway.
pub(super) fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub(super) fn bn_encoded(n: &BigUint) -> Vec<u8> {
    let mut out = Vec::new();
    put_bn(&mut out, n);
    out
}

/// Bounds-checked reader: every length is checked against the bytes actually present before
/// anything is sliced, and nothing is allocated from a claimed length.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    err: fn(&'static str) -> SaslError,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8], err: fn(&'static str) -> SaslError) -> Self {
        Self { buf, err }
    }

    pub(super) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SaslError> {
        let (head, tail) = self.buf.split_at_checked(n).ok_or_else(|| (self.err)(what))?;
        self.buf = tail;
        Ok(head)
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, SaslError> {
        Ok(self.take(1, what)?.first().copied().unwrap_or(0))
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, SaslError> {
        let b = self.take(4, what)?;
        let arr: [u8; 4] = b.try_into().map_err(|_| (self.err)(what))?;
        Ok(u32::from_be_bytes(arr))
    }

    pub(super) fn len(&mut self, what: &'static str) -> Result<usize, SaslError> {
        usize::try_from(self.u32(what)?).map_err(|_| (self.err)(what))
    }

    pub(super) fn string(&mut self, what: &'static str) -> Result<&'a [u8], SaslError> {
        let n = self.len(what)?;
        self.take(n, what)
    }

    /// A bignum whose significant magnitude is at most `max` bytes (leading zeros tolerated,
    /// as BN_bin2bn does).
    pub(super) fn bn(&mut self, max: usize, what: &'static str) -> Result<BigUint, SaslError> {
        let raw = self.string(what)?;
        let first = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
        let mag = raw.get(first..).unwrap_or_default();
        if mag.len() > max {
            return Err(SaslError::OutOfBounds(what));
        }
        Ok(BigUint::from_bytes_be(mag))
    }

    pub(super) fn finish(&self, what: &'static str) -> Result<(), SaslError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err((self.err)(what))
        }
    }
}
