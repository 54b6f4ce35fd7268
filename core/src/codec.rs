//! CBOR encoding and decoding of [`Value`]s (protocol.md §7.1), on top of
//! `minicbor`.
//!
//! | value | CBOR |
//! |---|---|
//! | `Null`, `Bool` | `0xf6`, `0xf4`/`0xf5` |
//! | `Int` | major type 0/1, shortest head |
//! | `BigInt` outside `i64` | tag 2 / tag 3 + byte string (big-endian magnitude; tag 3 holds −1 − n) |
//! | `Float` | `0xfb` + binary64 (NaN as `0xfb7ff8000000000000`) |
//! | `Complex` | tag 40003 + `[re, im]` |
//! | `Bytes`, `Str` | major type 2, 3 (definite) |
//! | `List`, `Dict` | major type 4, 5 (definite) |
//! | `Tuple`, `Set`, `FrozenSet` | tag 40001 / 258 / 40002 + array |
//! | `Channel` | tag 40004 + unsigned id |
//!
//! The decoder never trusts a length: it checks that the bytes are present
//! before reserving anything, caps the initial capacity of containers, counts
//! nesting (every array, map and tag is one level), rejects indefinite
//! lengths, unknown tags and simple values, and trailing bytes.

use minicbor::data::{Tag, Type};
use minicbor::{Decoder, Encoder};

use crate::channel::ChannelId;
use crate::error::ValueError;
use crate::value::{BigInt, ChannelRef, Value};

/// Default (and protocol) limit on value nesting (protocol.md §5).
pub const DEFAULT_MAX_DEPTH: u32 = 200;

/// Tag of a positive bignum (RFC 8949).
pub const TAG_POS_BIGNUM: u64 = 2;
/// Tag of a negative bignum (RFC 8949): holds −1 − n.
pub const TAG_NEG_BIGNUM: u64 = 3;
/// Tag of a set (IANA registered "finite set").
pub const TAG_SET: u64 = 258;
/// Tag of a tuple (execnet private).
pub const TAG_TUPLE: u64 = 40001;
/// Tag of a frozenset (execnet private).
pub const TAG_FROZENSET: u64 = 40002;
/// Tag of a complex number (execnet private).
pub const TAG_COMPLEX: u64 = 40003;
/// Tag of a channel reference (execnet private).
pub const TAG_CHANNEL: u64 = 40004;

/// The canonical NaN every encoder sends.
const CANONICAL_NAN: u64 = 0x7ff8_0000_0000_0000;

/// Containers start with at most this many preallocated slots; they grow as
/// elements actually decode (a length field alone never reserves memory
/// beyond this).
const MAX_PREALLOC: u64 = 16;

type Enc<'a> = Encoder<&'a mut Vec<u8>>;

/// Appends the CBOR encoding of `value` to `out`.
///
/// Refuses, writing nothing, values a Python receiver cannot take: a dict key
/// or set member that is a list, dict or set (also inside a tuple), and
/// nesting deeper than [`DEFAULT_MAX_DEPTH`].
pub fn encode(value: &Value, out: &mut Vec<u8>) -> Result<(), ValueError> {
    let start = out.len();
    let result = {
        let mut e = Encoder::new(&mut *out);
        encode_value(value, &mut e, 0)
    };
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Decodes exactly one value from `bytes`, rejecting nesting deeper than
/// `max_depth`.
pub fn decode(bytes: &[u8], max_depth: u32) -> Result<Value, ValueError> {
    decode_item(bytes, max_depth, &mut Vec::new())
}

/// [`decode`], also collecting the ids of channel references into `refs`.
pub(crate) fn decode_item(
    bytes: &[u8],
    max_depth: u32,
    refs: &mut Vec<u32>,
) -> Result<Value, ValueError> {
    let mut dec = ValueDecoder {
        d: Decoder::new(bytes),
        max_depth,
        refs,
    };
    let value = dec.value(0)?;
    let rest = bytes.len() - dec.d.position();
    if rest != 0 {
        return Err(ValueError::TrailingBytes(rest));
    }
    Ok(value)
}

// ---- encoding ----

fn write_err<E>(_: minicbor::encode::Error<E>) -> ValueError {
    // Writing to a Vec<u8> is infallible; kept as an error for type reasons.
    ValueError::Custom("cbor write failed".into())
}

fn enter(depth: u32) -> Result<u32, ValueError> {
    if depth >= DEFAULT_MAX_DEPTH {
        Err(ValueError::TooDeep {
            max: DEFAULT_MAX_DEPTH,
        })
    } else {
        Ok(depth + 1)
    }
}

fn encode_value(value: &Value, e: &mut Enc<'_>, depth: u32) -> Result<(), ValueError> {
    match value {
        Value::Null => e.null().map_err(write_err)?,
        Value::Bool(b) => e.bool(*b).map_err(write_err)?,
        Value::Int(n) => e.i64(*n).map_err(write_err)?,
        Value::BigInt(b) => return encode_bigint(b, e, depth),
        Value::Float(f) => e.f64(canonical(*f)).map_err(write_err)?,
        Value::Complex(re, im) => {
            let depth = enter(enter(depth)?)?;
            let _ = depth;
            e.tag(Tag::new(TAG_COMPLEX))
                .and_then(|e| e.array(2))
                .and_then(|e| e.f64(canonical(*re)))
                .and_then(|e| e.f64(canonical(*im)))
                .map_err(write_err)?
        }
        Value::Bytes(b) => e.bytes(b).map_err(write_err)?,
        Value::Str(s) => e.str(s).map_err(write_err)?,
        Value::List(items) => return encode_array(None, items, e, depth, None),
        Value::Tuple(items) => return encode_array(Some(TAG_TUPLE), items, e, depth, None),
        Value::Set(items) => {
            return encode_array(Some(TAG_SET), items, e, depth, Some("set member"))
        }
        Value::FrozenSet(items) => {
            return encode_array(Some(TAG_FROZENSET), items, e, depth, Some("set member"))
        }
        Value::Dict(pairs) => {
            let depth = enter(depth)?;
            e.map(pairs.len() as u64).map_err(write_err)?;
            for (k, v) in pairs {
                check_hashable(k, "dict key", depth)?;
                encode_value(k, e, depth)?;
                encode_value(v, e, depth)?;
            }
            return Ok(());
        }
        Value::Channel(c) => {
            enter(depth)?;
            e.tag(Tag::new(TAG_CHANNEL))
                .and_then(|e| e.u32(c.0 .0))
                .map_err(write_err)?
        }
    };
    Ok(())
}

fn canonical(f: f64) -> f64 {
    if f.is_nan() {
        f64::from_bits(CANONICAL_NAN)
    } else {
        f
    }
}

fn encode_array(
    tag: Option<u64>,
    items: &[Value],
    e: &mut Enc<'_>,
    mut depth: u32,
    members: Option<&'static str>,
) -> Result<(), ValueError> {
    if let Some(tag) = tag {
        depth = enter(depth)?;
        e.tag(Tag::new(tag)).map_err(write_err)?;
    }
    let depth = enter(depth)?;
    e.array(items.len() as u64).map_err(write_err)?;
    for item in items {
        if let Some(context) = members {
            check_hashable(item, context, depth)?;
        }
        encode_value(item, e, depth)?;
    }
    Ok(())
}

fn encode_bigint(b: &BigInt, e: &mut Enc<'_>, depth: u32) -> Result<(), ValueError> {
    if let Ok(n) = i64::try_from(b) {
        e.i64(n).map_err(write_err)?;
        return Ok(());
    }
    enter(depth)?;
    if b.is_negative() {
        // Tag 3 holds n = |value| - 1.
        let n = magnitude_minus_one(b.magnitude());
        e.tag(Tag::new(TAG_NEG_BIGNUM))
            .and_then(|e| e.bytes(&n))
            .map_err(write_err)?;
    } else {
        e.tag(Tag::new(TAG_POS_BIGNUM))
            .and_then(|e| e.bytes(b.magnitude()))
            .map_err(write_err)?;
    }
    Ok(())
}

/// `m - 1` for a non-zero big-endian magnitude, without leading zeros.
fn magnitude_minus_one(m: &[u8]) -> Vec<u8> {
    let mut out = m.to_vec();
    for byte in out.iter_mut().rev() {
        if *byte == 0 {
            *byte = 0xff;
        } else {
            *byte -= 1;
            break;
        }
    }
    let start = out.iter().position(|&b| b != 0).unwrap_or(out.len());
    out.drain(..start);
    out
}

/// `m + 1` for a big-endian magnitude.
fn magnitude_plus_one(m: &[u8]) -> Vec<u8> {
    let mut out = m.to_vec();
    for byte in out.iter_mut().rev() {
        if *byte == 0xff {
            *byte = 0;
        } else {
            *byte += 1;
            return out;
        }
    }
    out.insert(0, 1);
    out
}

/// Python can hash None, bool, numbers, bytes, str, frozenset, channels and
/// tuples of hashables; not list, dict or set.
fn check_hashable(v: &Value, context: &'static str, depth: u32) -> Result<(), ValueError> {
    let type_name = match v {
        Value::List(_) => "list",
        Value::Dict(_) => "dict",
        Value::Set(_) => "set",
        Value::Tuple(items) => {
            let depth = enter(enter(depth)?)?;
            for item in items {
                check_hashable(item, context, depth)?;
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    Err(ValueError::Unhashable { type_name, context })
}

// ---- decoding ----

struct ValueDecoder<'b, 'r> {
    d: Decoder<'b>,
    max_depth: u32,
    refs: &'r mut Vec<u32>,
}

fn read_err(e: minicbor::decode::Error) -> ValueError {
    if e.is_end_of_input() {
        ValueError::Truncated
    } else {
        ValueError::Malformed(e.to_string())
    }
}

impl ValueDecoder<'_, '_> {
    fn enter(&self, depth: u32) -> Result<u32, ValueError> {
        if depth >= self.max_depth {
            Err(ValueError::TooDeep {
                max: self.max_depth,
            })
        } else {
            Ok(depth + 1)
        }
    }

    fn remaining(&self) -> u64 {
        (self.d.input().len() - self.d.position()) as u64
    }

    /// Checks that `n` elements of at least `min_size` bytes each can still
    /// be present, and returns a safe initial capacity.
    fn capacity(&self, n: u64, min_size: u64) -> Result<usize, ValueError> {
        if n.saturating_mul(min_size) > self.remaining() {
            return Err(ValueError::Truncated);
        }
        // n <= remaining input length, which is a usize.
        Ok(n.min(MAX_PREALLOC) as usize)
    }

    fn value(&mut self, depth: u32) -> Result<Value, ValueError> {
        let ty = self.d.datatype().map_err(read_err)?;
        Ok(match ty {
            Type::Null => {
                self.d.null().map_err(read_err)?;
                Value::Null
            }
            Type::Bool => Value::Bool(self.d.bool().map_err(read_err)?),
            Type::U8 | Type::U16 | Type::U32 | Type::U64 => {
                let n = self.d.u64().map_err(read_err)?;
                Value::from_i128(i128::from(n))
            }
            Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => {
                let n = self.d.int().map_err(read_err)?;
                Value::from_i128(i128::from(n))
            }
            Type::F16 | Type::F32 | Type::F64 => Value::Float(self.float()?),
            Type::Bytes => Value::Bytes(self.d.bytes().map_err(read_err)?.to_vec()),
            Type::String => Value::Str(self.d.str().map_err(read_err)?.to_owned()),
            Type::BytesIndef | Type::StringIndef | Type::ArrayIndef | Type::MapIndef => {
                return Err(ValueError::Indefinite)
            }
            Type::Array => Value::List(self.array(depth)?),
            Type::Map => {
                let depth = self.enter(depth)?;
                let n = self
                    .d
                    .map()
                    .map_err(read_err)?
                    .ok_or(ValueError::Indefinite)?;
                let mut pairs = Vec::with_capacity(self.capacity(n, 2)?);
                for _ in 0..n {
                    let k = self.value(depth)?;
                    let v = self.value(depth)?;
                    pairs.push((k, v));
                }
                Value::Dict(pairs)
            }
            Type::Tag => return self.tagged(depth),
            Type::Simple | Type::Undefined | Type::Break | Type::Unknown(_) => {
                return Err(ValueError::Malformed(format!(
                    "unsupported CBOR item {ty} at byte {}",
                    self.d.position()
                )))
            }
        })
    }

    fn array(&mut self, depth: u32) -> Result<Vec<Value>, ValueError> {
        let depth = self.enter(depth)?;
        match self.d.datatype().map_err(read_err)? {
            Type::Array => {}
            Type::ArrayIndef => return Err(ValueError::Indefinite),
            other => {
                return Err(ValueError::Malformed(format!(
                    "expected an array, found {other}"
                )))
            }
        }
        let n = self
            .d
            .array()
            .map_err(read_err)?
            .ok_or(ValueError::Indefinite)?;
        let mut items = Vec::with_capacity(self.capacity(n, 1)?);
        for _ in 0..n {
            items.push(self.value(depth)?);
        }
        Ok(items)
    }

    fn float(&mut self) -> Result<f64, ValueError> {
        match self.d.datatype().map_err(read_err)? {
            Type::F16 => {
                let p = self.d.position();
                let bytes = self
                    .d
                    .input()
                    .get(p + 1..p + 3)
                    .ok_or(ValueError::Truncated)?;
                let bits = u16::from_be_bytes([bytes[0], bytes[1]]);
                self.d.set_position(p + 3);
                Ok(f16_to_f64(bits))
            }
            Type::F32 => Ok(f64::from(self.d.f32().map_err(read_err)?)),
            Type::F64 => Ok(self.d.f64().map_err(read_err)?),
            other => Err(ValueError::Malformed(format!(
                "expected a float, found {other}"
            ))),
        }
    }

    fn tagged(&mut self, depth: u32) -> Result<Value, ValueError> {
        let depth = self.enter(depth)?;
        let tag = self.d.tag().map_err(read_err)?.as_u64();
        Ok(match tag {
            TAG_POS_BIGNUM | TAG_NEG_BIGNUM => {
                let bytes = match self.d.datatype().map_err(read_err)? {
                    Type::Bytes => self.d.bytes().map_err(read_err)?,
                    Type::BytesIndef => return Err(ValueError::Indefinite),
                    other => {
                        return Err(ValueError::Malformed(format!(
                            "bignum tag on {other}, expected bytes"
                        )))
                    }
                };
                let b = if tag == TAG_POS_BIGNUM {
                    BigInt::from_sign_magnitude(false, bytes)
                } else {
                    BigInt::from_sign_magnitude(true, &magnitude_plus_one(bytes))
                };
                Value::from_bigint(b)
            }
            TAG_TUPLE => Value::Tuple(self.array(depth)?),
            TAG_SET => Value::Set(self.array(depth)?),
            TAG_FROZENSET => Value::FrozenSet(self.array(depth)?),
            TAG_COMPLEX => {
                self.enter(depth)?;
                let n = match self.d.datatype().map_err(read_err)? {
                    Type::Array => self.d.array().map_err(read_err)?,
                    Type::ArrayIndef => return Err(ValueError::Indefinite),
                    _ => None,
                };
                if n != Some(2) {
                    return Err(ValueError::Malformed(
                        "complex must be an array of two floats".into(),
                    ));
                }
                let re = self.float()?;
                let im = self.float()?;
                Value::Complex(re, im)
            }
            TAG_CHANNEL => {
                let id = match self.d.datatype().map_err(read_err)? {
                    Type::U8 | Type::U16 | Type::U32 => self.d.u32().map_err(read_err)?,
                    other => {
                        return Err(ValueError::Malformed(format!(
                            "channel reference must be a 32-bit unsigned id, found {other}"
                        )))
                    }
                };
                if id == 0 {
                    return Err(ValueError::Malformed("channel reference to id 0".into()));
                }
                self.refs.push(id);
                Value::Channel(ChannelRef(ChannelId(id)))
            }
            other => return Err(ValueError::UnsupportedTag(other)),
        })
    }
}

/// IEEE 754 binary16 to binary64 (NaN becomes the canonical NaN).
fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1f);
    let frac = f64::from(bits & 0x3ff);
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 if frac == 0.0 => sign * f64::INFINITY,
        31 => f64::from_bits(CANONICAL_NAN),
        _ => sign * (1.0 + frac / 1024.0) * 2f64.powi(exp - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(v: &Value) -> String {
        let mut out = Vec::new();
        encode(v, &mut out).unwrap();
        out.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn encodes_basic_values() {
        assert_eq!(hex(&Value::Null), "f6");
        assert_eq!(hex(&Value::Int(-1)), "20");
        assert_eq!(hex(&Value::Float(f64::NAN)), "fb7ff8000000000000");
        assert_eq!(hex(&Value::from(u64::MAX)), "c248ffffffffffffffff");
        assert_eq!(
            hex(&Value::from(-(1i128 << 64) - 1)),
            "c349010000000000000000"
        );
    }

    #[test]
    fn refuses_unhashable_keys_without_writing() {
        let mut out = vec![1, 2];
        let v = Value::Dict(vec![(Value::Tuple(vec![Value::List(vec![])]), Value::Null)]);
        assert_eq!(
            encode(&v, &mut out),
            Err(ValueError::Unhashable {
                type_name: "list",
                context: "dict key"
            })
        );
        assert_eq!(out, vec![1, 2]);
        let v = Value::FrozenSet(vec![Value::Set(vec![])]);
        assert!(matches!(
            encode(&v, &mut out),
            Err(ValueError::Unhashable {
                type_name: "set",
                ..
            })
        ));
    }

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f64(0x3c00), 1.0);
        assert_eq!(f16_to_f64(0xc000), -2.0);
        assert_eq!(f16_to_f64(0x7c00), f64::INFINITY);
        assert!(f16_to_f64(0x7e00).is_nan());
        assert_eq!(f16_to_f64(0x0001), 5.960464477539063e-8);
        assert_eq!(f16_to_f64(0x7bff), 65504.0);
    }

    #[test]
    fn depth_limits() {
        let mut v = Value::Null;
        for _ in 0..200 {
            v = Value::List(vec![v]);
        }
        let mut out = Vec::new();
        encode(&v, &mut out).unwrap();
        assert!(decode(&out, 200).is_ok());
        assert_eq!(decode(&out, 199), Err(ValueError::TooDeep { max: 199 }));
        let v = Value::List(vec![v]);
        assert_eq!(encode(&v, &mut out), Err(ValueError::TooDeep { max: 200 }));
        // a depth bomb: 100k nested array heads in 100k bytes
        let bomb = vec![0x81u8; 100_000];
        assert_eq!(decode(&bomb, 200), Err(ValueError::TooDeep { max: 200 }));
    }

    #[test]
    fn rejects_lengths_beyond_the_input_before_allocating() {
        // array of 2^64-1 elements, map of 2^32 entries, bytes of 4 GiB
        for bytes in [
            &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            &[0xba, 0xff, 0xff, 0xff, 0xff][..],
            &[0x5a, 0xff, 0xff, 0xff, 0xff, 0x00][..],
        ] {
            assert_eq!(decode(bytes, 200), Err(ValueError::Truncated));
        }
    }

    #[test]
    fn rejects_indefinite_unknown_and_trailing() {
        assert_eq!(decode(&[0x9f, 0xff], 200), Err(ValueError::Indefinite));
        assert_eq!(decode(&[0x5f, 0xff], 200), Err(ValueError::Indefinite));
        assert_eq!(decode(&[0xbf, 0xff], 200), Err(ValueError::Indefinite));
        assert_eq!(
            decode(&[0xc1, 0x00], 200),
            Err(ValueError::UnsupportedTag(1))
        );
        assert!(matches!(
            decode(&[0xf7], 200),
            Err(ValueError::Malformed(_))
        ));
        assert!(matches!(
            decode(&[0xe0], 200),
            Err(ValueError::Malformed(_))
        ));
        assert!(matches!(
            decode(&[0xff], 200),
            Err(ValueError::Malformed(_))
        ));
        assert_eq!(
            decode(&[0xf6, 0xf6], 200),
            Err(ValueError::TrailingBytes(1))
        );
        assert_eq!(decode(&[], 200), Err(ValueError::Truncated));
        assert!(matches!(
            decode(&[0x62, 0xff, 0xfe], 200),
            Err(ValueError::Malformed(_))
        ));
    }
}
