//! Compiles `messenger/v1/*.proto` with a vendored protoc, so a fresh machine needs no
//! protoc installed.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "messenger/v1/auth.proto",
    "messenger/v1/users.proto",
    "messenger/v1/friends.proto",
    "messenger/v1/chat.proto",
    "messenger/v1/events.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; the variable is read by the codegen below.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let include = protoc_bin_vendored::include_path()?;
    let include = include.to_str().ok_or("protoc include path is not UTF-8")?;
    let includes = [".", include];
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("messenger_descriptor.bin"))
        .compile_protos(PROTOS, &includes)?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
