//! Integer conversions between the databases, which store signed 64-bit integers, and the
//! domain, whose revisions, sequence numbers and counts are unsigned.

/// A revision, sequence number or count as the database stores it. Values past `i64::MAX`
/// cannot occur in practice; saturating keeps a comparison against them meaningful instead of
/// wrapping to a negative number.
pub fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored revision, sequence number or count. The schemas never hold a negative one; reading
/// one as 0 ("before everything") is the conservative answer if a row ever did.
pub fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_clamps() {
        assert_eq!(to_i64(42), 42);
        assert_eq!(to_u64(42), 42);
        assert_eq!(to_i64(u64::MAX), i64::MAX);
        assert_eq!(to_u64(-1), 0);
        assert_eq!(to_u64(to_i64(u64::MAX)), i64::MAX as u64);
    }
}
