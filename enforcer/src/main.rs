fn main() {
    // Started under another name (Wazuh's active-response/bin/<name>): run that hook.
    let code = match enforcer::hooks::Hook::from_argv0(std::env::args_os().next().as_deref()) {
        Some(hook) => hook.run(),
        None => enforcer::cli::main(),
    };
    std::process::exit(code);
}
