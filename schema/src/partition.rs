//! The partition function: which ordered lane a user's messages travel in.
//!
//! It must never change for a deployed system (a user moving lanes while
//! messages are in flight could reorder them), so it is spelled out here rather
//! than borrowed from a hasher whose output may change between releases.

/// Partition count used when none is configured (`IMIP_PARTITIONS`).
pub const DEFAULT_PARTITIONS: u32 = 16;

/// FNV-1a (64 bit) of the normalised address, reduced modulo `partitions`.
pub fn partition(normalized_address: &str, partitions: u32) -> u32 {
    let partitions = partitions.max(1);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in normalized_address.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partitions)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_known_values() {
        // Pinned: these must never change (see module docs).
        assert_eq!(
            partition("", 1_000_000),
            (14_695_981_039_346_656_037u64 % 1_000_000) as u32
        );
        assert_eq!(partition("alice@example.com", 16), 6);
        assert_eq!(
            partition("alice@example.com", 16),
            partition("alice@example.com", 16)
        );
        assert_eq!(partition("x", 1), 0);
        assert_eq!(partition("x", 0), 0);
    }

    #[test]
    fn spreads_users() {
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[partition(&format!("user{i}@example.com"), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 700 && c < 1300), "{counts:?}");
    }
}
