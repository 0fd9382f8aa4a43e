//! Typed metadata getters for the runtime: each error names the key and what was found.
//!
//! Integer getters accept any integer type whose value fits (writers disagree on u32 vs i32 vs
//! u64 for the same key); floats accept f32 and f64; nothing converts between kinds.

use super::{Array, GgufError, GgufFile, Value};

fn wrong(key: &str, expected: &'static str, found: &Value) -> GgufError {
    GgufError::WrongType {
        key: key.to_string(),
        expected,
        found: found.type_name(),
    }
}

fn int<T: TryFrom<i128>>(key: &str, v: &Value, target: &'static str) -> Result<T, GgufError> {
    let wide: i128 = match (v.as_i64(), v.as_u64()) {
        (Some(i), _) => i.into(),
        (None, Some(u)) => u.into(),
        (None, None) => return Err(wrong(key, "an integer", v)),
    };
    T::try_from(wide).map_err(|_| GgufError::OutOfRange {
        key: key.to_string(),
        value: wide.to_string(),
        target,
    })
}

fn float(key: &str, v: &Value) -> Result<f32, GgufError> {
    v.as_f32().ok_or_else(|| wrong(key, "a float", v))
}

fn array<'a>(key: &str, v: &'a Value) -> Result<&'a Array, GgufError> {
    v.as_array().ok_or_else(|| wrong(key, "an array", v))
}

fn wrong_elements(key: &str, expected: &'static str, found: &Array) -> GgufError {
    GgufError::WrongType {
        key: key.to_string(),
        expected,
        found: found.elem_type_name(),
    }
}

/// Getters come in two forms: `get_x` (missing key is an error) and `opt_x` (missing key is
/// `Ok(None)`, a present key of the wrong type is still an error).
macro_rules! getters {
    ($( $get:ident, $opt:ident, $ty:ty, |$key:ident, $v:ident| $conv:expr; )*) => {
        impl GgufFile {
            $(
                pub fn $get(&self, key: &str) -> Result<$ty, GgufError> {
                    self.$opt(key)?.ok_or_else(|| GgufError::MissingKey(key.to_string()))
                }
                pub fn $opt(&self, key: &str) -> Result<Option<$ty>, GgufError> {
                    let $key = key;
                    match self.get(key) {
                        None => Ok(None),
                        Some($v) => $conv.map(Some),
                    }
                }
            )*
        }
    };
}

getters! {
    get_u32, opt_u32, u32, |k, v| int(k, v, "u32");
    get_u64, opt_u64, u64, |k, v| int(k, v, "u64");
    get_i32, opt_i32, i32, |k, v| int(k, v, "i32");
    get_i64, opt_i64, i64, |k, v| int(k, v, "i64");
    get_usize, opt_usize, usize, |k, v| int(k, v, "usize");
    get_f32, opt_f32, f32, |k, v| float(k, v);
    get_bool, opt_bool, bool, |k, v| v.as_bool().ok_or_else(|| wrong(k, "a bool", v));
    get_str, opt_str, &str, |k, v| v.as_str().ok_or_else(|| wrong(k, "a string", v));
    get_array, opt_array, &Array, |k, v| array(k, v);
    get_str_array, opt_str_array, Vec<&str>, |k, v| array(k, v).and_then(|a| {
        a.as_strings().map(|s| s.iter().collect()).ok_or_else(|| wrong_elements(k, "an array of strings", a))
    });
    get_f32_array, opt_f32_array, Vec<f32>, |k, v| array(k, v)?
        .values()
        .map(|e| float(k, &e))
        .collect::<Result<Vec<_>, _>>();
    get_i32_array, opt_i32_array, Vec<i32>, |k, v| array(k, v)?
        .values()
        .map(|e| int(k, &e, "i32"))
        .collect::<Result<Vec<_>, _>>();
    get_u32_array, opt_u32_array, Vec<u32>, |k, v| array(k, v)?
        .values()
        .map(|e| int(k, &e, "u32"))
        .collect::<Result<Vec<_>, _>>();
}
