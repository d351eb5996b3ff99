fn main() {
    std::process::exit(enforcer::cli::main());
}
