// Generates Rust types (and gRPC clients and servers) from the .proto files. Needs `protoc`
// (Debian's protobuf-compiler).
fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    prost_build::compile_protos(&["proto/relay.proto"], &["proto"])?;
    tonic_prost_build::configure().compile_protos(&["proto/control.proto"], &["proto"])
}
