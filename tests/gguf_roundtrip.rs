//! GgufWriter → GgufFile round trips (identical metadata and tensors), deterministic bytes,
//! alignment rules, streaming and atomic writes, and the typed metadata getters.

mod common;

use common::mapped_rss_kib;
use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tomoe::gguf::{Array, GgufError, GgufFile, GgufWriter, QuantType, Value};

const ALL_TYPES: [QuantType; 14] = QuantType::ALL;

fn scalars() -> Vec<Value> {
    vec![
        Value::U8(u8::MAX),
        Value::I8(i8::MIN),
        Value::U16(u16::MAX),
        Value::I16(i16::MIN),
        Value::U32(u32::MAX),
        Value::I32(i32::MIN),
        Value::U64(u64::MAX),
        Value::I64(i64::MIN),
        Value::F32(-0.0),
        Value::F64(f64::MAX),
        Value::Bool(false),
        Value::String("tokens: ▁the, <0x0A>, 日本語".into()),
    ]
}

/// Metadata of every type and arrays of every type; tensors of every type and 1 to 4 dims
/// with random bytes.
type Metadata = Vec<(String, Value)>;
/// (name, dims, type, data) of each tensor.
type Tensors = Vec<(String, Vec<u64>, QuantType, Vec<u8>)>;

fn sample_writer(seed: u64) -> (GgufWriter, Metadata, Tensors) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut metadata = vec![("general.architecture".to_string(), Value::String("llama".into()))];
    for (i, v) in scalars().into_iter().enumerate() {
        metadata.push((format!("test.scalar.{i}"), v.clone()));
        metadata.push((format!("test.array.{i}"), Value::Array(Array::from_values(vec![v; 1 + i]).unwrap())));
    }
    metadata.push(("test.empty_array".into(), Value::Array(Array::from_values(vec![]).unwrap())));
    metadata.push(("test.empty_string".into(), Value::String(String::new())));
    let mut tensors = Vec::new();
    for (i, &ty) in ALL_TYPES.iter().enumerate() {
        let mut dims = vec![ty.block_size() as u64 * rng.gen_range(1..4)];
        for _ in 0..i % 4 {
            dims.push(rng.gen_range(1..4));
        }
        let n = ty.row_bytes(dims[0] as usize).unwrap() * dims[1..].iter().product::<u64>() as usize;
        let data: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
        tensors.push((format!("blk.{i}.{}", ty.name()), dims, ty, data));
    }
    let mut w = GgufWriter::new();
    for (k, v) in &metadata {
        w.add_metadata(k.clone(), v.clone());
    }
    for (name, dims, ty, data) in &tensors {
        w.add_tensor(name.clone(), dims.clone(), *ty, data.clone()).unwrap();
    }
    (w, metadata, tensors)
}

fn write(w: &GgufWriter) -> Vec<u8> {
    let mut out = Vec::new();
    w.write_to(&mut out).unwrap();
    out
}

#[test]
fn round_trip_keeps_metadata_and_tensors() {
    let (w, metadata, tensors) = sample_writer(1);
    let f = GgufFile::from_bytes(write(&w)).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.metadata().len(), metadata.len());
    for ((k1, v1), (k2, v2)) in f.metadata().iter().zip(&metadata) {
        assert_eq!(k1, k2);
        // -0.0 == 0.0 under PartialEq, so compare the F32 bits as well.
        assert_eq!(v1, v2, "value of {k1}");
        if let (Value::F32(a), Value::F32(b)) = (v1, v2) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
        assert_eq!(f.get(k1), Some(v2));
    }
    assert_eq!(f.tensors().len(), tensors.len());
    for (info, (name, dims, ty, data)) in f.tensors().iter().zip(&tensors) {
        assert_eq!(&info.name, name);
        assert_eq!(&info.dims, dims);
        assert_eq!(info.ty, *ty);
        assert_eq!(info.n_bytes, data.len() as u64);
        assert_eq!(info.offset % 32, 0, "{name} misaligned");
        let t = f.tensor(name).unwrap();
        assert_eq!(t.data, &data[..], "data of {name}");
        assert_eq!(t.info, info);
        let m = t.as_mat().unwrap();
        let rows = dims[1..].iter().product::<u64>() as usize;
        assert_eq!((m.ty(), m.rows(), m.cols()), (*ty, rows, dims[0] as usize));
        let row_bytes = data.len() / rows;
        assert_eq!(m.row(rows - 1), &data[(rows - 1) * row_bytes..], "last row of {name}");
    }
    assert!(f.tensor("no.such.tensor").is_none());
    assert!(f.get("no.such.key").is_none());
}

#[test]
fn writes_are_deterministic_and_zero_padded() {
    let a = write(&sample_writer(7).0);
    let b = write(&sample_writer(7).0);
    assert_eq!(a, b);
    assert_eq!(a.len() % 32, 0, "the last tensor is padded too");
    // The padding between the tensor infos and the data is zeros.
    let f = GgufFile::from_bytes(a.clone()).unwrap();
    let first = f.tensors().iter().map(|t| t.offset).min().unwrap();
    assert_eq!(first, 0);
    // Between tensors: zeros after each tensor's data up to the next offset.
    for t in f.tensors() {
        let end = (f.data_offset() + t.offset + t.n_bytes) as usize;
        let next = end.next_multiple_of(32);
        assert!(a[end..next].iter().all(|&b| b == 0), "padding after {}", t.name);
    }
}

#[test]
fn alignment_is_written_only_when_not_default() {
    let (mut w, ..) = sample_writer(2);
    let f = GgufFile::from_bytes(write(&w)).unwrap();
    assert!(f.get("general.alignment").is_none());

    w.set_alignment(256);
    let f = GgufFile::from_bytes(write(&w)).unwrap();
    assert_eq!(f.alignment(), 256);
    assert_eq!(f.get("general.alignment"), Some(&Value::U32(256)));
    assert_eq!(f.data_offset() % 256, 0);
    assert!(f.tensors().iter().all(|t| t.offset % 256 == 0));

    // Once present, the key stays (in place) even when set back to the default.
    w.set_alignment(32);
    let f = GgufFile::from_bytes(write(&w)).unwrap();
    assert_eq!(f.get("general.alignment"), Some(&Value::U32(32)));
    assert_eq!(f.metadata().last().unwrap().0, "general.alignment");

    // Alignment 1 is a power of two: tensors packed back to back.
    let mut w = GgufWriter::new();
    w.set_alignment(1);
    w.add_tensor("a", vec![3], QuantType::F16, vec![1; 6]).unwrap();
    w.add_tensor("b", vec![1], QuantType::F32, vec![2; 4]).unwrap();
    let f = GgufFile::from_bytes(write(&w)).unwrap();
    assert_eq!(f.tensor("b").unwrap().info.offset, 6);
    assert_eq!(f.tensor("b").unwrap().data, &[2; 4]);
}

#[test]
fn metadata_only_files_are_not_padded() {
    let mut w = GgufWriter::new();
    w.set_alignment(1 << 30);
    w.add_metadata("k", Value::U8(1));
    let bytes = write(&w);
    // magic, version, counts, then two entries; no padding to 1 GiB.
    assert_eq!(bytes.len(), 24 + (8 + 17 + 4 + 4) + (8 + 1 + 4 + 1));
    let f = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(f.alignment(), 1 << 30);
    assert_eq!(f.data_offset(), 24 + 33 + 14);
}

#[test]
fn add_metadata_replaces_in_place() {
    let mut w = GgufWriter::new();
    w.add_metadata("a", Value::U32(1));
    w.add_metadata("b", Value::U32(2));
    w.add_metadata("a", Value::String("x".into()));
    let f = GgufFile::from_bytes(write(&w)).unwrap();
    assert_eq!(
        f.metadata(),
        &[
            ("a".to_string(), Value::String("x".into())),
            ("b".to_string(), Value::U32(2))
        ]
    );
}

#[test]
fn version_2_files_are_read() {
    let (w, metadata, _) = sample_writer(3);
    let mut bytes = write(&w);
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let f = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(f.version(), 2);
    assert_eq!(f.metadata().len(), metadata.len());
}

#[test]
fn streaming_write_equals_whole_write() {
    let (whole, metadata, tensors) = sample_writer(4);
    let expected = write(&whole);

    // Odd tensors given up front, even ones streamed.
    let mut w = GgufWriter::new();
    for (k, v) in &metadata {
        w.add_metadata(k.clone(), v.clone());
    }
    for (i, (name, dims, ty, data)) in tensors.iter().enumerate() {
        if i % 2 == 0 {
            w.add_tensor_info(name.clone(), dims.clone(), *ty).unwrap();
        } else {
            w.add_tensor(name.clone(), dims.clone(), *ty, data.clone()).unwrap();
        }
    }
    let mut stream = w.write_streaming(Vec::new()).unwrap();
    for (name, _, _, data) in tensors.iter().step_by(2) {
        stream.write_tensor(name, data).unwrap();
    }
    assert_eq!(stream.finish().unwrap(), expected);

    // Misuse is an error, not a corrupt file.
    let (name0, _, _, data0) = &tensors[0];
    let mut stream = w.write_streaming(Vec::new()).unwrap();
    assert!(matches!(
        stream.write_tensor(&tensors[2].0, &tensors[2].3),
        Err(GgufError::StreamOrder { .. })
    ));
    assert!(matches!(
        stream.write_tensor(name0, &data0[1..]),
        Err(GgufError::TensorDataSize { .. })
    ));
    stream.write_tensor(name0, data0).unwrap();
    assert!(
        matches!(stream.finish(), Err(GgufError::StreamIncomplete { missing }) if missing == tensors.len() - 1 - 1)
    );
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tomoe-gguf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn dir_entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn atomic_write_replaces_the_file_and_leaves_nothing_on_error() {
    let dir = temp_dir("atomic");
    let path = dir.join("model.gguf");
    let (w, _, tensors) = sample_writer(5);
    w.write_atomic(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), write(&w));
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensor(&tensors[3].0).unwrap().data, &tensors[3].3[..]);
    drop(f);

    // Overwrite with another file.
    let (w2, ..) = sample_writer(6);
    w2.write_atomic(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), write(&w2));

    // A failing write leaves the old file and no temporary file.
    let mut bad = GgufWriter::new();
    bad.add_tensor_info("never.given", vec![4], QuantType::F32).unwrap();
    assert!(matches!(
        bad.write_atomic(&path),
        Err(GgufError::MissingTensorData { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), write(&w2));
    assert_eq!(dir_entries(&dir), vec!["model.gguf".to_string()]);

    // Same when the streaming callback fails half-way.
    let r: Result<(), GgufError> = bad.write_atomic_streaming(&path, |s| {
        s.write_tensor("never.given", &[0; 3]) // wrong size
    });
    assert!(matches!(r, Err(GgufError::TensorDataSize { .. })));
    assert_eq!(dir_entries(&dir), vec!["model.gguf".to_string()]);

    // And a successful streamed atomic write.
    let streamed = dir.join("streamed.gguf");
    bad.write_atomic_streaming(&streamed, |s| s.write_tensor("never.given", &[7; 16]))
        .unwrap();
    assert_eq!(
        GgufFile::open(&streamed).unwrap().tensor("never.given").unwrap().data,
        &[7; 16]
    );

    // A directory that does not exist is an I/O error naming the path.
    let missing = dir.join("no/such/dir/x.gguf");
    assert!(matches!(w.write_atomic(&missing), Err(GgufError::Io { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn open_reports_io_errors_and_empty_files() {
    let dir = temp_dir("open");
    assert!(matches!(
        GgufFile::open(&dir.join("missing.gguf")),
        Err(GgufError::Io { .. })
    ));
    // A directory opens as a file on Linux but can be neither mapped nor read.
    assert!(matches!(GgufFile::open(&dir), Err(GgufError::Io { .. })));
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(GgufFile::open(&empty), Err(GgufError::Truncated { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn typed_getters_name_the_key() {
    let mut w = GgufWriter::new();
    w.add_metadata("u32", Value::U32(7));
    w.add_metadata("i32", Value::I32(9));
    w.add_metadata("neg", Value::I32(-1));
    w.add_metadata("big", Value::U64(1 << 40));
    w.add_metadata("f64", Value::F64(0.5));
    w.add_metadata("flag", Value::Bool(true));
    w.add_metadata("name", Value::String("smol".into()));
    w.add_metadata(
        "tokens",
        Value::from(vec!["a", "b"]),
    );
    w.add_metadata("scores", Value::from(vec![0.25f32, -1.0]));
    w.add_metadata("types", Value::from(vec![1i32, 6]));
    let f = GgufFile::from_bytes(write(&w)).unwrap();

    assert_eq!(f.get_u32("u32").unwrap(), 7);
    assert_eq!(f.get_u32("i32").unwrap(), 9);
    assert_eq!(f.get_usize("u32").unwrap(), 7);
    assert_eq!(f.get_i64("neg").unwrap(), -1);
    assert_eq!(f.get_u64("big").unwrap(), 1 << 40);
    assert_eq!(f.get_f32("f64").unwrap(), 0.5);
    assert!(f.get_bool("flag").unwrap());
    assert_eq!(f.get_str("name").unwrap(), "smol");
    assert_eq!(f.get_str_array("tokens").unwrap(), vec!["a", "b"]);
    assert_eq!(f.get_f32_array("scores").unwrap(), vec![0.25, -1.0]);
    assert_eq!(f.get_i32_array("types").unwrap(), vec![1, 6]);
    assert_eq!(f.get_u32_array("types").unwrap(), vec![1, 6]);
    assert_eq!(f.opt_u32("u32").unwrap(), Some(7));
    assert_eq!(f.opt_u32("absent").unwrap(), None);

    let err = f.get_u32("absent").unwrap_err();
    assert!(matches!(&err, GgufError::MissingKey(k) if k == "absent"));
    assert!(err.to_string().contains("absent"));
    assert!(matches!(f.get_u32("neg"), Err(GgufError::OutOfRange { key, target: "u32", .. }) if key == "neg"));
    assert!(matches!(f.get_u32("big"), Err(GgufError::OutOfRange { .. })));
    assert!(matches!(f.get_u32("name"), Err(GgufError::WrongType { key, found: "str", .. }) if key == "name"));
    assert!(matches!(f.opt_u32("name"), Err(GgufError::WrongType { .. })));
    assert!(matches!(
        f.get_f32("u32"),
        Err(GgufError::WrongType { found: "u32", .. })
    ));
    assert!(matches!(
        f.get_str("flag"),
        Err(GgufError::WrongType { found: "bool", .. })
    ));
    assert!(matches!(
        f.get_str_array("scores"),
        Err(GgufError::WrongType { found: "f32", .. })
    ));
    assert!(matches!(
        f.get_str_array("name"),
        Err(GgufError::WrongType { found: "str", .. })
    ));
}

#[test]
fn value_accessors() {
    assert_eq!(Value::I8(-1).as_u64(), None);
    assert_eq!(Value::I64(5).as_u64(), Some(5));
    assert_eq!(Value::U64(u64::MAX).as_i64(), None);
    assert_eq!(Value::U16(3).as_i64(), Some(3));
    assert_eq!(Value::F32(1.0).as_u64(), None);
    assert_eq!(Value::F64(2.0).as_f32(), Some(2.0));
    assert_eq!(Value::U8(1).as_bool(), None);
    assert_eq!(Value::String("s".into()).as_str(), Some("s"));
    assert_eq!(Value::from(vec![1u8]).as_array(), Some(&Array::U8(vec![1])));
    let strings = Array::from_values(vec![Value::String("a".into()), Value::String("bc".into())]).unwrap();
    assert_eq!(strings.as_strings().unwrap().iter().collect::<Vec<_>>(), ["a", "bc"]);
    assert_eq!(strings.get(1), Some(Value::String("bc".into())));
    assert_eq!(strings.get(2), None);
    assert_eq!(strings.elem_type_name(), "str");
    // Arrays are of one scalar type.
    assert_eq!(Array::from_values(vec![Value::U32(1), Value::I32(1)]), None);
    assert_eq!(Array::from_values(vec![Value::from(vec![1u8])]), None);
    assert_eq!(Value::Bool(true).type_name(), "bool");
}

#[test]
fn gguf_file_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GgufFile>();
}

#[test]
fn released_bytes_read_the_same() {
    let dir = temp_dir("release");
    let path = dir.join("big.gguf");
    let mut w = GgufWriter::new();
    // 1 MiB of f32s, so that whole 64 KiB pages lie inside the tensor.
    let data: Vec<u8> = (0..1u32 << 18).flat_map(|i| (i * 7).to_le_bytes()).collect();
    w.add_tensor("t", vec![1 << 18], QuantType::F32, data.clone()).unwrap();
    w.write_atomic(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert!(f.is_mapped());
    let t = f.tensor("t").unwrap().data;
    assert_eq!(t, &data[..]);
    let before = mapped_rss_kib(&path);
    f.release(t);
    let after = mapped_rss_kib(&path);
    #[cfg(target_os = "linux")]
    assert!(
        after + 896 <= before,
        "release drops the tensor's whole pages: {before} -> {after} KiB resident"
    );
    assert_eq!(t, &data[..], "after release, the pages are read again from the file");
    f.release(&t[12_345..900_001]);
    f.release(&data); // not part of the file: nothing happens
    assert_eq!(t, &data[..]);
    // A row read from the file: its bytes, and no page of the map touched (after the release
    // above, nothing of the tensor is mapped).
    let row = &t[300_000..300_600];
    let before = mapped_rss_kib(&path);
    let mut buf = vec![0u8; row.len()];
    assert!(f.read_unmapped(row, &mut buf));
    assert_eq!(buf, &data[300_000..300_600]);
    assert!(f.read_unmapped(&t[t.len() - 10..], &mut buf[..10]));
    assert_eq!(&buf[..10], &data[data.len() - 10..]);
    #[cfg(target_os = "linux")]
    assert_eq!(mapped_rss_kib(&path), before, "read_unmapped maps no page");
    assert!(!f.read_unmapped(row, &mut buf[..599]), "a buffer of another length");
    assert!(!f.read_unmapped(&data[..600], &mut buf), "bytes outside the file");
    let in_memory = GgufFile::from_bytes(std::fs::read(&path).unwrap()).unwrap();
    assert!(!in_memory.is_mapped());
    let t = in_memory.tensor("t").unwrap().data;
    in_memory.release(t);
    assert!(!in_memory.read_unmapped(&t[..600], &mut buf), "a buffer in memory");
    assert_eq!(t, &data[..]);
    drop(f);
    std::fs::remove_dir_all(&dir).unwrap();
}
