//! lobby-relay-bench: the load generator (being written).
fn main() {
    eprintln!("lobby-relay-bench: not written yet");
    std::process::exit(2);
}
