//! Metadata values: the thirteen GGUF value types, their wire ids, and lossless accessors.

/// A metadata value. Arrays are homogeneous and never nested (readers reject nesting).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Array),
}

/// A metadata array: elements of one type, stored compactly (a vocabulary of 262k strings is one
/// buffer and an end offset each, not 262k allocations of a 32-byte `Value`).
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Strings),
}

/// An array of strings in one buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Strings {
    text: String,
    /// The end of each string in `text`.
    ends: Vec<usize>,
}

impl Strings {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(strings: usize, bytes: usize) -> Self {
        Strings { text: String::with_capacity(bytes), ends: Vec::with_capacity(strings) }
    }

    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
        self.ends.push(self.text.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// String `i`, `None` past the end.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.text[start..end])
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + Clone + '_ {
        (0..self.len()).map(|i| self.get(i).expect("in range"))
    }
}

impl<S: AsRef<str>> FromIterator<S> for Strings {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut out = Strings::new();
        for s in iter {
            out.push(s.as_ref());
        }
        out
    }
}

macro_rules! array_from_vec {
    ($($t:ty => $variant:ident),*) => {
        $(impl From<Vec<$t>> for Array {
            fn from(v: Vec<$t>) -> Array {
                Array::$variant(v)
            }
        })*
    };
}
array_from_vec!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, u64 => U64, i64 => I64,
    f32 => F32, f64 => F64, bool => Bool);

impl From<Strings> for Array {
    fn from(s: Strings) -> Array {
        Array::String(s)
    }
}

impl From<Vec<String>> for Array {
    fn from(v: Vec<String>) -> Array {
        Array::String(v.iter().collect())
    }
}

impl From<Vec<&str>> for Array {
    fn from(v: Vec<&str>) -> Array {
        Array::String(v.iter().collect())
    }
}

/// `Value::Array` of anything an [`Array`] is made from.
impl<T> From<Vec<T>> for Value
where
    Vec<T>: Into<Array>,
{
    fn from(v: Vec<T>) -> Value {
        Value::Array(v.into())
    }
}

impl Array {
    /// The array of `values`, which must all be of one scalar type (`None` for a mix, or an
    /// array in an array); no values make an empty u8 array.
    pub fn from_values(values: impl IntoIterator<Item = Value>) -> Option<Array> {
        let mut values = values.into_iter().peekable();
        macro_rules! all {
            ($variant:ident) => {
                Array::$variant(
                    values
                        .map(|v| match v {
                            Value::$variant(x) => Some(x),
                            _ => None,
                        })
                        .collect::<Option<_>>()?,
                )
            };
        }
        Some(match values.peek() {
            None => Array::U8(Vec::new()),
            Some(Value::U8(_)) => all!(U8),
            Some(Value::I8(_)) => all!(I8),
            Some(Value::U16(_)) => all!(U16),
            Some(Value::I16(_)) => all!(I16),
            Some(Value::U32(_)) => all!(U32),
            Some(Value::I32(_)) => all!(I32),
            Some(Value::U64(_)) => all!(U64),
            Some(Value::I64(_)) => all!(I64),
            Some(Value::F32(_)) => all!(F32),
            Some(Value::F64(_)) => all!(F64),
            Some(Value::Bool(_)) => all!(Bool),
            Some(Value::String(_)) => {
                let strings: Option<Vec<String>> = values
                    .map(|v| match v {
                        Value::String(s) => Some(s),
                        _ => None,
                    })
                    .collect();
                Array::String(strings?.iter().collect())
            }
            Some(Value::Array(_)) => return None,
        })
    }

    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::F64(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as a value (a string is copied), `None` past the end.
    pub fn get(&self, i: usize) -> Option<Value> {
        Some(match self {
            Array::U8(v) => Value::U8(*v.get(i)?),
            Array::I8(v) => Value::I8(*v.get(i)?),
            Array::U16(v) => Value::U16(*v.get(i)?),
            Array::I16(v) => Value::I16(*v.get(i)?),
            Array::U32(v) => Value::U32(*v.get(i)?),
            Array::I32(v) => Value::I32(*v.get(i)?),
            Array::U64(v) => Value::U64(*v.get(i)?),
            Array::I64(v) => Value::I64(*v.get(i)?),
            Array::F32(v) => Value::F32(*v.get(i)?),
            Array::F64(v) => Value::F64(*v.get(i)?),
            Array::Bool(v) => Value::Bool(*v.get(i)?),
            Array::String(v) => Value::String(v.get(i)?.to_string()),
        })
    }

    /// The elements as values (strings copied): for code that handles every type alike.
    pub fn values(&self) -> impl ExactSizeIterator<Item = Value> + '_ {
        (0..self.len()).map(|i| self.get(i).expect("in range"))
    }

    pub fn as_strings(&self) -> Option<&Strings> {
        match self {
            Array::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f32s(&self) -> Option<&[f32]> {
        match self {
            Array::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The elements as i64 where every one is an integer that fits (any integer type).
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        (0..self.len()).map(|i| self.get(i)?.as_i64()).collect()
    }

    /// The elements as u64 where every one is a non-negative integer (any integer type).
    pub fn to_u64s(&self) -> Option<Vec<u64>> {
        (0..self.len()).map(|i| self.get(i)?.as_u64()).collect()
    }

    /// The GGUF name of the element type ("u32", "str", ...).
    pub fn elem_type_name(&self) -> &'static str {
        type_name(self.elem_type_id())
    }

    pub(crate) fn elem_type_id(&self) -> u32 {
        match self {
            Array::U8(_) => type_id::U8,
            Array::I8(_) => type_id::I8,
            Array::U16(_) => type_id::U16,
            Array::I16(_) => type_id::I16,
            Array::U32(_) => type_id::U32,
            Array::I32(_) => type_id::I32,
            Array::U64(_) => type_id::U64,
            Array::I64(_) => type_id::I64,
            Array::F32(_) => type_id::F32,
            Array::F64(_) => type_id::F64,
            Array::Bool(_) => type_id::BOOL,
            Array::String(_) => type_id::STRING,
        }
    }
}

/// The GGUF wire ids of the value types (gguf.h `enum gguf_type`).
pub(crate) mod type_id {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;

    /// Smallest encoded size of one value of a scalar or string type (a string is at least its
    /// 8-byte length); `None` for unknown ids and for arrays.
    pub fn min_encoded_size(id: u32) -> Option<u64> {
        Some(match id {
            U8 | I8 | BOOL => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | STRING => 8,
            _ => return None,
        })
    }
}

impl Value {
    /// Any integer that is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits in an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }

    /// F32, or F64 rounded to f32.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF name of this value's type ("u32", "str", "arr", ...), as gguf_type_name.
    pub fn type_name(&self) -> &'static str {
        type_name(self.type_id())
    }

    pub(crate) fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => type_id::U8,
            Value::I8(_) => type_id::I8,
            Value::U16(_) => type_id::U16,
            Value::I16(_) => type_id::I16,
            Value::U32(_) => type_id::U32,
            Value::I32(_) => type_id::I32,
            Value::U64(_) => type_id::U64,
            Value::I64(_) => type_id::I64,
            Value::F32(_) => type_id::F32,
            Value::F64(_) => type_id::F64,
            Value::Bool(_) => type_id::BOOL,
            Value::String(_) => type_id::STRING,
            Value::Array(_) => type_id::ARRAY,
        }
    }
}

/// gguf_type_name of a wire id; "unknown" for ids outside the table.
pub(crate) fn type_name(id: u32) -> &'static str {
    match id {
        type_id::U8 => "u8",
        type_id::I8 => "i8",
        type_id::U16 => "u16",
        type_id::I16 => "i16",
        type_id::U32 => "u32",
        type_id::I32 => "i32",
        type_id::F32 => "f32",
        type_id::BOOL => "bool",
        type_id::STRING => "str",
        type_id::ARRAY => "arr",
        type_id::U64 => "u64",
        type_id::I64 => "i64",
        type_id::F64 => "f64",
        _ => "unknown",
    }
}
