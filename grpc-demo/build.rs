//! Compiles `proto/nat/v1/scans.proto` with protox (pure Rust: no `protoc` needed) and
//! generates the tonic service and client.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["nat/v1/scans.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
