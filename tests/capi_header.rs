//! The checked-in C header must be exactly what cbindgen generates from src/capi/ now.
//! To update it after changing the C ABI: `TOMOE_BLESS=1 cargo test --release --test capi_header`.

use std::path::PathBuf;

#[test]
fn header_is_up_to_date() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("reading cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/capi/mod.rs"))
        .generate()
        .expect("cbindgen failed on src/capi")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("cbindgen wrote invalid UTF-8");
    assert!(
        generated.contains("tomoe_generate("),
        "the generated header misses the API:\n{generated}"
    );

    let path = root.join("include/tomoe.h");
    if std::env::var_os("TOMOE_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("writing include/tomoe.h");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/tomoe.h is stale: run `TOMOE_BLESS=1 cargo test --release --test capi_header` and \
         commit the result"
    );
}
