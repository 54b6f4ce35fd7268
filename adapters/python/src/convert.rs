//! Python objects <-> `execnet::Value`, both ways in Rust, keeping exact
//! types (DESIGN.md §5): int vs bool, tuple vs list, bytes vs str,
//! set/frozenset, big ints of any sign, float specials, complex, and
//! channels inside any structure.

use execnet::blocking;
use execnet::{BigInt, ChannelRef, Value};
use execnet_core::ChannelId;
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyComplex, PyDict, PyFloat, PyFrozenSet, PyInt, PyList,
    PyMemoryView, PySet, PyString, PyTuple,
};

use crate::errors::dump_error;
use crate::registry;

/// How deep a value may nest (the engine's decoder limit, `Config::max_depth`).
pub(crate) const MAX_DEPTH: u32 = 200;

/// What a conversion needs to know about the gateway the value travels on.
pub(crate) struct Ctx<'a> {
    /// The engine gateway (channel references are resolved on it).
    pub gw: &'a blocking::Gateway,
    /// The Python `Gateway` object new channels belong to.
    pub pygw: &'a Py<PyAny>,
}

/// Converts a Python object for sending on `ctx`'s gateway (`ctx` None:
/// `dumps`, where a channel is refused). `DumpError` for anything else.
pub(crate) fn to_value(obj: &Bound<'_, PyAny>, ctx: Option<&Ctx<'_>>) -> PyResult<Value> {
    to_value_depth(obj, ctx, 0)
}

/// The largest bytes buffer a thread keeps between sends ([`item_value`]).
const SPARE_MAX: usize = 8 << 20;

thread_local! {
    /// The buffer of this thread's last `bytes` item, for its next one.
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// [`to_value`] for an item about to be sent: a `bytes` item is copied into
/// the buffer its thread's previous one used (give it back with
/// [`recycle`]). Why: a fresh megabyte per item came from fresh pages each
/// time (glibc hands freed memory above its trim threshold back to the
/// kernel), ~490 page faults per MiB sent, which held a Python host's bulk
/// sends at ~1,000 MiB/s; the engine's own encode buffer is the only fresh
/// allocation left per item, as for a Rust host.
pub(crate) fn item_value(obj: &Bound<'_, PyAny>, ctx: Option<&Ctx<'_>>) -> PyResult<Value> {
    if let Ok(b) = obj.cast_exact::<PyBytes>() {
        let mut buf = SPARE.with(|s| s.take());
        buf.clear();
        buf.extend_from_slice(b.as_bytes());
        return Ok(Value::Bytes(buf));
    }
    to_value(obj, ctx)
}

/// Keeps a sent item's bytes buffer for this thread's next [`item_value`]
/// (up to [`SPARE_MAX`], so that one huge item is not held for good).
pub(crate) fn recycle(v: Value) {
    if let Value::Bytes(buf) = v {
        if buf.capacity() <= SPARE_MAX {
            SPARE.with(|s| s.set(buf));
        }
    }
}

fn to_value_depth(obj: &Bound<'_, PyAny>, ctx: Option<&Ctx<'_>>, depth: u32) -> PyResult<Value> {
    let py = obj.py();
    if depth > MAX_DEPTH {
        return Err(dump_error(
            py,
            format!("value nested deeper than {MAX_DEPTH}"),
        ));
    }
    // Exact types first (the common case), then subclasses.
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(s) = obj.cast_exact::<PyString>() {
        return str_value(s);
    }
    if let Ok(b) = obj.cast_exact::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if let Ok(i) = obj.cast::<PyInt>() {
        if obj.is_instance_of::<PyBool>() {
            return Ok(Value::Bool(obj.is_truthy()?));
        }
        return int_to_value(i);
    }
    if let Ok(b) = obj.cast_exact::<PyBytes>() {
        return Ok(Value::Bytes(b.as_bytes().to_vec()));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Value::Float(f.value()));
    }
    let seq = |items: &mut dyn Iterator<Item = Bound<'_, PyAny>>| -> PyResult<Vec<Value>> {
        items.map(|x| to_value_depth(&x, ctx, depth + 1)).collect()
    };
    if let Ok(t) = obj.cast::<PyTuple>() {
        return Ok(Value::Tuple(seq(&mut t.iter())?));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return Ok(Value::List(seq(&mut l.iter())?));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut pairs = Vec::with_capacity(d.len());
        for (k, v) in d.iter() {
            pairs.push((
                to_value_depth(&k, ctx, depth + 1)?,
                to_value_depth(&v, ctx, depth + 1)?,
            ));
        }
        return Ok(Value::Dict(pairs));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return str_value(s);
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Value::Bytes(b.as_bytes().to_vec()));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Value::Bytes(b.to_vec()));
    }
    if obj.is_instance_of::<PyMemoryView>() {
        let b = obj.call_method0("tobytes")?;
        let b = b.cast::<PyBytes>()?;
        return Ok(Value::Bytes(b.as_bytes().to_vec()));
    }
    if let Ok(c) = obj.cast::<PyComplex>() {
        return Ok(Value::Complex(c.real(), c.imag()));
    }
    if let Ok(s) = obj.cast::<PyFrozenSet>() {
        return Ok(Value::FrozenSet(seq(&mut s.iter())?));
    }
    if let Ok(s) = obj.cast::<PySet>() {
        return Ok(Value::Set(seq(&mut s.iter())?));
    }
    let reg = registry(py)?;
    if obj.is_instance(reg.channel.bind(py))? {
        let core = obj.getattr("_ch")?;
        let core = core.cast::<crate::objects::Channel>()?;
        let ch = core.get().channel()?;
        return match ctx {
            None => Err(dump_error(
                py,
                "a channel can only be sent on a channel of its gateway".to_string(),
            )),
            Some(ctx) if ch.gateway().id() != ctx.gw.id() => Err(dump_error(
                py,
                format!(
                    "channel {} belongs to gateway {}, not {}",
                    ch.id(),
                    ch.gateway().id(),
                    ctx.gw.id()
                ),
            )),
            Some(_) => Ok(Value::Channel(ChannelRef(ChannelId(ch.id())))),
        };
    }
    Err(dump_error(
        py,
        // execnet's text: "can't serialize <class 'set_iterator'>"
        format!(
            "can't serialize {}",
            obj.get_type()
                .repr()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ),
    ))
}

fn int_to_value(i: &Bound<'_, PyInt>) -> PyResult<Value> {
    if let Ok(n) = i.extract::<i64>() {
        return Ok(Value::Int(n));
    }
    // Beyond i64: sign and big-endian magnitude through int.to_bytes
    // (abi3 has no C API for it).
    let negative = i.lt(0)?;
    let mag = if negative {
        i.neg()?
    } else {
        i.clone().into_any()
    };
    let bits: usize = mag.call_method0("bit_length")?.extract()?;
    let bytes = mag.call_method1("to_bytes", (bits.div_ceil(8), "big"))?;
    let bytes = bytes.cast::<PyBytes>()?;
    Ok(Value::BigInt(BigInt::from_sign_magnitude(
        negative,
        bytes.as_bytes(),
    )))
}

/// Converts a received value to Python; channel references become
/// `Channel` objects of `ctx`'s gateway.
pub(crate) fn to_py(py: Python<'_>, value: Value, ctx: Option<&Ctx<'_>>) -> PyResult<Py<PyAny>> {
    Ok(match value {
        Value::Null => py.None(),
        Value::Bool(b) => PyBool::new(py, b).to_owned().into_any().unbind(),
        Value::Int(n) => n.into_pyobject(py)?.into_any().unbind(),
        Value::BigInt(b) => {
            let bytes = PyBytes::new(py, b.magnitude());
            let int_type = py.get_type::<PyInt>();
            let n = int_type.call_method1("from_bytes", (bytes, "big"))?;
            if b.is_negative() {
                n.neg()?.unbind()
            } else {
                n.unbind()
            }
        }
        Value::Float(f) => PyFloat::new(py, f).into_any().unbind(),
        Value::Complex(re, im) => PyComplex::from_doubles(py, re, im).into_any().unbind(),
        Value::Bytes(b) => PyBytes::new(py, &b).into_any().unbind(),
        Value::Str(s) => PyString::new(py, &s).into_any().unbind(),
        Value::List(items) => {
            let v = items
                .into_iter()
                .map(|x| to_py(py, x, ctx))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, v)?.into_any().unbind()
        }
        Value::Tuple(items) => {
            let v = items
                .into_iter()
                .map(|x| to_py(py, x, ctx))
                .collect::<PyResult<Vec<_>>>()?;
            PyTuple::new(py, v)?.into_any().unbind()
        }
        Value::Dict(pairs) => {
            let d = PyDict::new(py);
            for (k, v) in pairs {
                d.set_item(to_py(py, k, ctx)?, to_py(py, v, ctx)?)?;
            }
            d.into_any().unbind()
        }
        Value::Set(items) => {
            let s = PySet::empty(py)?;
            for x in items {
                s.add(to_py(py, x, ctx)?)?;
            }
            s.into_any().unbind()
        }
        Value::FrozenSet(items) => {
            let v = items
                .into_iter()
                .map(|x| to_py(py, x, ctx))
                .collect::<PyResult<Vec<_>>>()?;
            PyFrozenSet::new(py, v.iter())?.into_any().unbind()
        }
        Value::Channel(r) => match ctx {
            Some(ctx) => {
                let ch = ctx.gw.channel_from_ref(r);
                crate::objects::wrap_channel(py, ctx.pygw, ch)?
            }
            None => {
                return Err(crate::errors::load_error(
                    py,
                    "a channel reference outside a gateway".into(),
                ))
            }
        },
    })
}

fn str_value(s: &Bound<'_, PyString>) -> PyResult<Value> {
    match s.to_cow() {
        Ok(c) => Ok(Value::Str(c.into_owned())),
        Err(e) => Err(dump_error(s.py(), format!("can't serialize str: {e}"))),
    }
}
