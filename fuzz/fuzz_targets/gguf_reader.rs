//! Fuzzes the GGUF reader: any input must give Ok or a typed error (never a panic, abort or
//! out-of-bounds read). Files that open are walked completely and written back through
//! GgufWriter; the rewritten file must open with the same metadata and tensor bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tomoe::gguf::{GgufFile, GgufWriter, Value};

/// Bitwise equality (NaN payloads count as equal to themselves).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.values().zip(y.values()).all(|(a, b)| same_value(&a, &b))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };

    let mut w = GgufWriter::new();
    for (k, v) in file.metadata() {
        assert!(file.get(k).is_some());
        w.add_metadata(k.clone(), v.clone());
    }
    for t in file.tensor_views() {
        assert_eq!(t.data.len() as u64, t.info.n_bytes);
        assert!(file.tensor(&t.info.name).is_some());
        t.as_mat().expect("every validated tensor is a valid matrix view");
        w.add_tensor(t.info.name.clone(), t.info.dims.clone(), t.info.ty, t.data.to_vec())
            .expect("a tensor the reader accepted is accepted by the writer");
    }
    let mut out = Vec::new();
    w.write_to(&mut out).expect("writing back a file the reader accepted");
    // Every tensor in the input already occupies its aligned size, except perhaps the last's
    // padding: rewriting can never blow a small input up into a large output.
    assert!(
        out.len() as u64 <= data.len() as u64 + file.alignment(),
        "rewrite grew from {} to {} bytes",
        data.len(),
        out.len()
    );
    let again = GgufFile::from_bytes(out).expect("reading back what the writer wrote");

    assert_eq!(again.metadata().len(), file.metadata().len());
    for ((k1, v1), (k2, v2)) in file.metadata().iter().zip(again.metadata()) {
        assert_eq!(k1, k2);
        assert!(same_value(v1, v2), "value of {k1} changed in the round trip");
    }
    assert_eq!(again.alignment(), file.alignment());
    assert_eq!(again.tensors().len(), file.tensors().len());
    for (a, b) in file.tensor_views().zip(again.tensor_views()) {
        assert_eq!(a.info.name, b.info.name);
        assert_eq!(a.info.dims, b.info.dims);
        assert_eq!(a.info.ty, b.info.ty);
        assert_eq!(a.data, b.data);
    }
});
