//! Compiles the control API with a vendored `protoc`, so building needs nothing
//! installed by hand.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment yet.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let proto = "proto/voicelink/v1/voicelink.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("voicelink_v1_descriptor.bin"))
        .compile_protos(
            &[proto],
            &["proto", protoc_bin_vendored::include_path()?.to_str().ok_or("non-UTF-8 include path")?],
        )?;
    Ok(())
}
