//! Positions of a pruned tensor's non-zeros as Rice-coded gaps (the `#gaps{k}` form of a
//! `.penni` file). The gap before each position (the first position itself, then the distance
//! from the previous one minus one) is written as its quotient `gap >> k` in unary (that many
//! one bits, closed by a zero bit) followed by its `k` low bits, least significant bit first;
//! the stream starts with the count of positions (u32, little-endian) and its last byte is padded
//! with zero bits. A pruned tensor's gaps are close to geometric, for which Rice coding with the
//! best `k` is within a few percent of the entropy: about log2(1/p) + 1.5 bits per non-zero at
//! density p, against 1/p bits for a bit mask and 32 for a u32 index.

/// The largest Rice parameter written or read.
pub const MAX_K: u32 = 31;

fn gaps(positions: &[usize]) -> impl Iterator<Item = u64> + '_ {
    positions
        .iter()
        .enumerate()
        .map(|(i, &p)| if i == 0 { p as u64 } else { (p - positions[i - 1] - 1) as u64 })
}

/// Bytes of the stream for these positions at Rice parameter `k`.
pub fn encoded_len(positions: &[usize], k: u32) -> usize {
    let bits: u64 = gaps(positions).map(|g| (g >> k) + 1 + k as u64).sum();
    4 + bits.div_ceil(8) as usize
}

/// The Rice parameter that gives the shortest stream.
pub fn best_k(positions: &[usize]) -> u32 {
    (0..=MAX_K).min_by_key(|&k| encoded_len(positions, k)).unwrap_or(0)
}

struct BitWriter {
    bytes: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    /// Appends the low `n` (at most 32) bits of `v`.
    fn put(&mut self, v: u64, n: u32) {
        self.acc |= (v & ((1u64 << n) - 1)) << self.n;
        self.n += n;
        while self.n >= 8 {
            self.bytes.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }
}

/// The stream for strictly increasing `positions` (fewer than 2^32 of them) at parameter `k`.
pub fn encode(positions: &[usize], k: u32) -> Vec<u8> {
    assert!(k <= MAX_K && positions.len() <= u32::MAX as usize);
    let mut w = BitWriter {
        bytes: (positions.len() as u32).to_le_bytes().to_vec(),
        acc: 0,
        n: 0,
    };
    for g in gaps(positions) {
        let mut q = g >> k;
        while q >= 32 {
            w.put(u64::MAX, 32);
            q -= 32;
        }
        w.put((1u64 << q) - 1, q as u32 + 1);
        w.put(g, k);
    }
    if w.n > 0 {
        w.bytes.push(w.acc as u8);
    }
    w.bytes
}

/// Positions back from a stream, or why it is not a valid one for a tensor of `numel` values:
/// truncated, positions at or past `numel`, more positions than values, or bytes left over.
pub fn decode(bytes: &[u8], k: u32, numel: usize) -> Result<Vec<usize>, String> {
    if k > MAX_K {
        return Err(format!("Rice parameter {k} is above {MAX_K}"));
    }
    let (head, stream) = bytes.split_at_checked(4).ok_or("shorter than its count")?;
    let count = u32::from_le_bytes(head.try_into().expect("4 bytes")) as usize;
    if count > numel {
        return Err(format!("{count} positions for {numel} values"));
    }
    let total_bits = stream.len() as u64 * 8;
    // every position takes at least k + 1 bits: refuse a count the stream cannot hold before
    // allocating for it
    if count as u64 * (k as u64 + 1) > total_bits {
        return Err(format!("{count} positions cannot fit in {} bytes", stream.len()));
    }
    let mut at = 0u64;
    let bit = |i: u64| stream[(i / 8) as usize] >> (i % 8) & 1;
    let mut out = Vec::with_capacity(count);
    let mut next = 0u64;
    for _ in 0..count {
        let mut q = 0u64;
        loop {
            if at >= total_bits {
                return Err("truncated".into());
            }
            at += 1;
            if bit(at - 1) == 0 {
                break;
            }
            q += 1;
        }
        if at + k as u64 > total_bits {
            return Err("truncated".into());
        }
        let mut low = 0u64;
        for b in 0..k as u64 {
            low |= (bit(at + b) as u64) << b;
        }
        at += k as u64;
        // q < 2^35 (it is bounded by the stream's bits), so q << k fits in u64 for k <= 28;
        // checked for the rest
        let gap = q.checked_shl(k).filter(|v| v >> k == q).ok_or("gap overflows")? | low;
        let pos = next
            .checked_add(gap)
            .filter(|&p| p < numel as u64)
            .ok_or("a position past the end")?;
        out.push(pos as usize);
        next = pos + 1;
    }
    if total_bits - at >= 8 || (at < total_bits && (stream[stream.len() - 1] >> (at % 8)) != 0) {
        return Err("bytes after the last position".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_every_parameter() {
        let cases: Vec<Vec<usize>> = vec![
            vec![],
            vec![0],
            vec![5],
            vec![0, 1, 2, 3],
            vec![3, 100, 101, 4000, 1 << 20],
            (0..1000).map(|i| i * 7 + (i % 3)).collect(),
        ];
        for p in &cases {
            for k in [0, 1, 3, 7, 20, MAX_K] {
                if k == 0 && p.last().is_some_and(|&l| l > 5000) {
                    continue; // unary at k = 0: a million bits
                }
                let s = encode(p, k);
                assert_eq!(s.len(), encoded_len(p, k), "{p:?} {k}");
                assert_eq!(decode(&s, k, (1 << 20) + 1).unwrap(), *p, "k {k}");
            }
        }
    }

    #[test]
    fn geometric_gaps_cost_near_their_entropy() {
        // every 10th value, with jitter: density 0.1, entropy about 4.7 bits per non-zero
        let p: Vec<usize> = (0..10_000).map(|i| i * 10 + (i * 7919) % 10).collect();
        let k = best_k(&p);
        let bits = (encoded_len(&p, k) - 4) * 8;
        assert!(bits < 10_000 * 6, "{bits} bits at k {k}");
    }

    #[test]
    fn damaged_streams_are_errors() {
        let p = vec![1, 4, 9, 16];
        let s = encode(&p, 2);
        assert!(decode(&s[..s.len() - 1], 2, 100).is_err());
        assert!(decode(&s, 2, 16).is_err(), "position 16 of 16 values");
        let mut more = s.clone();
        more.push(0);
        assert!(decode(&more, 2, 100).is_err());
        let mut count = s.clone();
        count[0] = 200;
        assert!(decode(&count, 2, 100).is_err());
        count[0] = 90;
        assert!(decode(&count, 2, 100).unwrap_err().contains("cannot fit"));
        assert!(decode(&s, MAX_K + 1, 100).is_err());
        assert!(decode(&[1, 2], 2, 100).is_err());
        // all ones: unary never closes
        assert!(decode(&[1, 0, 0, 0, 255, 255], 0, 100).is_err());
    }
}
