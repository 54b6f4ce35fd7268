//! The value model: what travels in an item (DESIGN.md §5, protocol.md §7.1).

use std::fmt;
use std::str::FromStr;

use crate::channel::ChannelId;

/// One Python value. The variants are part of the public contract.
///
/// `PartialEq` is structural and follows `f64`: a `Float(NaN)` is not equal to
/// itself. Dicts keep insertion order; sets keep the order they were built in
/// (Python's order is unspecified).
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Value {
    /// `None`.
    #[default]
    Null,
    /// `bool`.
    Bool(bool),
    /// `int` within `i64`.
    Int(i64),
    /// `int` outside `i64`. A `BigInt` that fits `i64` is valid too; it is
    /// encoded as a plain integer.
    BigInt(BigInt),
    /// `float`, NaN and infinities included.
    Float(f64),
    /// `complex` as (real, imaginary).
    Complex(f64, f64),
    /// `bytes` (and `bytearray`/`memoryview` on the Python side).
    Bytes(Vec<u8>),
    /// `str`.
    Str(String),
    /// `list`.
    List(Vec<Value>),
    /// `tuple`.
    Tuple(Vec<Value>),
    /// `dict`, in insertion order. Keys must be hashable in Python.
    Dict(Vec<(Value, Value)>),
    /// `set`. Members must be hashable in Python.
    Set(Vec<Value>),
    /// `frozenset`. Members must be hashable in Python.
    FrozenSet(Vec<Value>),
    /// A channel of the gateway the item travels on.
    Channel(ChannelRef),
}

/// A channel reference inside a value: the receiver obtains a handle to the
/// channel with this id (protocol.md §6, §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelRef(pub ChannelId);

impl ChannelRef {
    /// The referenced channel.
    pub fn id(self) -> ChannelId {
        self.0
    }
}

impl Value {
    /// The Python type name of this value ("NoneType", "int", "list", ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Complex(..) => "complex",
            Value::Bytes(_) => "bytes",
            Value::Str(_) => "str",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Set(_) => "set",
            Value::FrozenSet(_) => "frozenset",
            Value::Channel(_) => "Channel",
        }
    }

    /// An integer of any size as `Int` when it fits `i64`, else `BigInt`.
    pub fn from_i128(n: i128) -> Value {
        match i64::try_from(n) {
            Ok(n) => Value::Int(n),
            Err(_) => Value::BigInt(BigInt::from(n)),
        }
    }

    /// A big integer as `Int` when it fits `i64`, else `BigInt`.
    pub fn from_bigint(n: BigInt) -> Value {
        match i64::try_from(&n) {
            Ok(n) => Value::Int(n),
            Err(_) => Value::BigInt(n),
        }
    }

    /// A text value.
    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }

    /// The first value for a `Str` key equal to `key` in a `Dict`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(pairs) => pairs.iter().find_map(|(k, v)| match k {
                Value::Str(s) if s == key => Some(v),
                _ => None,
            }),
            _ => None,
        }
    }

    /// `Some(&str)` for a `Str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// `Some(i64)` for an `Int` (or a `BigInt` that fits).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            Value::BigInt(b) => i64::try_from(b).ok(),
            _ => None,
        }
    }
}

macro_rules! value_from {
    ($($t:ty => |$v:ident| $e:expr),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from($v: $t) -> Value { $e }
        }
    )*};
}

value_from! {
    bool => |v| Value::Bool(v),
    i32 => |v| Value::Int(i64::from(v)),
    u32 => |v| Value::Int(i64::from(v)),
    i64 => |v| Value::Int(v),
    u64 => |v| Value::from_i128(i128::from(v)),
    i128 => |v| Value::from_i128(v),
    u128 => |v| match i128::try_from(v) {
        Ok(n) => Value::from_i128(n),
        Err(_) => Value::BigInt(BigInt::from(v)),
    },
    f64 => |v| Value::Float(v),
    &str => |v| Value::Str(v.to_owned()),
    String => |v| Value::Str(v),
    Vec<u8> => |v| Value::Bytes(v),
    &[u8] => |v| Value::Bytes(v.to_vec()),
    Vec<Value> => |v| Value::List(v),
    BigInt => |v| Value::from_bigint(v),
    ChannelRef => |v| Value::Channel(v),
}

/// An integer of any size: a sign and a big-endian magnitude without leading
/// zero bytes (zero has an empty magnitude and is never negative).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct BigInt {
    negative: bool,
    magnitude: Vec<u8>,
}

impl BigInt {
    /// `-magnitude` if `negative`, else `magnitude` (big-endian bytes; leading
    /// zeros are stripped, and a zero magnitude is never negative).
    pub fn from_sign_magnitude(negative: bool, magnitude: &[u8]) -> BigInt {
        let start = magnitude
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(magnitude.len());
        let magnitude = magnitude[start..].to_vec();
        BigInt {
            negative: negative && !magnitude.is_empty(),
            magnitude,
        }
    }

    /// Whether the value is below zero.
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// The big-endian magnitude, without leading zero bytes.
    pub fn magnitude(&self) -> &[u8] {
        &self.magnitude
    }

    /// The magnitude as `u128`, if it fits.
    fn magnitude_u128(&self) -> Option<u128> {
        if self.magnitude.len() > 16 {
            return None;
        }
        Some(
            self.magnitude
                .iter()
                .fold(0u128, |acc, &b| (acc << 8) | u128::from(b)),
        )
    }
}

impl From<u128> for BigInt {
    fn from(n: u128) -> BigInt {
        BigInt::from_sign_magnitude(false, &n.to_be_bytes())
    }
}

impl From<i128> for BigInt {
    fn from(n: i128) -> BigInt {
        BigInt::from_sign_magnitude(n < 0, &n.unsigned_abs().to_be_bytes())
    }
}

impl From<i64> for BigInt {
    fn from(n: i64) -> BigInt {
        BigInt::from(i128::from(n))
    }
}

impl From<u64> for BigInt {
    fn from(n: u64) -> BigInt {
        BigInt::from(u128::from(n))
    }
}

/// The big integer does not fit the requested primitive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfRange;

impl fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("integer out of range")
    }
}

impl std::error::Error for OutOfRange {}

impl TryFrom<&BigInt> for i128 {
    type Error = OutOfRange;
    fn try_from(b: &BigInt) -> Result<i128, OutOfRange> {
        let m = b.magnitude_u128().ok_or(OutOfRange)?;
        if b.negative {
            if m <= i128::MAX as u128 + 1 {
                // `m` is at most 2^127, so `0 - m` is representable.
                Ok((m as i128).wrapping_neg())
            } else {
                Err(OutOfRange)
            }
        } else {
            i128::try_from(m).map_err(|_| OutOfRange)
        }
    }
}

impl TryFrom<&BigInt> for u128 {
    type Error = OutOfRange;
    fn try_from(b: &BigInt) -> Result<u128, OutOfRange> {
        if b.negative {
            return Err(OutOfRange);
        }
        b.magnitude_u128().ok_or(OutOfRange)
    }
}

macro_rules! bigint_try_into {
    ($($t:ty),*) => {$(
        impl TryFrom<&BigInt> for $t {
            type Error = OutOfRange;
            fn try_from(b: &BigInt) -> Result<$t, OutOfRange> {
                let n = i128::try_from(b)?;
                <$t>::try_from(n).map_err(|_| OutOfRange)
            }
        }
        impl TryFrom<BigInt> for $t {
            type Error = OutOfRange;
            fn try_from(b: BigInt) -> Result<$t, OutOfRange> {
                <$t>::try_from(&b)
            }
        }
    )*};
}

bigint_try_into!(i64, u64, i32, u32);

impl TryFrom<BigInt> for i128 {
    type Error = OutOfRange;
    fn try_from(b: BigInt) -> Result<i128, OutOfRange> {
        i128::try_from(&b)
    }
}

impl TryFrom<BigInt> for u128 {
    type Error = OutOfRange;
    fn try_from(b: BigInt) -> Result<u128, OutOfRange> {
        u128::try_from(&b)
    }
}

impl fmt::Display for BigInt {
    /// Decimal, with a leading `-` when negative.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.magnitude.is_empty() {
            return f.write_str("0");
        }
        // Repeated division of the base-256 magnitude by 10^19; quadratic,
        // which is fine for display.
        const CHUNK: u64 = 10_000_000_000_000_000_000;
        let mut digits: Vec<u64> = Vec::new();
        let mut rest = self.magnitude.clone();
        while !rest.is_empty() {
            let mut remainder: u128 = 0;
            let mut quotient = Vec::with_capacity(rest.len());
            for &byte in &rest {
                let acc = (remainder << 8) | u128::from(byte);
                let q = acc / u128::from(CHUNK);
                remainder = acc % u128::from(CHUNK);
                if !(quotient.is_empty() && q == 0) {
                    // q < 256 because remainder < CHUNK before the shift.
                    quotient.push(q as u8);
                }
            }
            digits.push(remainder as u64);
            rest = quotient;
        }
        let mut s = String::new();
        if self.negative {
            s.push('-');
        }
        let mut iter = digits.iter().rev();
        if let Some(first) = iter.next() {
            s.push_str(&first.to_string());
        }
        for d in iter {
            s.push_str(&format!("{d:019}"));
        }
        f.pad(&s)
    }
}

impl FromStr for BigInt {
    type Err = OutOfRange;
    /// Parses an optionally signed decimal integer of any size.
    fn from_str(s: &str) -> Result<BigInt, OutOfRange> {
        let (negative, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(OutOfRange);
        }
        // Little-endian base-256 accumulator: acc = acc * 10 + digit.
        let mut le: Vec<u8> = Vec::new();
        for b in digits.bytes() {
            let mut carry = u32::from(b - b'0');
            for limb in le.iter_mut() {
                let v = u32::from(*limb) * 10 + carry;
                *limb = (v & 0xff) as u8;
                carry = v >> 8;
            }
            while carry > 0 {
                le.push((carry & 0xff) as u8);
                carry >>= 8;
            }
        }
        le.reverse();
        Ok(BigInt::from_sign_magnitude(negative, &le))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bigint_display_and_parse_round_trip() {
        for s in [
            "0",
            "1",
            "-1",
            "255",
            "256",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551616",
            "-18446744073709551617",
            "123456789012345678901234567890123456789012345678901234567890",
        ] {
            let b: BigInt = s.parse().unwrap();
            assert_eq!(b.to_string(), s);
        }
        assert_eq!("-0".parse::<BigInt>().unwrap(), BigInt::default());
        assert!("".parse::<BigInt>().is_err());
        assert!("1x".parse::<BigInt>().is_err());
    }

    #[test]
    fn bigint_primitive_conversions() {
        for n in [0i128, 1, -1, i128::MAX, i128::MIN, i64::MIN as i128 - 1] {
            let b = BigInt::from(n);
            assert_eq!(i128::try_from(&b), Ok(n));
            assert_eq!(b.to_string(), n.to_string());
        }
        assert_eq!(u128::try_from(&BigInt::from(u128::MAX)), Ok(u128::MAX));
        assert_eq!(i64::try_from(&BigInt::from(u64::MAX)), Err(OutOfRange));
        assert_eq!(u64::try_from(&BigInt::from(u64::MAX)), Ok(u64::MAX));
        assert!(i128::try_from(&BigInt::from(u128::MAX)).is_err());
    }
}
