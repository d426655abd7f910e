// Generates Rust types from the .proto files (needs `protoc`, Debian's protobuf-compiler).
fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    prost_build::compile_protos(&["proto/relay.proto"], &["proto"])
}
