//! The serde bridge: any `Serialize` type to a [`Value`] and back.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ValueError;
use crate::value::Value;

/// The magic newtype-struct name that marks a channel reference.
pub const CHANNEL_TOKEN: &str = "$execnet::private::Channel";

/// Converts any serializable value to a [`Value`].
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, ValueError> {
    let _ = value;
    todo!()
}

/// Converts a [`Value`] to any deserializable type.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ValueError> {
    let _ = value;
    todo!()
}
