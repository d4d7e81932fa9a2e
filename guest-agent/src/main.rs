fn main() {
    eprintln!("husk-agent: not built yet");
    std::process::exit(1);
}
