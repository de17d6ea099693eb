//! Compiles the .proto files with protox (pure Rust), so building needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/rctl/v1/types.proto",
        "proto/rctl/v1/images.proto",
        "proto/rctl/v1/streams.proto",
        "proto/rctl/v1/scheduler.proto",
        "proto/rctl/v1/agent.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
