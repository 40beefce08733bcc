//! The Internet checksum (RFC 1071), one-shot and incremental, for the ICMP keepalives
//! (docs/tsp-wire.md §5) and the TUN offload (docs/ARCHITECTURE.md, the data path).

/// Adds `data` to a ones'-complement accumulator as big-endian 16-bit words. Only the last
/// piece of a checksummed span may have an odd length (its last byte is padded with zero).
pub fn sum(mut acc: u64, data: &[u8]) -> u64 {
    // 32-bit words into a 64-bit accumulator: no carry is lost before 2^32 words.
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds an accumulator to 16 bits (not complemented).
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Folds an accumulator and complements it: the value to store in a checksum field.
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(0, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example_accumulated() {
        // RFC 1071 §3's example: the sum of 00 01 f2 03 f4 f5 f6 f7 is ddf2.
        assert_eq!(fold(sum(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7])), 0xddf2);
        // An odd length pads with zero; split sums add up.
        assert_eq!(fold(sum(0, &[0xab])), 0xab00);
        assert_eq!(
            fold(sum(sum(0, &[1, 2, 3, 4]), &[5, 6, 7])),
            fold(sum(0, &[1, 2, 3, 4, 5, 6, 7]))
        );
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2, so the checksum is 220d.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), 0x220d);
        // An odd length pads with a zero byte.
        assert_eq!(checksum(&[0x01]), !0x0100);
        assert_eq!(checksum(&[]), 0xffff);
    }

    /// RFC 1071's definition, word by word with the end-around carry at each step.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for c in data.chunks(2) {
            acc += u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    proptest! {
        /// Summing in pieces gives the one-shot checksum wherever the data is cut, as long as
        /// every piece but the last has an even length (the contract of `sum`), and both agree
        /// with RFC 1071's word-by-word definition.
        #[test]
        fn pieces_agree_with_one_shot(
            data in proptest::collection::vec(any::<u8>(), 0..1500),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| (c % (data.len() + 1)) & !1).collect();
            cuts.sort_unstable();
            let mut acc = 0;
            let mut from = 0;
            for cut in cuts.into_iter().chain([data.len()]) {
                acc = sum(acc, &data[from..cut]);
                from = cut;
            }
            prop_assert_eq!(finish(acc), checksum(&data));
            prop_assert_eq!(checksum(&data), reference(&data));
        }
    }
}
