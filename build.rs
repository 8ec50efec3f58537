//! Compiles the gRPC contract in `proto/` with a vendored `protoc`, so no
//! system installation is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("PROTOC", protoc)
    };
    let include = protoc_bin_vendored::include_path()?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let include = include.to_str().ok_or("protoc include path is not UTF-8")?.to_owned();
    let protos = [
        "proto/tokenvault/v1/common.proto",
        "proto/tokenvault/v1/consent.proto",
        "proto/tokenvault/v1/token.proto",
        "proto/tokenvault/v1/connection.proto",
        "proto/tokenvault/v1/admin.proto",
        "proto/tokenvault/v1/events.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("tokenvault_descriptor.bin"))
        .compile_protos(&protos, &["proto", include.as_str()])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
