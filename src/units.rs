//! Units of the options that applications and command lines pass: [`ByteSize`].

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// A byte count as people write it: `8G`, `512M`, `1.5GiB`, `4000000000`, `64k`. The units
/// K, M, G and T are powers of 1024, with or without `B` / `iB`, in any case; a plain
/// number is bytes; `0` is a size (e.g. a cache turned off). Parsing fails with
/// [`Error::InvalidArgument`] naming the text.
///
/// It parses with [`FromStr`] (so `clap` takes it as an argument type as it is) and
/// displays in the largest unit that divides it, which parses back to the same size.
///
/// ```
/// use moestream::units::ByteSize;
///
/// let size: ByteSize = "1.5GiB".parse()?;
/// assert_eq!(size.bytes(), 3 << 29);
/// assert_eq!(size.to_string(), "1536M");
/// assert_eq!("64k".parse::<ByteSize>()?, ByteSize(64 << 10));
/// assert!("8X".parse::<ByteSize>().is_err());
/// # Ok::<(), moestream::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The number of bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl From<ByteSize> for u64 {
    fn from(s: ByteSize) -> u64 {
        s.0
    }
}

impl From<u64> for ByteSize {
    fn from(bytes: u64) -> ByteSize {
        ByteSize(bytes)
    }
}

const UNITS: [(&str, u64); 4] = [
    ("T", 1 << 40),
    ("G", 1 << 30),
    ("M", 1 << 20),
    ("K", 1 << 10),
];

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 > 0 {
            for (unit, scale) in UNITS {
                if self.0 % scale == 0 {
                    return write!(f, "{}{unit}", self.0 / scale);
                }
            }
        }
        write!(f, "{}", self.0)
    }
}

impl FromStr for ByteSize {
    type Err = Error;

    fn from_str(s: &str) -> Result<ByteSize, Error> {
        let bad = |why: String| Error::InvalidArgument(why);
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let value: f64 = num
            .parse()
            .map_err(|_| bad(format!("{s:?} is not a size (e.g. 8G, 512M, 4000000000)")))?;
        let unit = unit.trim().to_ascii_uppercase();
        let unit = match unit.strip_suffix("IB") {
            Some(u) if !u.is_empty() => u,
            _ => unit.strip_suffix('B').unwrap_or(&unit),
        };
        let scale = match unit {
            "" => 1,
            u => UNITS
                .iter()
                .find(|(name, _)| *name == u)
                .map(|&(_, scale)| scale)
                .ok_or_else(|| {
                    bad(format!(
                        "unknown size unit in {s:?} (K, M, G or T, with or without B / iB)"
                    ))
                })?,
        };
        let bytes = value * scale as f64;
        // (u64::MAX as f64 rounds up to 2^64, which does not fit.)
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(bad(format!("{s:?} is too large a size")));
        }
        Ok(ByteSize(bytes as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::ByteSize;

    fn parse(s: &str) -> Option<u64> {
        s.parse::<ByteSize>().ok().map(ByteSize::bytes)
    }

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse("8G"), Some(8 << 30));
        assert_eq!(parse("512M"), Some(512 << 20));
        assert_eq!(parse("512MB"), Some(512 << 20));
        assert_eq!(parse("1.5GiB"), Some(3 << 29));
        assert_eq!(parse("64k"), Some(64 << 10));
        assert_eq!(parse(" 2 t "), Some(2 << 40));
        assert_eq!(parse("4000000000"), Some(4_000_000_000));
        assert_eq!(parse("100b"), Some(100));
        assert_eq!(parse("0"), Some(0));
        assert_eq!(parse("0.5K"), Some(512));
    }

    #[test]
    fn bad_sizes_are_typed_errors() {
        for s in [
            "8X",
            "G",
            "-1G",
            "",
            "1.2.3M",
            "8 GiBs",
            "iB",
            "1e3",
            "5iB",
            "99999999999T",
        ] {
            let e = s.parse::<ByteSize>().unwrap_err();
            assert!(matches!(e, crate::Error::InvalidArgument(_)), "{s:?}: {e}");
        }
    }

    #[test]
    fn display_parses_back() {
        for b in [
            0,
            1,
            1000,
            1 << 10,
            3 << 29,
            8 << 30,
            (1 << 40) + 1,
            5 << 40,
        ] {
            let s = ByteSize(b).to_string();
            assert_eq!(parse(&s), Some(b), "{s}");
        }
        assert_eq!(ByteSize(8 << 30).to_string(), "8G");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }
}
