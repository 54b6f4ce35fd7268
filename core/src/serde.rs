//! The serde bridge: any `Serialize` type to a [`Value`] and back, and
//! `Value` itself as `Serialize + Deserialize`.
//!
//! Mapping (`to_value`): bool → `Bool`; integers → `Int`, or `BigInt` beyond
//! `i64` (u64, i128, u128); floats → `Float`; char and str → `Str`; bytes →
//! `Bytes`; `None`/unit/unit struct → `Null`; `Some(x)` → x; sequences →
//! `List`; tuples and tuple structs → `Tuple`; maps and structs → `Dict`
//! (struct fields as `Str` keys); unit variants → `Str(name)`; other variants
//! → a one-entry `Dict {name: content}` (serde's external tagging, the shape
//! a Python peer can build and read easily); newtype structs are
//! transparent, except the magic names below.
//!
//! Channel references use the newtype trick: a type serializes as a channel
//! by calling `serialize_newtype_struct(CHANNEL_TOKEN, &id_u32)`, which
//! `to_value` turns into `Value::Channel`; `from_value` answers a
//! `deserialize_newtype_struct(CHANNEL_TOKEN, ..)` request on a
//! `Value::Channel` with the u32 id. Sets, frozensets, complex numbers and
//! big integers use private tokens the same way, so `Value` round-trips
//! through `to_value`/`from_value` exactly.

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};
use serde::ser::{self, Serialize};
use serde::{Deserialize, Deserializer, Serializer};

use crate::channel::ChannelId;
use crate::error::ValueError;
use crate::value::{BigInt, ChannelRef, Value};

/// The magic newtype-struct name that marks a channel reference (see the
/// module documentation).
pub const CHANNEL_TOKEN: &str = "$execnet::private::Channel";
const SET_TOKEN: &str = "$execnet::private::Set";
const FROZENSET_TOKEN: &str = "$execnet::private::FrozenSet";
const COMPLEX_TOKEN: &str = "$execnet::private::Complex";
const BIGINT_TOKEN: &str = "$execnet::private::BigInt";
/// Requested by `Value::deserialize`: our deserializer then reports every
/// variant exactly (as an enum), other deserializers just pass through.
const VALUE_TOKEN: &str = "$execnet::private::Value";

/// Converts any serializable value to a [`Value`].
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, ValueError> {
    value.serialize(ValueSerializer)
}

/// Converts a [`Value`] to any deserializable type.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ValueError> {
    T::deserialize(ValueDeserializer {
        value,
        exact: false,
    })
}

// ---- Serialize for Value ----

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use ser::{SerializeMap, SerializeSeq, SerializeTuple};
        match self {
            Value::Null => s.serialize_none(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(n) => s.serialize_i64(*n),
            Value::BigInt(b) => {
                if let Ok(n) = i128::try_from(b) {
                    s.serialize_i128(n)
                } else if let Ok(n) = u128::try_from(b) {
                    s.serialize_u128(n)
                } else {
                    s.serialize_newtype_struct(
                        BIGINT_TOKEN,
                        &(b.is_negative(), serde_bytes(b.magnitude())),
                    )
                }
            }
            Value::Float(f) => s.serialize_f64(*f),
            Value::Complex(re, im) => s.serialize_newtype_struct(COMPLEX_TOKEN, &(*re, *im)),
            Value::Bytes(b) => s.serialize_bytes(b),
            Value::Str(t) => s.serialize_str(t),
            Value::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Tuple(items) => {
                let mut tup = s.serialize_tuple(items.len())?;
                for item in items {
                    tup.serialize_element(item)?;
                }
                tup.end()
            }
            Value::Dict(pairs) => {
                let mut map = s.serialize_map(Some(pairs.len()))?;
                for (k, v) in pairs {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            Value::Set(items) => s.serialize_newtype_struct(SET_TOKEN, &SeqOf(items)),
            Value::FrozenSet(items) => s.serialize_newtype_struct(FROZENSET_TOKEN, &SeqOf(items)),
            Value::Channel(c) => s.serialize_newtype_struct(CHANNEL_TOKEN, &c.0 .0),
        }
    }
}

struct SeqOf<'a>(&'a [Value]);

impl Serialize for SeqOf<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0)
    }
}

struct Bytes<'a>(&'a [u8]);

fn serde_bytes(b: &[u8]) -> Bytes<'_> {
    Bytes(b)
}

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

// ---- to_value ----

#[derive(Debug, Clone, Copy)]
struct ValueSerializer;

/// Collects elements of a sequence, tuple or tuple struct/variant.
#[derive(Debug)]
struct SeqSerializer {
    items: Vec<Value>,
    tuple: bool,
    variant: Option<&'static str>,
}

/// Collects entries of a map or struct/struct variant.
#[derive(Debug)]
struct MapSerializer {
    pairs: Vec<(Value, Value)>,
    key: Option<Value>,
    variant: Option<&'static str>,
}

fn tagged(variant: Option<&'static str>, value: Value) -> Value {
    match variant {
        Some(name) => Value::Dict(vec![(Value::str(name), value)]),
        None => value,
    }
}

impl Serializer for ValueSerializer {
    type Ok = Value;
    type Error = ValueError;
    type SerializeSeq = SeqSerializer;
    type SerializeTuple = SeqSerializer;
    type SerializeTupleStruct = SeqSerializer;
    type SerializeTupleVariant = SeqSerializer;
    type SerializeMap = MapSerializer;
    type SerializeStruct = MapSerializer;
    type SerializeStructVariant = MapSerializer;

    fn serialize_bool(self, v: bool) -> Result<Value, ValueError> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, ValueError> {
        Ok(Value::Int(i64::from(v)))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, ValueError> {
        Ok(Value::Int(i64::from(v)))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, ValueError> {
        Ok(Value::Int(i64::from(v)))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, ValueError> {
        Ok(Value::Int(v))
    }
    fn serialize_i128(self, v: i128) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_u8(self, v: u8) -> Result<Value, ValueError> {
        Ok(Value::Int(i64::from(v)))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, ValueError> {
        Ok(Value::Int(i64::from(v)))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, ValueError> {
        Ok(Value::Int(i64::from(v)))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_u128(self, v: u128) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_f32(self, v: f32) -> Result<Value, ValueError> {
        Ok(Value::Float(f64::from(v)))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, ValueError> {
        Ok(Value::Float(v))
    }
    fn serialize_char(self, v: char) -> Result<Value, ValueError> {
        Ok(Value::Str(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, ValueError> {
        Ok(Value::str(v))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, ValueError> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn serialize_none(self) -> Result<Value, ValueError> {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, ValueError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, ValueError> {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, ValueError> {
        Ok(Value::Null)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Value, ValueError> {
        Ok(Value::str(variant))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<Value, ValueError> {
        let inner = value.serialize(self)?;
        let bad = |what: &str| ValueError::Custom(format!("{what}: unexpected content"));
        Ok(match name {
            CHANNEL_TOKEN => match inner {
                Value::Int(n) => match u32::try_from(n) {
                    Ok(id) if id != 0 => Value::Channel(ChannelRef(ChannelId(id))),
                    _ => return Err(bad("channel id")),
                },
                _ => return Err(bad("channel id")),
            },
            SET_TOKEN => match inner {
                Value::List(items) => Value::Set(items),
                _ => return Err(bad("set")),
            },
            FROZENSET_TOKEN => match inner {
                Value::List(items) => Value::FrozenSet(items),
                _ => return Err(bad("frozenset")),
            },
            COMPLEX_TOKEN => match inner {
                Value::Tuple(items) => match items.as_slice() {
                    [Value::Float(re), Value::Float(im)] => Value::Complex(*re, *im),
                    _ => return Err(bad("complex")),
                },
                _ => return Err(bad("complex")),
            },
            BIGINT_TOKEN => match inner {
                Value::Tuple(items) => match items.as_slice() {
                    [Value::Bool(neg), Value::Bytes(mag)] => {
                        Value::from_bigint(BigInt::from_sign_magnitude(*neg, mag))
                    }
                    _ => return Err(bad("big integer")),
                },
                _ => return Err(bad("big integer")),
            },
            _ => inner,
        })
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, ValueError> {
        Ok(tagged(Some(variant), value.serialize(self)?))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqSerializer, ValueError> {
        Ok(SeqSerializer {
            items: Vec::with_capacity(len.unwrap_or(0).min(4096)),
            tuple: false,
            variant: None,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqSerializer, ValueError> {
        Ok(SeqSerializer {
            items: Vec::with_capacity(len.min(4096)),
            tuple: true,
            variant: None,
        })
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<SeqSerializer, ValueError> {
        self.serialize_tuple(len)
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<SeqSerializer, ValueError> {
        Ok(SeqSerializer {
            items: Vec::with_capacity(len.min(4096)),
            tuple: true,
            variant: Some(variant),
        })
    }
    fn serialize_map(self, len: Option<usize>) -> Result<MapSerializer, ValueError> {
        Ok(MapSerializer {
            pairs: Vec::with_capacity(len.unwrap_or(0).min(4096)),
            key: None,
            variant: None,
        })
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<MapSerializer, ValueError> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<MapSerializer, ValueError> {
        Ok(MapSerializer {
            pairs: Vec::with_capacity(len.min(4096)),
            key: None,
            variant: Some(variant),
        })
    }
}

impl SeqSerializer {
    fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        self.items.push(value.serialize(ValueSerializer)?);
        Ok(())
    }
    fn finish(self) -> Value {
        let v = if self.tuple {
            Value::Tuple(self.items)
        } else {
            Value::List(self.items)
        };
        tagged(self.variant, v)
    }
}

impl ser::SerializeSeq for SeqSerializer {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        self.push(value)
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(self.finish())
    }
}

impl ser::SerializeTuple for SeqSerializer {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        self.push(value)
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(self.finish())
    }
}

impl ser::SerializeTupleStruct for SeqSerializer {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        self.push(value)
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(self.finish())
    }
}

impl ser::SerializeTupleVariant for SeqSerializer {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        self.push(value)
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(self.finish())
    }
}

impl MapSerializer {
    fn finish(self) -> Value {
        tagged(self.variant, Value::Dict(self.pairs))
    }
}

impl ser::SerializeMap for MapSerializer {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), ValueError> {
        self.key = Some(key.serialize(ValueSerializer)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        let key = self
            .key
            .take()
            .ok_or_else(|| ValueError::Custom("map value without key".into()))?;
        self.pairs.push((key, value.serialize(ValueSerializer)?));
        Ok(())
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(self.finish())
    }
}

impl ser::SerializeStruct for MapSerializer {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), ValueError> {
        self.pairs
            .push((Value::str(key), value.serialize(ValueSerializer)?));
        Ok(())
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(self.finish())
    }
}

impl ser::SerializeStructVariant for MapSerializer {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), ValueError> {
        ser::SerializeStruct::serialize_field(self, key, value)
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(self.finish())
    }
}

// ---- Deserialize for Value ----

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        // Our own deserializer recognises the token and reports the exact
        // variant through `visit_enum`; any other passes the request through
        // to `deserialize_any` (via `visit_newtype_struct`).
        d.deserialize_newtype_struct(VALUE_TOKEN, ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::str(v))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(v))
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element::<Value>()? {
            items.push(item);
        }
        Ok(Value::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(4096));
        while let Some((k, v)) = map.next_entry::<Value, Value>()? {
            pairs.push((k, v));
        }
        Ok(Value::Dict(pairs))
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        // Only `ValueDeserializer` in exact mode calls this.
        let (kind, variant): (String, A::Variant) = data.variant()?;
        match kind.as_str() {
            "Tuple" => Ok(Value::Tuple(variant.newtype_variant()?)),
            "Set" => Ok(Value::Set(variant.newtype_variant()?)),
            "FrozenSet" => Ok(Value::FrozenSet(variant.newtype_variant()?)),
            "Complex" => {
                let (re, im) = variant.newtype_variant()?;
                Ok(Value::Complex(re, im))
            }
            "BigInt" => {
                let (neg, mag): (bool, serde_byte_buf::ByteBuf) = variant.newtype_variant()?;
                Ok(Value::BigInt(BigInt::from_sign_magnitude(neg, &mag.0)))
            }
            "Channel" => {
                let id: u32 = variant.newtype_variant()?;
                Ok(Value::Channel(ChannelRef(ChannelId(id))))
            }
            _ => Err(de::Error::custom("unexpected value variant")),
        }
    }
}

mod serde_byte_buf {
    use serde::de::{Deserialize, Deserializer, Visitor};

    /// Owned bytes deserialized through `deserialize_byte_buf`.
    pub struct ByteBuf(pub Vec<u8>);

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ByteBuf, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }
}

// ---- from_value ----

/// Presents one [`Value`] to a `Deserialize` impl.
#[derive(Debug)]
struct ValueDeserializer {
    value: Value,
    /// `Value::deserialize` asked: report tuples, sets, frozensets, complex
    /// numbers, big integers and channels as enum variants so nothing is
    /// lost.
    exact: bool,
}

fn vd(value: Value) -> ValueDeserializer {
    ValueDeserializer {
        value,
        exact: false,
    }
}

fn unexpected(v: &Value) -> de::Unexpected<'_> {
    match v {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Int(n) => de::Unexpected::Signed(*n),
        Value::Float(f) => de::Unexpected::Float(*f),
        Value::Str(s) => de::Unexpected::Str(s),
        Value::Bytes(b) => de::Unexpected::Bytes(b),
        Value::List(_) | Value::Tuple(_) | Value::Set(_) | Value::FrozenSet(_) => {
            de::Unexpected::Seq
        }
        Value::Dict(_) => de::Unexpected::Map,
        other => de::Unexpected::Other(other.type_name()),
    }
}

impl<'de> Deserializer<'de> for ValueDeserializer {
    type Error = ValueError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        if self.exact {
            let kind = match &self.value {
                Value::Tuple(_) => Some("Tuple"),
                Value::Set(_) => Some("Set"),
                Value::FrozenSet(_) => Some("FrozenSet"),
                Value::Complex(..) => Some("Complex"),
                Value::BigInt(_) => Some("BigInt"),
                Value::Channel(_) => Some("Channel"),
                _ => None,
            };
            if let Some(kind) = kind {
                return visitor.visit_enum(ExactEnum {
                    kind,
                    value: self.value,
                });
            }
        }
        match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Int(n) => visitor.visit_i64(n),
            Value::BigInt(b) => {
                if let Ok(n) = u64::try_from(&b) {
                    visitor.visit_u64(n)
                } else if let Ok(n) = i128::try_from(&b) {
                    visitor.visit_i128(n)
                } else if let Ok(n) = u128::try_from(&b) {
                    visitor.visit_u128(n)
                } else {
                    Err(de::Error::custom(format!("integer {b} out of range")))
                }
            }
            Value::Float(f) => visitor.visit_f64(f),
            Value::Complex(re, im) => {
                visitor.visit_seq(Seq::new(vec![Value::Float(re), Value::Float(im)]))
            }
            Value::Bytes(b) => visitor.visit_byte_buf(b),
            Value::Str(s) => visitor.visit_string(s),
            Value::List(items)
            | Value::Tuple(items)
            | Value::Set(items)
            | Value::FrozenSet(items) => visitor.visit_seq(Seq::new(items)),
            Value::Dict(pairs) => visitor.visit_map(Map::new(pairs)),
            Value::Channel(c) => visitor.visit_u32(c.0 .0),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self.value {
            Value::Null => visitor.visit_none(),
            value => visitor.visit_some(vd(value)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        match name {
            VALUE_TOKEN => self.exact_any(visitor),
            CHANNEL_TOKEN => match self.value {
                Value::Channel(c) => visitor.visit_newtype_struct(c.0 .0.into_deserializer()),
                other => Err(de::Error::invalid_type(unexpected(&other), &"a channel")),
            },
            _ => visitor.visit_newtype_struct(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        match self.value {
            Value::Str(s) => visitor.visit_enum(s.into_deserializer()),
            Value::Dict(mut pairs) if pairs.len() == 1 => {
                let (k, v) = pairs.remove(0);
                match k {
                    Value::Str(name) => visitor.visit_enum(Variant { name, value: v }),
                    other => Err(de::Error::invalid_type(
                        unexpected(&other),
                        &"a variant name",
                    )),
                }
            }
            other => Err(de::Error::invalid_type(
                unexpected(&other),
                &"a variant name or a one-entry dict",
            )),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self.value {
            Value::Null => visitor.visit_unit(),
            other => Err(de::Error::invalid_type(unexpected(&other), &"None")),
        }
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match &self.value {
            Value::Int(n) => visitor.visit_i128(i128::from(*n)),
            Value::BigInt(b) => match i128::try_from(b) {
                Ok(n) => visitor.visit_i128(n),
                Err(_) => Err(de::Error::custom(format!(
                    "integer {b} out of range for i128"
                ))),
            },
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match &self.value {
            Value::Int(n) if *n >= 0 => visitor.visit_u128(*n as u128),
            Value::BigInt(b) => match u128::try_from(b) {
                Ok(n) => visitor.visit_u128(n),
                Err(_) => Err(de::Error::custom(format!(
                    "integer {b} out of range for u128"
                ))),
            },
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string
        bytes byte_buf unit_struct seq tuple
        tuple_struct map struct identifier
    }
}

impl ValueDeserializer {
    fn exact_any<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        ValueDeserializer {
            value: self.value,
            exact: true,
        }
        .deserialize_any(visitor)
    }
}

struct Seq {
    items: std::vec::IntoIter<Value>,
}

impl Seq {
    fn new(items: Vec<Value>) -> Seq {
        Seq {
            items: items.into_iter(),
        }
    }
}

impl<'de> SeqAccess<'de> for Seq {
    type Error = ValueError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ValueError> {
        match self.items.next() {
            Some(v) => seed.deserialize(vd(v)).map(Some),
            None => Ok(None),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Map {
    pairs: std::vec::IntoIter<(Value, Value)>,
    value: Option<Value>,
}

impl Map {
    fn new(pairs: Vec<(Value, Value)>) -> Map {
        Map {
            pairs: pairs.into_iter(),
            value: None,
        }
    }
}

impl<'de> MapAccess<'de> for Map {
    type Error = ValueError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ValueError> {
        match self.pairs.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(vd(k)).map(Some)
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ValueError> {
        let v = self
            .value
            .take()
            .ok_or_else(|| ValueError::Custom("map value requested before key".into()))?;
        seed.deserialize(vd(v))
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.pairs.len())
    }
}

/// An externally tagged enum variant: `{name: value}`.
struct Variant {
    name: String,
    value: Value,
}

impl<'de> EnumAccess<'de> for Variant {
    type Error = ValueError;
    type Variant = VariantValue;
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, VariantValue), ValueError> {
        let name = seed.deserialize(vd(Value::Str(self.name)))?;
        Ok((name, VariantValue(self.value)))
    }
}

struct VariantValue(Value);

impl<'de> VariantAccess<'de> for VariantValue {
    type Error = ValueError;
    fn unit_variant(self) -> Result<(), ValueError> {
        match self.0 {
            Value::Null => Ok(()),
            other => Err(de::Error::invalid_type(unexpected(&other), &"unit variant")),
        }
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, ValueError> {
        seed.deserialize(vd(self.0))
    }
    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        vd(self.0).deserialize_any(visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        vd(self.0).deserialize_any(visitor)
    }
}

/// Exact mode: a Value variant that serde's data model lacks, as an enum.
struct ExactEnum {
    kind: &'static str,
    value: Value,
}

impl<'de> EnumAccess<'de> for ExactEnum {
    type Error = ValueError;
    type Variant = ExactVariant;
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, ExactVariant), ValueError> {
        let kind = seed.deserialize(vd(Value::str(self.kind)))?;
        Ok((kind, ExactVariant(self.value)))
    }
}

struct ExactVariant(Value);

impl<'de> VariantAccess<'de> for ExactVariant {
    type Error = ValueError;
    fn unit_variant(self) -> Result<(), ValueError> {
        Err(de::Error::custom("not a unit variant"))
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, ValueError> {
        let inner = match self.0 {
            Value::Tuple(items) | Value::Set(items) | Value::FrozenSet(items) => Value::List(items),
            Value::Complex(re, im) => Value::Tuple(vec![Value::Float(re), Value::Float(im)]),
            Value::BigInt(b) => Value::Tuple(vec![
                Value::Bool(b.is_negative()),
                Value::Bytes(b.magnitude().to_vec()),
            ]),
            Value::Channel(c) => Value::Int(i64::from(c.0 .0)),
            other => other,
        };
        seed.deserialize(vd(inner))
    }
    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        _visitor: V,
    ) -> Result<V::Value, ValueError> {
        Err(de::Error::custom("not a tuple variant"))
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, ValueError> {
        Err(de::Error::custom("not a struct variant"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Point {
        x: i32,
        y: Option<String>,
        tags: Vec<u8>,
        pair: (u64, i128),
    }

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    enum Shape {
        Empty,
        Circle(f64),
        Rect { w: u32, h: u32 },
        Pair(i8, i8),
    }

    struct Chan(u32);

    impl Serialize for Chan {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_newtype_struct(CHANNEL_TOKEN, &self.0)
        }
    }

    impl<'de> Deserialize<'de> for Chan {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Chan, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Chan;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a channel")
                }
                fn visit_newtype_struct<D: Deserializer<'de>>(
                    self,
                    d: D,
                ) -> Result<Chan, D::Error> {
                    u32::deserialize(d).map(Chan)
                }
            }
            d.deserialize_newtype_struct(CHANNEL_TOKEN, V)
        }
    }

    #[test]
    fn structs_tuples_and_sequences() {
        let p = Point {
            x: -3,
            y: Some("a".into()),
            tags: vec![1, 2],
            pair: (u64::MAX, i128::MIN),
        };
        let v = to_value(&p).unwrap();
        assert_eq!(v.get("x"), Some(&Value::Int(-3)));
        assert_eq!(
            v.get("tags"),
            Some(&Value::List(vec![Value::Int(1), Value::Int(2)]))
        );
        assert!(matches!(v.get("pair"), Some(Value::Tuple(t)) if matches!(t[0], Value::BigInt(_))));
        assert_eq!(from_value::<Point>(v).unwrap(), p);
    }

    #[test]
    fn enums_are_strings_or_one_entry_dicts() {
        assert_eq!(to_value(&Shape::Empty).unwrap(), Value::str("Empty"));
        let c = to_value(&Shape::Circle(1.5)).unwrap();
        assert_eq!(
            c,
            Value::Dict(vec![(Value::str("Circle"), Value::Float(1.5))])
        );
        for s in [
            Shape::Empty,
            Shape::Circle(2.0),
            Shape::Rect { w: 1, h: 2 },
            Shape::Pair(-1, 1),
        ] {
            let v = to_value(&s).unwrap();
            assert_eq!(from_value::<Shape>(v).unwrap(), s);
        }
    }

    #[test]
    fn channel_token() {
        let v = to_value(&vec![Chan(5)]).unwrap();
        assert_eq!(
            v,
            Value::List(vec![Value::Channel(ChannelRef(ChannelId(5)))])
        );
        let back: Vec<Chan> = from_value(v).unwrap();
        assert_eq!(back[0].0, 5);
        assert!(from_value::<Chan>(Value::Int(5)).is_err());
    }

    #[test]
    fn maps_with_non_string_keys() {
        let mut m = BTreeMap::new();
        m.insert((1, 2), "a");
        let v = to_value(&m).unwrap();
        assert_eq!(
            v,
            Value::Dict(vec![(
                Value::Tuple(vec![Value::Int(1), Value::Int(2)]),
                Value::str("a")
            )])
        );
        let back: BTreeMap<(i32, i32), String> = from_value(v).unwrap();
        assert_eq!(back[&(1, 2)], "a");
    }

    #[test]
    fn value_round_trips_exactly() {
        let v = Value::Dict(vec![
            (
                Value::Tuple(vec![Value::Int(1)]),
                Value::Set(vec![Value::FrozenSet(vec![Value::Null])]),
            ),
            (Value::str("c"), Value::Complex(1.0, -1.0)),
            (Value::str("big"), Value::from(-(1i128 << 100))),
            (
                Value::str("huge"),
                Value::BigInt(
                    "123456789012345678901234567890123456789012"
                        .parse()
                        .unwrap(),
                ),
            ),
            (Value::str("ch"), Value::Channel(ChannelRef(ChannelId(7)))),
            (
                Value::Bytes(vec![1, 2]),
                Value::List(vec![Value::Bool(true)]),
            ),
        ]);
        let through = to_value(&v).unwrap();
        assert_eq!(through, v);
        let back: Value = from_value(v.clone()).unwrap();
        assert_eq!(back, v);
        // through serde_json: lossy but works
        let json =
            serde_json::to_string(&Value::List(vec![Value::Int(1), Value::str("a")])).unwrap();
        assert_eq!(json, r#"[1,"a"]"#);
        let from_json: Value = serde_json::from_str(r#"{"a": [1, 2.5, null]}"#).unwrap();
        assert_eq!(
            from_json,
            Value::Dict(vec![(
                Value::str("a"),
                Value::List(vec![Value::Int(1), Value::Float(2.5), Value::Null])
            )])
        );
    }
}
