//! Writes small GGUF files into corpus/gguf_reader/ to seed the fuzzer: valid ones (every value
//! type, arrays, custom alignment, several tensor types and shapes) and near-valid ones that the
//! reader must refuse (two tensors of one name).

use tomoe::gguf::{Array, GgufWriter, QuantType, Value};

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/gguf_reader");
    std::fs::create_dir_all(&dir).unwrap();
    let scalars = [
        Value::U8(1),
        Value::I8(-2),
        Value::U16(3),
        Value::I16(-4),
        Value::U32(5),
        Value::I32(-6),
        Value::U64(7),
        Value::I64(-8),
        Value::F32(0.5),
        Value::F64(-0.25),
        Value::Bool(true),
        Value::String("abc".into()),
    ];
    let mut seeds: Vec<GgufWriter> = Vec::new();

    seeds.push(GgufWriter::new());

    let mut w = GgufWriter::new();
    for (i, v) in scalars.iter().enumerate() {
        w.add_metadata(format!("k{i}"), v.clone());
    }
    seeds.push(w);

    let mut w = GgufWriter::new();
    for (i, v) in scalars.iter().enumerate() {
        w.add_metadata(format!("a{i}"), Value::Array(Array::from_values(vec![v.clone(), v.clone()]).unwrap()));
    }
    seeds.push(w);

    let tensors: [(QuantType, Vec<u64>); 5] = [
        (QuantType::F32, vec![4]),
        (QuantType::F16, vec![2, 3]),
        (QuantType::Q4_0, vec![32, 2]),
        (QuantType::Q8_0, vec![32, 1, 2]),
        (QuantType::Q4_K, vec![256]),
    ];
    for alignment in [32u64, 8, 64] {
        let mut w = GgufWriter::new();
        w.set_alignment(alignment);
        w.add_metadata("general.architecture", Value::String("llama".into()));
        for (i, (ty, dims)) in tensors.iter().enumerate() {
            let n = ty.row_bytes(dims[0] as usize).unwrap() * dims[1..].iter().product::<u64>() as usize;
            w.add_tensor(format!("t{i}"), dims.clone(), *ty, vec![i as u8; n])
                .unwrap();
        }
        seeds.push(w);
    }

    for (i, w) in seeds.iter().enumerate() {
        let mut bytes = Vec::new();
        w.write_to(&mut bytes).unwrap();
        std::fs::write(dir.join(format!("seed{i}.gguf")), bytes).unwrap();
    }

    // Two tensors named alike, which the writer refuses: written as "ta" and "tb", then renamed
    // in the bytes (names are stored in full, so "tb" occurs once, in the tensor table).
    let mut w = GgufWriter::new();
    for name in ["ta", "tb"] {
        w.add_tensor(name, vec![8], QuantType::F32, vec![0; 32]).unwrap();
    }
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).unwrap();
    let at = bytes.windows(2).position(|b| b == b"tb").unwrap();
    bytes[at + 1] = b'a';
    assert!(tomoe::gguf::GgufFile::from_bytes(bytes.clone()).is_err());
    std::fs::write(dir.join("duplicate-tensor-name.gguf"), bytes).unwrap();
    println!("wrote {} seeds to {}", seeds.len() + 1, dir.display());
}
